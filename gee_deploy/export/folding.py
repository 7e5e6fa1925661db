"""Fold a weight layer (plain or genetic) and the BatchNorm after it, with :class:`WeightOps`.

Weights are kept with the kernel taps first, [k, k, Cout, Cin] ([Cout, Cin] for a linear layer), until a
compute op needs them: a genetic layer's weight is generated from its factors (paper eq. 1) in that layout as
one batched matrix product over the taps p,

.. math:: W[p, o, i] = \\sum_a \\mathrm{mix}[p, o, a] \\, E_{in}[i, p, a], \\quad
          \\mathrm{mix}[p, o, a] = s \\, \\gamma_o / \\sqrt{\\sigma^2_o + \\epsilon} \\sum_b E_{out}[o, p, b] G[a, b]

(the small factors are arranged first, so the dense kernel [Cout, Cin, k, k] is one cheap transpose away and the
int8 source, [k, k, Cin, Cout] with ``io``, needs none), and the BatchNorm shift becomes the bias. The float
forms' product runs in float32 (:data:`FLOAT_PRODUCT`), the int8 source's in float64 rounded once; the BatchNorm
factors in float64 (docs/export.md, "Float order"). With ``genetic`` storage the same steps are nodes of the
exported graph (:mod:`gee_deploy.export.weights`), which onnxruntime evaluates when it creates a session: the
subgraph is written to materialise as few large tensors as it can (each one costs a copy in onnxruntime's
constant folding), docs/export.md, "Storage".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..batchnorm import batchnorm_affine, folded_bias
from ..errors import UnsupportedModuleError
from ..genetic import GeneticConv2d, GeneticLinear
from ..kinds import LayerKind
from ..walk import CONV_TYPES, LINEAR_TYPES
from .graph import GraphBuilder
from .weights import Tensor, WeightOps

__all__ = [
    "FLOAT_PRODUCT",
    "FoldedLayer",
    "GeneticFactors",
    "fold_layer",
    "genetic_factors",
    "generated_weight",
    "folded_weight",
    "factorised_weights",
    "emit_dense",
    "dense_kernel",
    "fuse_average_pool",
    "to_tap_major",
]


# The precision of the product that generates a float layer's genetic weight in an exported graph: float32, as
# the model's own forward computes W (docs/export.md, "Float order"; benchmarks/fold_precision.py compares it
# with float64). int8 codes always come from the float64 product.
FLOAT_PRODUCT = np.float32


@dataclass(frozen=True)
class GeneticFactors:
    """What a genetic layer's weight is generated from (eq. 1), as the file stores it.

    Attributes:
        e_in: float32 [k, k, g, Cin] ([g, Cin] for a linear layer): the taps of the input population's
            encoding the layer reads, tap-major as stored (:meth:`WeightOps.encoding`).
        e_out: float32 [k, k, g, Cout] ([g, Cout]), the same of the output population.
        gene: float64 [g, g], G.
        scale: the layer's constant s (:func:`gee_deploy.genetic.weight_scale`), float64 [].
        kernel_size: k of a conv; None for a linear layer.
    """

    e_in: Tensor
    e_out: Tensor
    gene: Tensor
    scale: Tensor
    kernel_size: int | None

    @property
    def genes(self) -> int:
        return self.e_in.shape[-2]


@dataclass(frozen=True)
class FoldedLayer:
    """One conv or linear layer with its BatchNorm folded in.

    Attributes:
        kind: conv or linear.
        bias: float64 [Cout].
        out_scale: float64 [Cout], the BatchNorm's scale (already in ``weight``; a genetic layer applies it when
            its weight is generated, :func:`folded_weight`).
        kernel_size, stride, padding: conv geometry (1, 1, 0 for linear).
        pooled: a 2x2 average pool follows (:class:`~gee_deploy.zoo.base.ConvPool`); both forms include it,
            the dense one as a single (k+1) x (k+1) stride-2 conv (:func:`dense_kernel`).
        weight: plain layers: float64 [k, k, Cout, Cin] (conv) or [Cout, Cin] (linear), BatchNorm scale folded
            in (:func:`to_tap_major` of the usual [Cout, Cin, k, k]). None for a genetic layer.
        factors: genetic layers only: what its weight is generated from.
    """

    kind: LayerKind
    bias: Tensor
    out_scale: Tensor
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    pooled: bool = False
    weight: Tensor | None = None
    factors: GeneticFactors | None = None

    @property
    def genetic(self) -> bool:
        return self.factors is not None

    @property
    def c_in(self) -> int:
        if self.factors is not None:
            return self.factors.e_in.shape[-1]
        assert self.weight is not None, "a plain layer has its weight"
        return self.weight.shape[-1]

    @property
    def c_out(self) -> int:
        return self.bias.shape[0]

    @property
    def genes(self) -> int:
        return self.factors.genes if self.factors is not None else 0


def to_tap_major(weight: np.ndarray) -> np.ndarray:
    """[Cout, Cin, k, k] -> [k, k, Cout, Cin] (a linear [Cout, Cin] as it is): the layout this module works in."""
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1) if weight.ndim == 4 else weight)


def _single(value, what: str, layer: nn.Module) -> int:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(set(values)) != 1 or not isinstance(values[0], int):
        raise UnsupportedModuleError(f"{type(layer).__name__} with {what}={value} is not supported (square only)")
    return values[0]


def _conv_geometry(m: nn.Conv2d | GeneticConv2d) -> tuple[int, int, int]:
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or _single(m.dilation, "dilation", m) != 1 or m.padding_mode != "zeros":
            raise UnsupportedModuleError("only Conv2d with groups=1, dilation=1 and zero padding is supported")
        return (
            _single(m.kernel_size, "kernel_size", m),
            _single(m.stride, "stride", m),
            _single(m.padding, "padding", m),
        )
    return m.kernel_size, m.stride, m.padding


def genetic_factors(ops: WeightOps, m: GeneticConv2d | GeneticLinear, hint: str) -> GeneticFactors:
    """The stored factors of genetic layer ``m``: its populations' encodings, tap-major (a 1x1 conv or a linear
    layer reads the centre tap), and G, as the file stores them (float32; G read as float64)."""
    linear = isinstance(m, GeneticLinear)

    def taps(encoding: nn.Parameter, which: slice, what: str) -> Tensor:
        full = ops.encoding(encoding, f"{hint}.{what}")  # [K, K, g, C]
        if which.stop - which.start != encoding.shape[1]:  # the centre tap of a K x K population
            centre = full.shape[0] // 2
            for axis in (0, 1):
                full = ops.slice(full, axis, centre, centre + 1, f"{hint}.{what}_centre")
        return ops.reshape(full, full.shape[2:], f"{hint}.{what}_rows") if linear else full

    return GeneticFactors(
        taps(m.e_in_full, m._in_taps, "e_in"),
        taps(m.e_out_full, m._out_taps, "e_out"),
        ops.stored(m.gene_matrix, "gene_matrix"),
        ops.constant(float(m.scale), f"{hint}.gene_scale"),
        None if linear else m.kernel_size,
    )


def _mix(ops: WeightOps, f: GeneticFactors, row_scale: Tensor, hint: str, dtype, channel_first: bool = False) -> Tensor:
    """mix[.., o, a] = (sum_b E_out[o, p, b] G[a, b]) row_scale[o] in ``dtype``: [k, k, Cout, g] ([Cout, g]), or
    [Cout, k, k, g] with ``channel_first`` (the factorised form's mixing rows)."""
    n = len(f.e_out.shape)  # stored [.., g, Cout]
    perm = (n - 1,) + tuple(range(n - 1)) if channel_first else _swap_last(n)
    e_out = ops.cast(ops.transpose(f.e_out, perm, f"{hint}.e_out_rows"), dtype, f"{hint}.e_out_cast")
    gene_t = ops.transpose(ops.cast(f.gene, dtype, "gene_matrix_cast"), (1, 0), "gene_matrix_t")
    if row_scale.shape:  # along the output channels' axis
        row_scale = ops.reshape(
            row_scale, (row_scale.shape[0],) + (1,) * (n - 1 - perm.index(n - 1)), f"{hint}.row_scale_col"
        )
    return ops.mul(
        ops.matmul(e_out, gene_t, f"{hint}.mix_raw"),
        ops.cast(row_scale, dtype, f"{hint}.row_scale_cast"),
        f"{hint}.mix",
    )


def _swap_last(n: int) -> tuple[int, ...]:
    """The permutation of ``n`` axes that swaps the last two."""
    return tuple(range(n - 2)) + (n - 1, n - 2)


def generated_weight(
    ops: WeightOps, f: GeneticFactors, out_scale: Tensor | None, hint: str, io: bool = False, dtype=np.float32
) -> Tensor:
    """W = (s E_in G E_out^T) ``out_scale`` (eq. 1, scaled per output channel when ``out_scale`` [Cout] is given)
    in ``dtype``: [k, k, Cout, Cin] ([Cout, Cin] for a linear layer), or [k, k, Cin, Cout] ([Cin, Cout]) with
    ``io``.

    Per tap, ``mix`` = (E_out G^T) (s out_scale) first, then its product with E_in (Cout Cin k^2 g MACs), both
    as batched matrix products over the taps, in ``dtype``: float32 for the weights a float layer runs (as the
    model's own float32 forward computes them; the per-channel factor s out_scale in float64, rounded once),
    float64 for the weight int8 codes are taken from, rounded to float32 once by the caller (``exact_weight``;
    docs/export.md, "Float order"). With the encodings stored tap-major the product needs no transpose but the
    cheap one to [Cout, Cin, k, k] (the taps' axes to the back; onnxruntime moves [k, k, Cin, Cout] into that
    order ~50x slower per byte), and none at all with ``io``, the int8 patch layout.
    """
    row_scale = f.scale if out_scale is None else ops.mul(f.scale, out_scale, f"{hint}.row_scale")  # [] | [Cout]
    if io:  # [.., Cin, g] @ [.., g, Cout], mix^T[.., a, o] = sum_b G[a, b] E_out[o, p, b] row_scale[o]
        e_in = ops.cast(
            ops.transpose(f.e_in, _swap_last(len(f.e_in.shape)), f"{hint}.e_in_rows"), dtype, f"{hint}.e_in_cast"
        )
        mix_t = ops.matmul(
            ops.cast(f.gene, dtype, "gene_matrix_cast"),
            ops.cast(f.e_out, dtype, f"{hint}.e_out_cast"),
            f"{hint}.mix_raw",
        )
        mix_t = ops.mul(mix_t, ops.cast(row_scale, dtype, f"{hint}.row_scale_cast"), f"{hint}.mix")
        return ops.matmul(e_in, mix_t, f"{hint}.generated")
    return ops.matmul(
        _mix(ops, f, row_scale, hint, dtype), ops.cast(f.e_in, dtype, f"{hint}.e_in_cast"), f"{hint}.generated"
    )  # [.., Cout, g] @ [.., g, Cin]


def folded_weight(ops: WeightOps, layer: FoldedLayer, hint: str, product=None) -> Tensor:
    """The layer's float32 weight with its BatchNorm scale folded in, [k, k, Cout, Cin] (or [Cout, Cin]); a
    genetic layer's product computed in ``product`` (default :data:`FLOAT_PRODUCT`; float64 where no session
    waits for it: the NIR writer)."""
    if layer.factors is not None:
        weight = generated_weight(ops, layer.factors, layer.out_scale, hint, dtype=product or FLOAT_PRODUCT)
    else:
        assert layer.weight is not None, "a plain layer has its weight"
        weight = layer.weight
    return ops.cast(weight, np.float32, f"{hint}.weight32")


def factorised_weights(ops: WeightOps, layer: FoldedLayer, hint: str) -> tuple[Tensor, Tensor]:
    """(project, mix) of a genetic layer's factorised form, float32: project [p g, Cin] with row p g + a holding
    E_in[:, p, a] (the stored values, exactly), mix [Cout, p g] with mix[o, p g + a] =
    (sum_b E_out[o, p, b] G[a, b]) (s gamma_o / sqrt(var_o + eps)), as :func:`generated_weight`'s mix."""
    f = layer.factors
    assert f is not None, "only a genetic layer has a factorised form"
    taps, g = (f.kernel_size or 1) ** 2, f.genes
    project = ops.reshape(f.e_in, (taps * g, layer.c_in), f"{hint}.project_rows")
    mix = _mix(ops, f, ops.mul(f.scale, layer.out_scale, f"{hint}.row_scale"), hint, np.float32, channel_first=True)
    return project, ops.reshape(mix, (layer.c_out, taps * g), f"{hint}.mix_rows")  # [Cout, k, k, g] -> [Cout, p g]


def fold_layer(
    m: nn.Module, bn: nn.Module | None = None, pooled: bool = False, ops: WeightOps | None = None, hint: str = "layer"
) -> FoldedLayer:
    """Fold weight layer ``m`` (Conv2d, Linear or their genetic versions) and the BatchNorm ``bn`` after it.

    ``pooled``: ``m`` is a ConvPool's conv, so a 2x2 average pool sits between it and ``bn`` (an eval-mode BN is
    a per-channel affine map, so it commutes with the pool and folds all the same). ``ops``: where the
    arithmetic goes (default: numpy only). A genetic layer's weight is not generated here: the form that
    runs asks for what it needs (:func:`dense_kernel`, :func:`factorised_weights`).

    Raises:
        UnsupportedModuleError: ``m`` is not a weight layer, or has geometry the exporter does not handle.
    """
    ops = ops or WeightOps()
    if isinstance(m, CONV_TYPES):
        kind, (k, stride, padding), c_out = LayerKind.CONV, _conv_geometry(m), m.out_channels
    elif isinstance(m, LINEAR_TYPES):
        kind, (k, stride, padding), c_out = LayerKind.LINEAR, (1, 1, 0), m.out_features
    else:
        raise UnsupportedModuleError(f"{type(m).__name__} is not a weight layer")
    scale, shift = batchnorm_affine(ops, bn, c_out, f"{hint}.bn")
    bias = folded_bias(ops, scale, shift, getattr(m, "bias", None), hint)
    if isinstance(m, (GeneticConv2d, GeneticLinear)):
        return FoldedLayer(kind, bias, scale, k, stride, padding, pooled, factors=genetic_factors(ops, m, hint))
    weight = ops.stored(m.weight, f"{hint}.weight", np.float32)
    if kind == LayerKind.CONV:
        weight = ops.transpose(weight, (2, 3, 0, 1), f"{hint}.weight_taps")
    weight = ops.mul(
        ops.cast(weight, np.float64, f"{hint}.weight64"),
        ops.reshape(scale, (c_out, 1), f"{hint}.bn_scale_col"),
        f"{hint}.folded",
    )
    return FoldedLayer(kind, bias, scale, k, stride, padding, pooled, weight=weight)


def fuse_average_pool(ops: WeightOps, weight: Tensor, hint: str) -> Tensor:
    """The (k+1) x (k+1) stride-2 kernel of a k x k "same" conv followed by 2x2 average pooling, from and to
    a layout with the kernel's rows and columns first ([k, k, Cout, Cin] or [k, k, Cin, Cout]).

    The four shifted copies are added in the order of :func:`gee_deploy.zoo.base.fuse_average_pool` (which
    rolls a zero-padded [Cout, Cin, k, k] kernel), so both give the same floats in any precision.
    """
    trail = (0,) * (len(weight.shape) - 2)
    parts = [
        ops.pad(weight, before + trail, after + trail, f"{hint}.tap")
        for before, after in (((0, 0), (1, 1)), ((0, 1), (1, 0)), ((1, 0), (0, 1)), ((1, 1), (0, 0)))
    ]
    total = ops.add(
        ops.add(ops.add(parts[0], parts[1], f"{hint}.sum"), parts[2], f"{hint}.sum"), parts[3], f"{hint}.sum"
    )
    return ops.mul(total, ops.constant(0.25, "quarter", weight.dtype), f"{hint}.fused")


def dense_kernel(ops: WeightOps, layer: FoldedLayer, hint: str, product=None) -> tuple[Tensor, int]:
    """(the float32 weight the dense form runs, [Cout, Cin, k, k] or [Cout, Cin]; its stride): a pooled layer's
    conv + pool as one (k+1) x (k+1) stride-2 conv, fused in float32 as the model's forward fuses it
    (:meth:`gee_deploy.zoo.base.ConvPool.fused_weight`). ``product``: see :func:`folded_weight`."""
    weight, stride = folded_weight(ops, layer, hint, product), layer.stride
    if layer.pooled:
        weight, stride = fuse_average_pool(ops, weight, f"{hint}.kernel"), 2
    if layer.kind == LayerKind.CONV:
        weight = ops.transpose(weight, (2, 3, 0, 1), f"{hint}.kernel")
    return weight, stride


def emit_dense(graph: GraphBuilder, x: str, layer: FoldedLayer, hint: str, ops: WeightOps | None = None) -> str:
    """Write ``layer`` as one Conv or Gemm; returns the output's name."""
    ops = ops or WeightOps()
    weight, stride = dense_kernel(ops, layer, hint)
    w, b = ops.output(graph, weight, f"{hint}.weight"), ops.output(graph, layer.bias, f"{hint}.bias")
    if layer.kind == LayerKind.CONV:
        return graph.op("Conv", [x, w, b], hint, pads=[layer.padding] * 4, strides=[stride] * 2)
    return graph.op("Gemm", [x, w, b], hint, transB=1)
