"""Int8 weight layers in the ONNX graph: 8-bit spikes x int8 weights, exact integer sums, then scale and bias in
float32, in one of two forms (:class:`gee_deploy.kinds.Int8Form`).

A layer that reads spikes (exactly 0 or 1) takes them as 8-bit integers, which is exact; its weights are the int8
codes of :func:`gee_deploy.quantisation.int8_weight` (the codes the model's own forward uses when it was fine-tuned
with quantisers; post-training codes of its float32 weight otherwise). The sum of the codes over the active inputs
is an exact integer, so the layer computes

.. math:: y_o = \\mathrm{float32}(\\textstyle\\sum_j q_{o,j} s_j) \\cdot (s_o \\gamma_o / \\sqrt{\\sigma_o^2 + \\epsilon}) + b_o

with the BatchNorm folded into the per-channel scale (the codes do not change, see :mod:`gee_deploy.quantisation`)
and the shift into the bias: the membrane input and the LIF stay float32 (docs/design.md, "Int8 layers").

**integer** (:func:`emit_int8`; onnxruntime's int8 GEMM, chosen by ``benchmarks/int8_conv.py`` on onnxruntime
1.32 CPU): uint8 x int8 operands, the combination with a fast VNNI kernel (uint8 x uint8, what ConvInteger runs,
was 2-7x slower than the float32 conv; QLinearConv is fast but quantises its output, the membrane input), as
MatMulIntegerToFloat, onnxruntime's contrib operator (:data:`FUSED_EPILOGUE`) that is MatMulInteger with the
scale and bias applied in the GEMM's output pass. A linear layer, or a conv whose kernel covers its whole
unpadded input, is one such GEMM; any other conv gathers its patches from the uint8 spikes in NHWC with one Gather
of the k^2 taps of every output pixel (:func:`patch_taps`; a 1x1 stride-1 conv reads the pixels as they are) and
one GEMM, whose output is NHWC (:func:`emit_int8_nhwc`; :func:`emit_int8` transposes from and to NCHW around it).

**qdq** (:func:`emit_qdq`; the ONNX QuantizeLinear / DequantizeLinear convention that TensorRT's explicit
quantisation and OpenVINO's low-precision transformations read as int8 layers): QuantizeLinear of the float
spikes at scale 1, zero point 0, signed int8 (TensorRT takes no uint8), DequantizeLinear at scale 1 into the
Conv / Gemm, whose weight is DequantizeLinear of the int8 codes at scale 1; then the per-channel scale (Mul) and
the bias (Add). With unit scales every runtime computes the same exact integer sums the integer form computes (an
int8 kernel: int32; a float kernel: sums of integers below 2^24, exact in float32 in any order), and the scale and
bias are the integer form's two float32 ops: both forms give the same output bit for bit on every runtime that
takes them. (The per-channel scale inside the weight's DequantizeLinear, ``axis`` 0, is the other common spelling;
onnxruntime's CPU provider runs that Conv in float32 on q s and rounds each partial sum, docs/export.md, "Int8".)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
from torch import nn

from ..genetic import GeneticConv2d, GeneticLinear
from ..kinds import Int8Form, LayerKind
from ..quantisation import INPUT_LEVELS, InputCodes, Int8Quantiser, int8_codes, int8_epilogue
from ..zoo.base import ConvPool
from .folding import FoldedLayer, fold_layer, fuse_average_pool, generated_weight, genetic_factors
from .graph import GraphBuilder
from .weights import Tensor, WeightOps

__all__ = [
    "Int8Layer",
    "int8_layer",
    "dequantised_layer",
    "covers_input",
    "patch_taps",
    "emit_int8",
    "emit_int8_nhwc",
    "emit_qdq",
    "quantise_spikes",
    "emit_input_codes",
    "stem_input_scale",
    "source_weight",
    "scale_name",
    "DEFAULT_INT8_FORM",
]


# --format -> the int8 form its runtime runs fastest (docs/export.md, "Int8"): onnxruntime's CPU provider has int8
# kernels for MatMulInteger but none for a QDQ Conv without an output QuantizeLinear (it runs the float conv);
# TensorRT reads only QDQ; OpenVINO runs QDQ at its int8 speed (it took MatMulInteger too, 6x slower).
# A conv run step by step computes bands of output rows apart, each with at least this many outputs per sample
# (row_chunks): measured interleaved, one thread (docs/export.md, "Integer form speed"): 2^15 ResNet-19 1.05-1.07x
# at batch 8 and 0.97-1.02x at batch 1; 2^14 1.20x at batch 8 but 0.86x at batch 1 (the T x B-fold op count).
BAND_MIN_OUTPUTS = 2**15
# The domain of the integer form's GEMM, com.microsoft's MatMulIntegerToFloat (onnxruntime docs, "Contrib
# operators"): MatMulInteger's int32 sums converted, scaled and biased in the GEMM's own output pass
# (MLAS's scale-bias output processor: float(sum) x scale, then + bias, two IEEE float32 roundings, no FMA), the
# same floats as MatMulInteger, Cast, Mul and Add and three passes over the output fewer (docs/export.md,
# "Integer form speed"). OpenVINO's ONNX reader takes it too.
FUSED_EPILOGUE = "com.microsoft"
DEFAULT_INT8_FORM = {"onnx": Int8Form.INTEGER, "triton": Int8Form.INTEGER, "tensorrt": Int8Form.QDQ}


@dataclass(frozen=True)
class Int8Layer:
    """One layer's int8 weights with its BatchNorm folded into the per-channel scale and the bias.

    Attributes:
        kind: conv or linear.
        q: int8 codes, [k, k, Cin, Cout] or [Cin, Cout] (a ConvPool: its fused (k+1) x (k+1) kernel), the
            layout of the patch matrices the MatMulInteger reads (:func:`emit_int8`).
        scale: float32 [Cout], the weight's scale times the BatchNorm's.
        bias: float32 [Cout].
        kernel_size, stride, padding: the conv that runs (1, 1, 0 for linear).
    """

    kind: LayerKind
    q: Tensor
    scale: Tensor
    bias: Tensor
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0


def source_weight(ops: WeightOps, m: nn.Module, pooled: ConvPool | None, hint: str) -> Tensor:
    """The float32 weight whose int8 codes a layer runs with (:func:`gee_deploy.quantisation.int8_weight`), in
    [k, k, Cin, Cout] (or [Cin, Cout]) layout.

    A genetic layer's W generated in float64 and rounded to float32 once (its ``exact_weight``), a plain
    layer's stored weight; inside a ConvPool, the fused (k+1) x (k+1) kernel of that weight, in float32.
    """
    if isinstance(m, (GeneticConv2d, GeneticLinear)):
        weight = generated_weight(ops, genetic_factors(ops, m, hint), None, f"{hint}.source", io=True, dtype=np.float64)
        weight = ops.cast(weight, np.float32, f"{hint}.source_f32")
    else:
        assert isinstance(m, (nn.Conv2d, nn.Linear)), f"{hint}: not a weight layer"
        weight = ops.transpose(
            ops.stored(m.weight, f"{hint}.weight", np.float32),
            (2, 3, 1, 0) if m.weight.dim() == 4 else (1, 0),
            f"{hint}.source_taps",
        )
    return fuse_average_pool(ops, weight, f"{hint}.source") if pooled is not None else weight


def int8_layer(
    m: nn.Module,
    bn: nn.Module | None,
    pooled: ConvPool | None = None,
    ops: WeightOps | None = None,
    hint: str = "layer",
) -> Int8Layer:
    """The int8 form of weight layer ``m`` (inside ConvPool ``pooled``, if given) with ``bn`` folded in.

    Codes and scales by the one int8 rule, :func:`gee_deploy.quantisation.int8_codes`, run on ``ops`` so that a
    graph with ``genetic`` storage computes them from E and G.
    """
    ops = ops or WeightOps()
    f = fold_layer(m, bn, pooled=pooled is not None, ops=ops, hint=hint)  # geometry, BatchNorm scale, bias
    source = source_weight(ops, m, pooled, hint)
    input_scale = stem_input_scale(pooled if pooled is not None else m)
    if input_scale is not None:  # a quantised stem: the weight per 8-bit input code, W / (255 std_c)
        per_input = ops.reshape(
            ops.stored(input_scale, f"{hint}.input_scale", np.float32), (-1, 1), f"{hint}.input_col"
        )
        source = ops.mul(source, per_input, f"{hint}.source_codes")  # [k, k, Cin, Cout] x [Cin, 1]
    q, step = int8_codes(ops, source, hint)
    scale, bias = int8_epilogue(ops, step, f.out_scale, f.bias, hint)
    k, stride = (pooled.kernel_size, pooled.stride) if pooled is not None else (f.kernel_size, f.stride)
    return Int8Layer(f.kind, q, scale, bias, k, stride, f.padding)


def stem_input_scale(m: nn.Module) -> torch.Tensor | None:
    """A quantised stem's per-input-channel weight scale (:class:`gee_deploy.quantisation.InputCodes`), [Cin];
    None for any other layer."""
    quantiser = getattr(m, "quantiser", None)
    return quantiser.input_scale if isinstance(quantiser, Int8Quantiser) else None


def dequantised_layer(
    m: nn.Module,
    bn: nn.Module | None,
    pooled: ConvPool | None = None,
    ops: WeightOps | None = None,
    hint: str = "layer",
) -> FoldedLayer:
    """A fine-tuned (quantised) layer in float: the weight its forward uses, q s, with ``bn`` folded (float64).

    Dense only (the factorised form cannot hold rounded weights); a ConvPool's fused kernel is stored as the
    (k+1) x (k+1) stride-2 conv it is.
    """
    ops = ops or WeightOps()
    layer = int8_layer(m, bn, pooled, ops, hint)
    weight = ops.mul(
        ops.cast(layer.q, np.float64, f"{hint}.q64"),
        ops.cast(layer.scale, np.float64, f"{hint}.scale64"),
        f"{hint}.dequantised",
    )  # the scale per output channel: the last axis
    weight = ops.transpose(weight, (0, 1, 3, 2) if layer.kind == LayerKind.CONV else (1, 0), f"{hint}.dequantised_oi")
    return FoldedLayer(
        layer.kind,
        ops.cast(layer.bias, np.float64, f"{hint}.bias64"),
        ops.constant(np.ones(layer.scale.shape[0]), f"{hint}.ones"),
        layer.kernel_size,
        layer.stride,
        layer.padding,
        weight=weight,
    )


def scale_name(layer: str) -> str:
    """The graph tensor of int8 layer ``layer``'s per-channel output scale (an initializer once folded)."""
    return f"{layer}.weight_scale"


def covers_input(layer: Int8Layer, in_shape: tuple) -> bool:
    """Whether ``layer`` reads its whole input as one row per sample, with no patches to gather: a linear layer,
    or a conv whose kernel covers its whole unpadded input."""
    return layer.kind == LayerKind.LINEAR or (layer.padding == 0 and tuple(in_shape[1:]) == (layer.kernel_size,) * 2)


def emit_int8(
    g: GraphBuilder, x_u8: str, layer: Int8Layer, in_shape: tuple, hint: str, ops: WeightOps | None = None
) -> str:
    """Write ``layer`` reading uint8 spikes ``x_u8`` ([N, C, H, W] or [N, features]); returns its float32 output
    [N, Cout, Ho, Wo] (or [N, Cout]) name. ``in_shape``: the per-sample input shape (C, H, W) or (features,);
    ``ops``: the graph's weight arithmetic (:mod:`gee_deploy.export.weights`), default plain initializers.
    A conv that gathers patches runs :func:`emit_int8_nhwc` between two Transposes."""
    ops = ops or WeightOps()
    cout = layer.scale.shape[0]
    if layer.kind == LayerKind.LINEAR:
        return _scaled_matmul(g, x_u8, _weights(g, layer, layer.q, hint, ops), hint)
    if covers_input(layer, in_shape):  # one row per sample
        rows = ops.reshape(ops.transpose(layer.q, (2, 0, 1, 3), f"{hint}.rows"), (-1, cout), f"{hint}.rows")
        flat = g.op("Flatten", [x_u8], f"{hint}.flat", axis=1)  # (c, i, j)
        y = _scaled_matmul(g, flat, _weights(g, layer, rows, hint, ops), hint)
        return g.op("Reshape", [y, g.const([-1, cout, 1, 1], f"{hint}.shape", np.int64)], f"{hint}.nchw")
    x = g.op("Transpose", [x_u8], f"{hint}.nhwc", perm=[0, 2, 3, 1])
    out = emit_int8_nhwc(g, x, layer, in_shape, hint, ops)
    assert isinstance(out, str)  # one input, one output
    return g.op("Transpose", [out], f"{hint}.nchw", perm=[0, 3, 1, 2])


@overload
def emit_int8_nhwc(
    g: GraphBuilder, x_u8: str, layer: Int8Layer, in_shape: tuple, hint: str, ops: WeightOps | None = None
) -> str: ...


@overload
def emit_int8_nhwc(
    g: GraphBuilder, x_u8: list[str], layer: Int8Layer, in_shape: tuple, hint: str, ops: WeightOps | None = None
) -> list[str]: ...


def emit_int8_nhwc(
    g: GraphBuilder, x_u8: str | list[str], layer: Int8Layer, in_shape: tuple, hint: str, ops: WeightOps | None = None
) -> str | list[str]:
    """Conv ``layer`` reading uint8 spikes ``x_u8`` in NHWC, [N, H, W, C]; returns its float32 output in NHWC,
    [N, Ho, Wo, Cout], the layout its MatMulInteger writes (``in_shape``: (C, H, W); ``ops``: as
    :func:`emit_int8`). The patches: one Gather of every output pixel's k x k taps (:func:`patch_taps`) from
    the padded pixels; a 1x1 stride-1 conv reads the pixels as they are, a conv covering its whole input
    flattens it. A graph that keeps spikes NHWC from one int8 conv to the next (the LIF is elementwise)
    writes no Transpose between them (:class:`gee_deploy.export.writer.OnnxWriter`).

    ``x_u8`` a list (one input per timestep): one patch matrix and MatMulInteger per step and band of output
    rows (:func:`row_chunks`: B bands), sharing the weights, and the list of the T x B outputs, t-major, each
    [N, Ho/B, Wo, Cout]: each step's membrane input without a Split of the layer's float output, in parts small
    enough for the core's cache (each part's GEMM is some rows of the one GEMM: the same int32 sums)."""
    ops = ops or WeightOps()
    cout = layer.scale.shape[0]
    c, h, w = in_shape
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    weights = _weights(g, layer, ops.reshape(layer.q, (-1, cout), f"{hint}.rows"), hint, ops)  # rows (i, j, c)
    matmul_form = covers_input(layer, in_shape)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gathers = not matmul_form and (k, s, p) != (1, 1, 0)  # a 1x1 stride-1 conv reads the pixels as they are
    chunks = row_chunks(layer, in_shape) if gathers and not isinstance(x_u8, str) else 1
    if matmul_form:  # one row per sample; a 1 x 1 output is NHWC and NCHW at once
        out_shape = g.const([-1, 1, 1, cout], f"{hint}.shape", np.int64)
    elif gathers:
        pads = g.const([0, p, p, 0, 0, p, p, 0], f"{hint}.pads", np.int64)
        pixels = g.const([0, -1, c], f"{hint}.pixels_shape", np.int64)
        taps = patch_taps(g, (h + 2 * p, w + 2 * p), k, s, chunks, hint)
        patches = g.const([0, ho // chunks, wo, k * k * c], f"{hint}.patches_shape", np.int64)
    ys = []
    for x in [x_u8] if isinstance(x_u8, str) else x_u8:
        if matmul_form:
            y = _scaled_matmul(g, g.op("Flatten", [x], f"{hint}.flat", axis=1), weights, hint)
            ys.append(g.op("Reshape", [y, out_shape], f"{hint}.nhwc_out"))
            continue
        if not gathers:
            ys.append(_scaled_matmul(g, x, weights, hint))
            continue
        x = g.op("Pad", [x, pads], f"{hint}.padded") if p else x
        x = g.op("Reshape", [x, pixels], f"{hint}.pixels")
        for band in taps:  # [N, Ho/chunks*Wo*k*k, C]: one copy of C bytes per tap
            patch = g.op("Reshape", [g.op("Gather", [x, band], f"{hint}.taps", axis=1), patches], f"{hint}.patches")
            ys.append(_scaled_matmul(g, patch, weights, hint))  # [N, Ho/chunks, Wo, Cout]
    return ys[0] if isinstance(x_u8, str) else ys


def _weights(g: GraphBuilder, layer: Int8Layer, rows: Tensor, hint: str, ops: WeightOps) -> tuple[str, str, str]:
    """The graph names of ``layer``'s int8 ``rows`` [K, Cout], its float32 scale and its bias, written once."""
    return (
        ops.output(g, rows, f"{hint}.weight_int8", np.int8),
        ops.output(g, layer.scale, scale_name(hint)),
        ops.output(g, layer.bias, f"{hint}.bias"),
    )


def _scaled_matmul(g: GraphBuilder, x: str, weights: tuple[str, str, str], hint: str) -> str:
    """uint8 ``x`` [..., K] times the int8 rows [K, Cout] of ``weights`` (:func:`_weights`): the int32 sum, then
    the float32 scale and bias, in one onnxruntime MatMulIntegerToFloat (:data:`FUSED_EPILOGUE`)."""
    rows, scale, bias = weights
    unit = g.const(1.0, "unit_scale", np.float32, scalar=True)  # the spikes' scale: 1 x s is s
    return g.op("MatMulIntegerToFloat", [x, rows, unit, scale, "", "", bias], hint, domain=FUSED_EPILOGUE)


def row_chunks(layer: Int8Layer, in_shape: tuple) -> int:
    """How many bands of output rows a conv run step by step (:func:`emit_int8_nhwc` on a list) computes apart:
    the most (a divisor of Ho) that keeps at least :data:`BAND_MIN_OUTPUTS` outputs per sample in each, so that
    each band's passes (GEMM output, scale, bias, the LIF's ops) stay in the core's L2 cache at batch 8."""
    c, h, w = in_shape
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    most = max(1, ho * wo * layer.scale.shape[0] // BAND_MIN_OUTPUTS)
    return max(d for d in range(1, min(most, ho) + 1) if ho % d == 0)


def patch_taps(g: GraphBuilder, padded: tuple[int, int], k: int, s: int, chunks: int, hint: str) -> list[str]:
    """The pixel of every tap of every output position of a k x k stride-s conv over a (padded) hp x wp image,
    ordered (output row, output column, i, j), indices into the image's hp * wp pixels in row-major order:
    gathering them from NHWC pixels [N, hp * wp, C] gives the im2col patch matrix, rows (i, j, c), that the
    [k, k, Cin, Cout] codes reshaped to [k * k * Cin, Cout] multiply. In ``chunks`` bands of output rows, as
    graph tensors the Gather reads ([Ho, Wo, k, k] for one band, [1, L] each for more). Written as the broadcast sum of its row part [Ho, 1, k, 1] and its
    column part [1, Wo, 1, k], which a session folds when it loads the file, so the file stores Ho k + Wo k
    indices instead of Ho Wo k^2 (a genetic file stays the size of its genetic parameters)."""
    hp, wp = padded
    ho, wo = (hp - k) // s + 1, (wp - k) // s + 1
    rows = (np.arange(ho)[:, None, None, None] * s + np.arange(k)[None, None, :, None]) * wp  # [Ho, 1, k, 1]
    cols = np.arange(wo)[None, :, None, None] * s + np.arange(k)[None, None, None, :]  # [1, Wo, 1, k]
    index = g.op(
        "Add",
        [g.const(rows, f"{hint}.tap_rows", np.int32), g.const(cols, f"{hint}.tap_cols", np.int32)],
        f"{hint}.taps",
    )
    if chunks == 1:
        return [index]
    flat = g.op("Reshape", [index, g.const([chunks, -1], f"{hint}.bands_shape", np.int64)], f"{hint}.taps_bands")
    return list(g.op("Split", [flat], f"{hint}.taps", outputs=chunks, axis=0, num_outputs=chunks))


def _unit_scale(g: GraphBuilder) -> tuple[str, str]:
    """The per-tensor (0-D) scale 1 and int8 zero point 0 of every QuantizeLinear / DequantizeLinear here."""
    return g.const(1.0, "unit_scale", np.float32, scalar=True), g.const(0, "int8_zero", np.int8, scalar=True)


def quantise_spikes(g: GraphBuilder, spikes: str, hint: str) -> str:
    """float32 0/1 ``spikes`` as the QDQ form's input: QuantizeLinear (scale 1, zero point 0, int8; exact) then
    DequantizeLinear back, the pair every QDQ reader takes as "this tensor is int8"; returns the float32 name."""
    unit, zero = _unit_scale(g)
    return g.op(
        "DequantizeLinear",
        [g.op("QuantizeLinear", [spikes, unit, zero], f"{hint}.int8"), unit, zero],
        f"{hint}.int8_dq",
    )


def emit_qdq(g: GraphBuilder, x_dq: str, layer: Int8Layer, hint: str, ops: WeightOps | None = None) -> str:
    """Write ``layer`` in the QDQ form, reading :func:`quantise_spikes` output ``x_dq`` ([N, C, H, W] or
    [N, features]); returns its float32 output [N, Cout, Ho, Wo] (or [N, Cout]) name. ``ops``: the graph's
    weight arithmetic (:mod:`gee_deploy.export.weights`), default plain initializers.

    The weight is the int8 codes [Cout, Cin, k, k] (or [Cout, Cin]) behind a DequantizeLinear at scale 1, so the
    Conv / Gemm output is the exact integer sum; the per-channel scale and the bias follow as Mul and Add.

    It also writes a quantised stem, in both int8 forms, reading :func:`emit_input_codes` output (centred 8-bit
    codes span [-255, 255]: no 8-bit type holds them, so the input stays float): every product and partial sum
    is an integer below 2^24 (at most C k^2 x 255 x 127), exact in any float32 (or TF32) kernel. The
    DequantizeLinear keeps the weight from being a plain constant, which onnxruntime's Conv-Mul fusion would
    fold the scale into (q s, no longer integers); OpenVINO folds it all the same (docs/design.md, "Int8
    layers").
    """
    ops = ops or WeightOps()
    conv = layer.kind == LayerKind.CONV
    codes = ops.transpose(layer.q, (3, 2, 0, 1) if conv else (1, 0), f"{hint}.codes_oi")  # from [k, k, Cin, Cout]
    unit, zero = _unit_scale(g)
    weight = g.op(
        "DequantizeLinear", [ops.output(g, codes, f"{hint}.weight_int8", np.int8), unit, zero], f"{hint}.weight_dq"
    )
    if conv:
        acc = g.op("Conv", [x_dq, weight], f"{hint}.acc", pads=[layer.padding] * 4, strides=[layer.stride] * 2)
    else:
        acc = g.op("Gemm", [x_dq, weight], f"{hint}.acc", transB=1)
    return _scale_and_bias(g, acc, layer, hint, ops)


def _scale_and_bias(g: GraphBuilder, acc: str, layer: Int8Layer, hint: str, ops: WeightOps) -> str:
    """acc (exact integer sums, float32 NCHW or [N, Cout]) x the per-channel scale + the bias."""
    cout = layer.scale.shape[0]
    per_channel = (cout, 1, 1) if layer.kind == LayerKind.CONV else (cout,)
    y = g.op(
        "Mul",
        [acc, ops.output(g, ops.reshape(layer.scale, per_channel, f"{hint}.scale_c"), scale_name(hint))],
        f"{hint}.scaled",
    )
    return g.op("Add", [y, ops.output(g, ops.reshape(layer.bias, per_channel, f"{hint}.bias_c"), f"{hint}.bias")], hint)


def emit_input_codes(g: GraphBuilder, x: str, codes: InputCodes) -> str:
    """The centred 8-bit codes a quantised stem reads (:class:`gee_deploy.quantisation.InputCodes`), from the
    float32 image ``x`` [N, C, H, W]: Mul by 255, Round (half to even, as ``torch.round``), Clip to [0, 255],
    Sub the zero points; the same four IEEE float32 steps as the model's own."""
    levels = float(INPUT_LEVELS)
    scaled = g.op("Mul", [x, g.const(levels, "input_levels", np.float32, scalar=True)], "input_scaled")
    clipped = g.op(
        "Clip",
        [
            g.op("Round", [scaled], "input_rounded"),
            g.const(0.0, "input_min", np.float32, scalar=True),
            g.const(levels, "input_levels", np.float32, scalar=True),
        ],
        "input_codes",
    )
    return g.op("Sub", [clipped, g.const(codes.zero_point.numpy(), "input_zero_point", np.float32)], "input_centred")
