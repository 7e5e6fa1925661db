"""Fold a weight layer (plain or genetic) and the BatchNorm after it, in float64, with :class:`WeightOps`.

For a genetic layer the weight is generated from its factors (paper eq. 1), per kernel tap p:

.. math:: W[o, i, p] = \\sum_a \\mathrm{mix}[p, o, a] \\, E_{in}[i, p, a], \\quad
          \\mathrm{mix}[p, o, a] = s \\, \\gamma_o / \\sqrt{\\sigma^2_o + \\epsilon} \\sum_b E_{out}[o, p, b] G[a, b]

and the BatchNorm shift becomes the bias. Both products are batched float64 matrix products over the taps
(``mix`` [p, Cout, g] times ``project`` [p, g, Cin]), the layout that needs no large transpose in the graph;
everything stays float64 until the graph writer casts it to float32 once, so folding adds no rounding of its
own beyond that single cast. With ``genetic`` storage the same steps are nodes of the exported graph
(:mod:`gee_deploy.export.weights`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..errors import UnsupportedModuleError
from ..genetic import GeneticConv2d, GeneticLinear
from ..kinds import LayerKind
from ..walk import CONV_TYPES, is_weight_layer
from .graph import GraphBuilder
from .weights import Tensor, WeightOps

__all__ = ["FoldedLayer", "fold_layer", "batchnorm_affine", "emit_dense", "dense_kernel", "fuse_average_pool",
           "genetic_factors", "weight_from_factors"]


@dataclass(frozen=True)
class FoldedLayer:
    """One conv or linear layer with its BatchNorm folded in, float64.

    Attributes:
        kind: conv or linear.
        weight: [Cout, Cin, k, k] (conv) or [Cout, Cin] (linear).
        bias: [Cout].
        kernel_size, stride, padding: conv geometry (1, 1, 0 for linear).
        pooled: a 2x2 average pool follows (:class:`~gee_deploy.zoo.base.ConvPool`); both forms include it,
            the dense one as a single (k+1) x (k+1) stride-2 conv (:func:`dense_kernel`).
        project: genetic layers only: the input encoding per tap, [k*k, g, Cin] (E_in[i, p, a] at [p, a, i]).
        mix: genetic layers only: s * G E_out^T with the BatchNorm scale, per tap, [k*k, Cout, g];
            weight[o, i, p] = sum_a mix[p, o, a] project[p, a, i].
    """

    kind: LayerKind
    weight: Tensor
    bias: Tensor
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    pooled: bool = False
    project: Tensor | None = None
    mix: Tensor | None = None

    @property
    def genetic(self) -> bool:
        return self.project is not None

    @property
    def c_in(self) -> int:
        return self.weight.shape[1]

    @property
    def c_out(self) -> int:
        return self.weight.shape[0]

    @property
    def genes(self) -> int:
        return self.project.shape[1] if self.genetic else 0


def batchnorm_affine(ops: WeightOps, bn: nn.Module | None, channels: int, hint: str) -> tuple[Tensor, Tensor]:
    """(scale, shift) [channels] of an eval-mode BatchNorm as y = scale * x + shift, float64; identity for None.

    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale (``torch.nn.BatchNorm2d``).
    """
    if bn is None:
        return ops.constant(np.ones(channels), f"{hint}.ones"), ops.constant(np.zeros(channels), f"{hint}.zeros")
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or bn.running_mean is None:
        raise UnsupportedModuleError(f"cannot fold {type(bn).__name__} (needs BatchNorm with running statistics)")
    variance = ops.add(ops.stored(bn.running_var, f"{hint}.running_var"), ops.constant(bn.eps, f"{hint}.eps"),
                       f"{hint}.var_eps")
    scale = ops.div(ops.constant(1.0, "one"), ops.sqrt(variance, f"{hint}.std"), f"{hint}.inv_std")
    if bn.weight is not None:
        scale = ops.mul(scale, ops.stored(bn.weight, f"{hint}.weight"), f"{hint}.scale64")
    shift = ops.mul(ops.neg(ops.stored(bn.running_mean, f"{hint}.running_mean"), f"{hint}.neg_mean"), scale,
                    f"{hint}.shift64")
    if bn.bias is not None:
        shift = ops.add(shift, ops.stored(bn.bias, f"{hint}.bias"), f"{hint}.shift64")
    return scale, shift


def _single(value, what: str, layer: nn.Module) -> int:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(set(values)) != 1 or not isinstance(values[0], int):
        raise UnsupportedModuleError(f"{type(layer).__name__} with {what}={value} is not supported (square only)")
    return values[0]


def _conv_geometry(m: nn.Module) -> tuple[int, int, int]:
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or _single(m.dilation, "dilation", m) != 1 or m.padding_mode != "zeros":
            raise UnsupportedModuleError("only Conv2d with groups=1, dilation=1 and zero padding is supported")
        return _single(m.kernel_size, "kernel_size", m), _single(m.stride, "stride", m), \
            _single(m.padding, "padding", m)
    return m.kernel_size, m.stride, m.padding


def genetic_factors(ops: WeightOps, m: GeneticConv2d | GeneticLinear, hint: str) -> tuple[Tensor, Tensor]:
    """(project [p, g, Cin], s * sum_b E_out[o, p, b] G[a, b] at [p, Cout, g]) of genetic layer ``m``, float64.

    The stored tensors are the population encodings (whole; a 1x1 layer slices the centre tap) and G.
    """
    def taps(encoding: nn.Parameter, which: slice, what: str) -> Tensor:
        full = ops.stored(encoding, f"{hint}.{what}")
        return ops.slice(full, 1, which.start, which.stop, f"{hint}.{what}_taps")

    e_in = taps(m.e_in_full, m._in_taps, "e_in")  # [Cin, p, g]
    e_out = taps(m.e_out_full, m._out_taps, "e_out")  # [Cout, p, g]
    project = ops.transpose(e_in, (1, 2, 0), f"{hint}.e_in_per_tap")  # [p, g, Cin]
    gene_t = ops.transpose(ops.stored(m.gene_matrix, "gene_matrix"), (1, 0), "gene_matrix_t")  # [b, a]
    mix = ops.matmul(ops.transpose(e_out, (1, 0, 2), f"{hint}.e_out_per_tap"), gene_t, f"{hint}.mix_raw")  # [p, Cout, g]
    return project, ops.mul(mix, ops.constant(float(m.scale), f"{hint}.gene_scale"), f"{hint}.mix_scaled")


def weight_from_factors(ops: WeightOps, project: Tensor, mix: Tensor, shape: tuple[int, ...], hint: str) -> Tensor:
    """W [Cout, Cin, k, k] (or [Cout, Cin]) = sum_a mix[p, o, a] project[p, a, i] at [o, i, p] (eq. 1), float64."""
    per_tap = ops.matmul(mix, project, f"{hint}.per_tap")  # [p, Cout, Cin]
    return ops.reshape(ops.transpose(per_tap, (1, 2, 0), f"{hint}.oip"), shape, f"{hint}.generated")


def fold_layer(m: nn.Module, bn: nn.Module | None = None, pooled: bool = False, ops: WeightOps | None = None,
               hint: str = "layer") -> FoldedLayer:
    """Fold weight layer ``m`` (Conv2d, Linear or their genetic versions) and the BatchNorm ``bn`` after it.

    ``pooled``: ``m`` is a ConvPool's conv, so a 2x2 average pool sits between it and ``bn`` (an eval-mode BN is
    a per-channel affine map, so it commutes with the pool and folds all the same). ``ops``: where the
    arithmetic goes (default: numpy only).

    Raises:
        UnsupportedModuleError: ``m`` is not a weight layer, or has geometry the exporter does not handle.
    """
    ops = ops or WeightOps()
    if not is_weight_layer(m):
        raise UnsupportedModuleError(f"{type(m).__name__} is not a weight layer")
    kind = LayerKind.CONV if isinstance(m, CONV_TYPES) else LayerKind.LINEAR
    k, stride, padding = _conv_geometry(m) if kind == LayerKind.CONV else (1, 1, 0)
    c_out = m.out_channels if kind == LayerKind.CONV else m.out_features
    c_in = m.in_channels if kind == LayerKind.CONV else m.in_features
    scale, shift = batchnorm_affine(ops, bn, c_out, f"{hint}.bn")
    bias = getattr(m, "bias", None)
    if bias is not None:
        bias = ops.add(shift, ops.mul(scale, ops.stored(bias, f"{hint}.bias"),
                                      f"{hint}.bias_scaled"), f"{hint}.bias64")
    else:
        bias = shift
    shape = (c_out, c_in, k, k) if kind == LayerKind.CONV else (c_out, c_in)
    if isinstance(m, (GeneticConv2d, GeneticLinear)):
        project, mix = genetic_factors(ops, m, hint)
        mix = ops.mul(mix, ops.reshape(scale, (1, c_out, 1), f"{hint}.bn_scale"), f"{hint}.mix_bn")
        weight = weight_from_factors(ops, project, mix, shape, hint)
        return FoldedLayer(kind, weight, bias, k, stride, padding, pooled, project, mix)
    weight = ops.stored(m.weight, f"{hint}.weight")
    weight = ops.mul(weight, ops.reshape(scale, (-1,) + (1,) * (len(shape) - 1), f"{hint}.bn_scale"),
                     f"{hint}.folded")
    return FoldedLayer(kind, weight, bias, k, stride, padding, pooled)


def fuse_average_pool(ops: WeightOps, weight: Tensor, hint: str) -> Tensor:
    """The (k+1) x (k+1) stride-2 kernel of a k x k "same" conv followed by 2x2 average pooling, [..., k+1, k+1].

    The four shifted copies are added in the order of :func:`gee_deploy.zoo.base.fuse_average_pool` (which
    rolls a zero-padded kernel), so both give the same floats in any precision.
    """
    lead = (0,) * (len(weight.shape) - 2)
    parts = [ops.pad(weight, lead + before, lead + after, f"{hint}.tap")
             for before, after in (((0, 0), (1, 1)), ((0, 1), (1, 0)), ((1, 0), (0, 1)), ((1, 1), (0, 0)))]
    total = ops.add(ops.add(ops.add(parts[0], parts[1], f"{hint}.sum"), parts[2], f"{hint}.sum"), parts[3],
                    f"{hint}.sum")
    return ops.mul(total, ops.constant(0.25, "quarter", weight.dtype), f"{hint}.fused")


def dense_kernel(ops: WeightOps, layer: FoldedLayer, hint: str) -> tuple[Tensor, int]:
    """(the weight the dense form runs, its stride): a pooled layer's conv + pool as one stride-2 conv."""
    if layer.pooled:
        return fuse_average_pool(ops, layer.weight, hint), 2
    return layer.weight, layer.stride


def emit_dense(graph: GraphBuilder, x: str, layer: FoldedLayer, hint: str, ops: WeightOps | None = None) -> str:
    """Write ``layer`` as one Conv or Gemm (weights cast to float32 here, once); returns the output's name."""
    ops = ops or WeightOps()
    weight, stride = dense_kernel(ops, layer, f"{hint}.kernel")
    w, b = ops.output(graph, weight, f"{hint}.weight"), ops.output(graph, layer.bias, f"{hint}.bias")
    if layer.kind == LayerKind.CONV:
        return graph.op("Conv", [x, w, b], hint, pads=[layer.padding] * 4, strides=[stride] * 2)
    return graph.op("Gemm", [x, w, b], hint, transB=1)
