"""Int8 weight layers in the ONNX graph: uint8 spikes x int8 weights -> int32, then scale and bias in float32.

A layer that reads spikes (exactly 0 or 1) takes them as uint8, which is exact; its weights are the int8 codes
of :func:`gee_deploy.quantisation.int8_weight` (the codes the model's own forward uses when it was fine-tuned
with quantisers; post-training codes of its float32 weight otherwise). The int32 sum of the codes over the
active inputs is exact, so the layer computes

.. math:: y_o = \\mathrm{float32}(\\textstyle\\sum_j q_{o,j} s_j) \\cdot (s_o \\gamma_o / \\sqrt{\\sigma_o^2 + \\epsilon}) + b_o

with the BatchNorm folded into the per-channel scale (the codes do not change, see :mod:`gee_deploy.quantisation`)
and the shift into the bias: the membrane input and the LIF stay float32 (DESIGN section 11).

Ops (standard ONNX only, chosen by ``benchmarks/int8_conv.py`` on onnxruntime 1.32 CPU): MatMulInteger with
uint8 x int8 operands, the combination with a fast VNNI kernel (uint8 x uint8, what ConvInteger runs, was 2-7x
slower than the float32 conv; QLinearConv is fast but quantises its output, the membrane input). A linear layer,
or a conv whose kernel covers its whole unpadded input, is one MatMulInteger; any other conv gathers its patches
from the uint8 spikes in NHWC (a space-to-depth first when the stride divides the kernel, then (k/s)^2 Slices;
k^2 strided Slices otherwise), one Concat, and one MatMulInteger, and returns to NCHW after the scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto
from torch import nn

from ..kinds import LayerKind
from ..quantisation import int8_weight
from ..zoo.base import ConvPool
from .folding import FoldedLayer, batchnorm_affine, fold_layer
from .graph import GraphBuilder

__all__ = ["Int8Layer", "int8_layer", "dequantised_layer", "gather_form", "emit_int8"]


@dataclass(frozen=True)
class Int8Layer:
    """One layer's int8 weights with its BatchNorm folded into the per-channel scale and the bias.

    Attributes:
        kind: conv or linear.
        q: int8 codes, [Cout, Cin, k, k] or [Cout, Cin] (a ConvPool: its fused (k+1) x (k+1) kernel).
        scale: float32 [Cout], the weight's scale times the BatchNorm's.
        bias: float32 [Cout].
        kernel_size, stride, padding: the conv that runs (1, 1, 0 for linear).
    """

    kind: LayerKind
    q: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0


def int8_layer(m: nn.Module, bn: nn.Module | None, pooled: ConvPool | None = None) -> Int8Layer:
    """The int8 form of weight layer ``m`` (inside ConvPool ``pooled``, if given) with ``bn`` folded in."""
    f = fold_layer(m, bn, pooled=pooled is not None)  # geometry and the folded bias
    q, s = int8_weight(pooled if pooled is not None else m)
    bn_scale, _ = batchnorm_affine(bn, f.c_out)
    scale = (s.double().numpy() * bn_scale).astype(np.float32)
    k, stride = (pooled.kernel_size, pooled.stride) if pooled is not None else (f.kernel_size, f.stride)
    return Int8Layer(f.kind, q.numpy(), scale, f.bias.astype(np.float32), k, stride, f.padding)


def dequantised_layer(m: nn.Module, bn: nn.Module | None, pooled: ConvPool | None = None) -> FoldedLayer:
    """A fine-tuned (quantised) layer in float: the weight its forward uses, q s, with ``bn`` folded (float64).

    Dense only (the factorised form cannot hold rounded weights); a ConvPool's fused kernel is stored as the
    (k+1) x (k+1) stride-2 conv it is.
    """
    layer = int8_layer(m, bn, pooled)
    q = layer.q.astype(np.float64)
    weight = q * (layer.scale.astype(np.float64)).reshape((-1,) + (1,) * (q.ndim - 1))
    return FoldedLayer(layer.kind, weight, layer.bias.astype(np.float64), layer.kernel_size, layer.stride,
                       layer.padding)


def gather_form(layer: Int8Layer, in_shape: tuple) -> str:
    """How ``layer`` gathers its inputs: "matmul" (linear, or a conv covering its whole unpadded input: none),
    "space-to-depth" (stride s > 1 dividing k: (k/s)^2 unstrided slices), "slices" (k^2 strided slices).

    benchmarks/deploy_speed.py: on ResNet-19's stride-1 3x3 convs the k^2 slices and their Concat (C bytes per
    copy) cost more than the int8 GEMM saves (int8 0.8-1.0x of float32), on SmallNet's stride-2 and whole-input
    layers int8 ran 1.5-1.6x; ``auto --allow-int8`` therefore leaves "slices" layers float32.
    """
    if layer.kind == LayerKind.LINEAR or (layer.padding == 0 and tuple(in_shape[1:]) == (layer.kernel_size,) * 2):
        return "matmul"
    return "space-to-depth" if layer.stride > 1 and layer.kernel_size % layer.stride == 0 else "slices"


def emit_int8(g: GraphBuilder, x_u8: str, layer: Int8Layer, in_shape: tuple, hint: str) -> str:
    """Write ``layer`` reading uint8 spikes ``x_u8`` ([N, C, H, W] or [N, features]); returns its float32 output
    [N, Cout, Ho, Wo] (or [N, Cout]) name. ``in_shape``: the per-sample input shape."""
    cout = len(layer.scale)
    zeros = [g.const(0, f"{hint}.x_zero_point", np.uint8), g.const(0, f"{hint}.w_zero_point", np.int8)]

    def matmul(x: str, q_rows: np.ndarray) -> str:  # q_rows [K, Cout] int8; int32 acc, then scale and bias
        acc = g.op("MatMulInteger", [x, g.const(q_rows, f"{hint}.weight_int8", np.int8)] + zeros, f"{hint}.acc")
        # (DequantizeLinear would do the Cast and Mul in one op, but onnxruntime 1.32 runs it slower than both)
        y = g.op("Cast", [acc], f"{hint}.acc_float", to=TensorProto.FLOAT)
        y = g.op("Mul", [y, g.const(layer.scale, f"{hint}.scale")], f"{hint}.scaled")
        return g.op("Add", [y, g.const(layer.bias, f"{hint}.bias")], hint)

    q = layer.q
    if layer.kind == LayerKind.LINEAR:
        return matmul(x_u8, np.ascontiguousarray(q.T))
    c, h, w = in_shape
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    form = gather_form(layer, in_shape)
    if form == "matmul":  # the kernel covers the whole input: one row per sample
        y = matmul(g.op("Flatten", [x_u8], f"{hint}.flat", axis=1), np.ascontiguousarray(q.reshape(cout, -1).T))
        return g.op("Reshape", [y, g.const([-1, cout, 1, 1], f"{hint}.shape", np.int64)], f"{hint}.nchw")
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    nhwc = g.op("Transpose", [x_u8], f"{hint}.nhwc", perm=[0, 2, 3, 1])
    axes = g.const([1, 2], "axes12", np.int64)
    cols = []
    if form == "space-to-depth":
        # space-to-depth: [N, Hp, Wp, C] -> [N, Hp/s, Wp/s, s*s*C] (channels ordered (di, dj, c)), padded to
        # multiples of s; tap (i, j) = (s a + di, s b + dj) is then block offset (a, b) of an unstrided slice
        hp, wp = -(-(h + 2 * p) // s) * s, -(-(w + 2 * p) // s) * s
        pads = g.const([0, p, p, 0, 0, hp - h - p, wp - w - p, 0], f"{hint}.pads", np.int64)
        x = g.op("Pad", [nhwc, pads], f"{hint}.padded")
        x = g.op("Reshape", [x, g.const([0, hp // s, s, wp // s, s, c], f"{hint}.s2d", np.int64)], f"{hint}.s2d")
        x = g.op("Transpose", [x], f"{hint}.s2d", perm=[0, 1, 3, 2, 4, 5])
        x = g.op("Reshape", [x, g.const([0, hp // s, wp // s, s * s * c], f"{hint}.blocks", np.int64)],
                 f"{hint}.blocks")
        kb = k // s
        for a in range(kb):
            for b in range(kb):
                cols.append(g.op("Slice", [x, g.const([a, b], f"{hint}.start", np.int64),
                                           g.const([a + ho, b + wo], f"{hint}.end", np.int64), axes],
                                 f"{hint}.patch"))
        rows = q.reshape(cout, c, kb, s, kb, s).transpose(2, 4, 3, 5, 1, 0)  # (a, b, di, dj, c, o)
    else:
        x = g.op("Pad", [nhwc, g.const([0, p, p, 0, 0, p, p, 0], f"{hint}.pads", np.int64)], f"{hint}.padded") \
            if p else nhwc
        steps = g.const([s, s], f"{hint}.steps", np.int64)
        for i in range(k):
            for j in range(k):
                cols.append(g.op("Slice", [x, g.const([i, j], f"{hint}.start", np.int64),
                                           g.const([i + s * (ho - 1) + 1, j + s * (wo - 1) + 1], f"{hint}.end",
                                                   np.int64), axes, steps], f"{hint}.patch"))
        rows = q.transpose(2, 3, 1, 0)  # (i, j, c, o)
    col = g.op("Concat", cols, f"{hint}.patches", axis=3) if len(cols) > 1 else cols[0]  # [N, Ho, Wo, k*k*C]
    y = matmul(col, np.ascontiguousarray(rows.reshape(-1, cout)))  # [N, Ho, Wo, Cout]
    return g.op("Transpose", [y], f"{hint}.nchw", perm=[0, 3, 1, 2])
