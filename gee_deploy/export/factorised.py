"""The factorised form of a genetic layer: the per-tap rank-g structure kept in the graph.

A genetic conv computes, per output pixel (eq. 1 with G, scale and BatchNorm folded into ``mix``):

.. math:: y_o = b_o + \\sum_p \\sum_a \\mathrm{mix}[p, a, o] \\, u_{p,a}(\\text{pixel} \\cdot s + \\delta_p),
          \\quad u_{p,a} = \\sum_i E_{in}[i, p, a] \\, x_i

that is: a pointwise conv Cin -> k^2 g (E_in), a spatial shift of each tap's g channels by that tap's offset,
and a pointwise conv k^2 g -> Cout. Two exact orders exist and we pick per layer the one with fewer MACs:

* **pointwise-first**: project at input resolution, shift with a one-hot depthwise k x k conv (k^2 g
  groups, the layer's stride and padding), then mix: Cin k^2 g H W + k^2 g Cout Ho Wo MACs. Moves only k^2 g
  channels; best for stride-1 "same" convs. The one-hot conv only moves data (one non-zero tap per channel),
  so it is not counted as MACs; on onnxruntime it ran 2-3x faster than Pad + k^2 Slices + Concat.
* **shift-first**: shift the input (k^2 strided slices of x, concatenated), then a grouped 1x1 conv
  (k^2 groups, Cin -> g each), then mix: k^2 Cin g Ho Wo + k^2 g Cout Ho Wo. Fewer MACs whenever the output
  is smaller than the input (stride 2, or the "valid" conv that stands in for a flatten + FC).

``moved`` counts the elements of the intermediate tensors a form writes and reads back (per sample). On a
CPU they cost time the MAC count does not show, and the factorised ops run fewer MACs per second than a dense
conv, so ``auto`` compares ``MAC_COST * macs + MOVE_COST * moved`` with the dense MACs (see :data:`MAC_COST`,
:data:`MOVE_COST`); ``--profile`` measures instead of estimating.

Both read the layer input (binary spikes in the body) only in their first op, so only that op's MACs are
accumulates (AC) in the paper's energy model (``spike_macs``); the mixing op reads analog values.
A Linear layer is the k = 1 case without shifts: Gemm Cin -> g, Gemm g -> Cout. A pooled layer (a
ConvPool's conv) is written pointwise-first at input resolution, then AveragePool 2x2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..kinds import Form, LayerKind
from .folding import FoldedLayer, factorised_weights
from .graph import GraphBuilder
from .weights import WeightOps

__all__ = ["FactorisedCost", "factorised_cost", "emit_factorised", "MOVE_COST", "MAC_COST"]

# MAC-equivalents per intermediate element: onnxruntime CPU (MLAS, one thread) ran dense convs at ~18 GMAC/s
# and spent ~3.5 ns per element of a factorised layer's intermediates (fit over 4 layer shapes, g 8-32).
MOVE_COST = 64
# Dense MAC-equivalents per factorised MAC. The factorised form's 1x1 convs (Cin -> k^2 g -> Cout, with
# k^2 g = 1,350 channels at g = 150) run at a lower MAC rate than MLAS's dense k x k conv: on ResNet-19's
# 512-channel 8 x 8 layers at g = 150 the factorised form (88.5 M MACs) took as long as the dense one (151 M)
# at batch 1 and 8 (0.9-1.2x, onnxruntime 1.32, one thread), where counting its MACs at face value had made
# `auto` pick it and run 12% slower than pure dense. At 2 per MAC a layer is factorised when it needs fewer
# than about half the dense MACs (VGG-16's classifier: 0.07x) and stays dense near break-even (0.59x).
MAC_COST = 2.0


@dataclass(frozen=True)
class FactorisedCost:
    """MACs per sample per call of the cheaper exact factorised form of one layer."""

    form: Form  # pointwise-first, shift-first or linear
    macs: int
    spike_macs: int  # MACs of the first op, the one that reads the layer's input
    moved: int = 0  # elements of the intermediate tensors

    @property
    def effective_macs(self) -> int:
        """MACs weighted by :data:`MAC_COST` plus the data movement of the intermediates, in dense
        MAC-equivalents (what ``auto`` compares with the dense MACs)."""
        return int(MAC_COST * self.macs + MOVE_COST * self.moved)


def factorised_cost(layer: FoldedLayer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> FactorisedCost:
    """Cost of the factorised form of genetic layer ``layer`` for per-sample shapes ``in_shape`` -> ``out_shape``."""
    genes, taps = layer.genes, layer.kernel_size**2
    if layer.kind == LayerKind.LINEAR:
        return FactorisedCost(Form.LINEAR, layer.c_in * genes + genes * layer.c_out, layer.c_in * genes, genes)
    in_pixels = in_shape[1] * in_shape[2]
    out_pixels = out_shape[1] * out_shape[2]
    if layer.pooled:  # the factorised conv runs at input resolution ("same", stride 1); AveragePool reads its output
        cost = factorised_cost(replace(layer, pooled=False), in_shape, (layer.c_out,) + tuple(in_shape[1:]))
        return replace(cost, moved=cost.moved + layer.c_out * in_pixels)
    mixing = taps * genes * layer.c_out * out_pixels
    pointwise_first = layer.c_in * taps * genes * in_pixels
    shift_first = taps * layer.c_in * genes * out_pixels
    if shift_first < pointwise_first:
        padded = (
            layer.c_in * (in_shape[1] + 2 * layer.padding) * (in_shape[2] + 2 * layer.padding) if layer.padding else 0
        )
        # padded x, k^2 slices written then concatenated (twice), projection
        moved = padded + 2 * taps * layer.c_in * out_pixels + taps * genes * out_pixels
        return FactorisedCost(Form.SHIFT_FIRST, shift_first + mixing, shift_first, moved)
    moved = taps * genes * (in_pixels + out_pixels)  # projection, shifted projection
    return FactorisedCost(Form.POINTWISE_FIRST, pointwise_first + mixing, pointwise_first, moved)


def _one_hot_shift(graph: GraphBuilder, u: str, layer: FoldedLayer, hint: str, ops: WeightOps) -> str:
    """Channel block p of ``u`` (g channels each) moved by tap p's offset: a one-hot depthwise k x k conv.

    The kernel [k^2 g, 1, k, k] is the k^2 x k^2 identity, each row repeated g times: stored as the identity
    and expanded in the graph's initializer-only subgraph when the weights are computed in the graph.
    """
    k, genes = layer.kernel_size, layer.genes
    if k == 1 and layer.stride == 1 and layer.padding == 0:
        return u  # a 1x1 stride-1 conv has nothing to shift
    eye = np.eye(k * k, dtype=np.float32)[:, None, :]  # [p, 1, p']: row-major taps, as W[o, i, p]
    one_hot = np.broadcast_to(eye, (k * k, genes, k * k)).reshape(k * k * genes, 1, k, k)
    if ops.graph is None:
        kernel = graph.const(one_hot, f"{hint}.shift")
    else:
        rows = graph.op(
            "Expand",
            [graph.const(eye, f"shift_eye{k}"), graph.const([k * k, genes, k * k], "shift_rows", np.int64)],
            f"{hint}.shift_rows",
        )
        kernel = graph.op("Reshape", [rows, graph.const(one_hot.shape, "shift_shape", np.int64)], f"{hint}.shift")
    return graph.op(
        "Conv",
        [u, kernel],
        f"{hint}.shifted",
        group=k * k * genes,
        kernel_shape=[k, k],
        pads=[layer.padding] * 4,
        strides=[layer.stride] * 2,
    )


def _shifted_copies(graph: GraphBuilder, x: str, layer: FoldedLayer, out_shape, hint: str) -> list[str]:
    """k^2 strided slices of the zero-padded ``x``, one per tap (row-major), each [*, Cin, Ho, Wo]."""
    k, s, pad = layer.kernel_size, layer.stride, layer.padding
    if k == 1 and s == 1 and pad == 0:
        return [x]
    if pad:
        x = graph.op("Pad", [x, graph.const([0, 0, pad, pad, 0, 0, pad, pad], "pads", np.int64)], f"{hint}.pad")
    ho, wo = out_shape[1], out_shape[2]
    taps = []
    for p in range(k * k):
        dy, dx = divmod(p, k)
        bounds = ([dy, dx], [dy + (ho - 1) * s + 1, dx + (wo - 1) * s + 1], [2, 3], [s, s])
        taps.append(graph.op("Slice", [x] + [graph.const(v, "slice", np.int64) for v in bounds], f"{hint}.tap{p}"))
    return taps


def emit_factorised(
    graph: GraphBuilder,
    x: str,
    layer: FoldedLayer,
    cost: FactorisedCost,
    out_shape: tuple[int, ...],
    hint: str,
    ops: WeightOps | None = None,
) -> str:
    """Write genetic layer ``layer`` in its factorised ``cost.form``; returns the output's name.

    ``ops``: the weight arithmetic of the graph (:mod:`gee_deploy.export.weights`); default: plain initializers.
    """
    ops = ops or WeightOps()
    if layer.pooled:
        if cost.form != Form.POINTWISE_FIRST:
            raise ValueError(f"{hint}: a pooled layer is written pointwise-first, not {cost.form}")
        y = emit_factorised(graph, x, replace(layer, pooled=False), cost, out_shape, f"{hint}.conv", ops)
        return graph.op("AveragePool", [y], hint, kernel_shape=[2, 2], strides=[2, 2])
    genes, taps, c_in, c_out = layer.genes, layer.kernel_size**2, layer.c_in, layer.c_out
    project_w, mix_w = factorised_weights(ops, layer, hint)  # [p g, Cin] (row p g + a: E_in[:, p, a]), [Cout, p g]
    if cost.form != Form.LINEAR:  # as 1x1 conv weights
        project_w = ops.reshape(project_w, (taps * genes, c_in, 1, 1), f"{hint}.project_conv")
        mix_w = ops.reshape(mix_w, (c_out, taps * genes, 1, 1), f"{hint}.mix_conv")
    project, mix = ops.output(graph, project_w, f"{hint}.e_in"), ops.output(graph, mix_w, f"{hint}.mix")
    bias = ops.output(graph, layer.bias, f"{hint}.bias")
    if cost.form == Form.LINEAR:
        u = graph.op("Gemm", [x, project], f"{hint}.project", transB=1)
        return graph.op("Gemm", [u, mix, bias], hint, transB=1)
    if cost.form == Form.POINTWISE_FIRST:
        u = graph.op("Conv", [x, project], f"{hint}.project")
        z = _one_hot_shift(graph, u, layer, hint, ops)
    else:
        parts = _shifted_copies(graph, x, layer, out_shape, hint)
        x = graph.op("Concat", parts, f"{hint}.taps", axis=1) if len(parts) > 1 else parts[0]
        z = graph.op("Conv", [x, project], f"{hint}.project", group=taps)
    return graph.op("Conv", [z, mix, bias], hint)
