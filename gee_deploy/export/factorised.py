"""The factorised form of a genetic layer: the per-tap rank-g structure kept in the graph.

A genetic conv computes, per output pixel (eq. 1 with G, scale and BatchNorm folded into ``mix``):

.. math:: y_o = b_o + \\sum_p \\sum_a \\mathrm{mix}[p, a, o] \\, u_{p,a}(\\text{pixel} \\cdot s + \\delta_p),
          \\quad u_{p,a} = \\sum_i E_{in}[i, p, a] \\, x_i

that is: a pointwise conv Cin -> k^2 g (E_in), a spatial shift of each tap's g channels by that tap's offset,
and a pointwise conv k^2 g -> Cout. Two exact orders exist and we pick per layer the one with fewer MACs:

* **pointwise-first**: project at input resolution, then shift (Pad + k^2 strided Slices + Concat; slices
  cost no MACs, unlike a one-hot depthwise conv which adds k^2 MACs per channel), then mix:
  Cin k^2 g H W + k^2 g Cout Ho Wo MACs. Moves only k^2 g channels; best for stride-1 "same" convs.
* **shift-first**: shift the input (k^2 strided slices of x, concatenated), then a grouped 1x1 conv
  (k^2 groups, Cin -> g each), then mix: k^2 Cin g Ho Wo + k^2 g Cout Ho Wo. Fewer MACs whenever the output
  is smaller than the input (stride 2, or the "valid" conv that stands in for a flatten + FC).

Both read the layer input (binary spikes in the body) only in their first op, so only that op's MACs are
accumulates (AC) in the paper's energy model (``spike_macs``); the mixing op reads analog values.
A Linear layer is the k = 1 case without shifts: Gemm Cin -> g, Gemm g -> Cout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .folding import FoldedLayer
from .graph import GraphBuilder

__all__ = ["FactorisedCost", "factorised_cost", "emit_factorised"]


@dataclass(frozen=True)
class FactorisedCost:
    """MACs per sample per call of the cheaper exact factorised form of one layer."""

    form: str  # "pointwise-first", "shift-first" or "linear"
    macs: int
    spike_macs: int  # MACs of the first op, the one that reads the layer's input


def factorised_cost(f: FoldedLayer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> FactorisedCost:
    """Cost of the factorised form of genetic layer ``f`` for per-sample shapes ``in_shape`` -> ``out_shape``."""
    g, taps = f.genes, f.kernel_size ** 2
    if f.kind == "linear":
        return FactorisedCost("linear", f.c_in * g + g * f.c_out, f.c_in * g)
    in_pixels = in_shape[1] * in_shape[2]
    out_pixels = out_shape[1] * out_shape[2]
    mixing = taps * g * f.c_out * out_pixels
    pointwise_first = f.c_in * taps * g * in_pixels
    shift_first = taps * f.c_in * g * out_pixels
    if shift_first < pointwise_first:
        return FactorisedCost("shift-first", shift_first + mixing, shift_first)
    return FactorisedCost("pointwise-first", pointwise_first + mixing, pointwise_first)


def _shift(g: GraphBuilder, x: str, f: FoldedLayer, out_shape, channels: int | None, hint: str) -> list[str]:
    """k^2 strided slices of ``x`` (padded), one per tap, row-major taps; ``channels``: per-tap channel block."""
    k, s, pad = f.kernel_size, f.stride, f.padding
    if k == 1 and s == 1 and pad == 0:
        return [x]  # a 1x1 stride-1 conv has nothing to shift
    if pad:
        x = g.op("Pad", [x, g.const([0, 0, pad, pad, 0, 0, pad, pad], "pads", np.int64)], f"{hint}.pad")
    ho, wo = out_shape[1], out_shape[2]
    taps = []
    for p in range(k * k):
        dy, dx = divmod(p, k)
        starts, ends, axes, steps = [dy, dx], [dy + (ho - 1) * s + 1, dx + (wo - 1) * s + 1], [2, 3], [s, s]
        if channels is not None:
            starts, ends, axes, steps = [p * channels] + starts, [(p + 1) * channels] + ends, [1] + axes, [1] + steps
        args = [g.const(v, "slice", np.int64) for v in (starts, ends, axes, steps)]
        taps.append(g.op("Slice", [x] + args, f"{hint}.tap{p}"))
    return taps


def emit_factorised(g: GraphBuilder, x: str, f: FoldedLayer, cost: FactorisedCost, out_shape: tuple[int, ...],
                    hint: str) -> str:
    """Write genetic layer ``f`` in its factorised ``cost.form``; returns the output's name."""
    genes, taps = f.genes, f.kernel_size ** 2
    # E_in as a 1x1 conv / grouped 1x1 conv weight: row p*g + a holds E_in[:, p, a]
    project = f.e_in.transpose(1, 2, 0).reshape(taps * genes, f.c_in)
    mix = f.mix.transpose(2, 0, 1).reshape(f.c_out, taps * genes)  # [Cout, p*g + a]
    bias = g.const(f.bias, f"{hint}.bias")
    if cost.form == "linear":
        u = g.op("Gemm", [x, g.const(project, f"{hint}.e_in")], f"{hint}.project", transB=1)
        return g.op("Gemm", [u, g.const(mix, f"{hint}.mix"), bias], hint, transB=1)
    if cost.form == "pointwise-first":
        u = g.op("Conv", [x, g.const(project[:, :, None, None], f"{hint}.e_in")], f"{hint}.project")
        z = _shift(g, u, f, out_shape, genes, hint)
    else:
        parts = _shift(g, x, f, out_shape, None, hint)
        x = g.op("Concat", parts, f"{hint}.taps", axis=1) if len(parts) > 1 else parts[0]
        z = [g.op("Conv", [x, g.const(project[:, :, None, None], f"{hint}.e_in")], f"{hint}.project",
                  group=taps)]
    z = g.op("Concat", z, f"{hint}.shifted", axis=1) if len(z) > 1 else z[0]
    return g.op("Conv", [z, g.const(mix[:, :, None, None], f"{hint}.mix"), bias], hint)
