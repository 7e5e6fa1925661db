"""Fold a weight layer (plain or genetic) and the BatchNorm after it into float64 arrays.

For a genetic layer the weight is generated in float64 from its factors (paper eq. 1):

.. math:: W[o, i, p] = s \\, \\gamma_o / \\sqrt{\\sigma^2_o + \\epsilon} \\sum_{a,b} E_{in}[i, p, a] G[a, b] E_{out}[o, p, b]

and the BatchNorm shift becomes the bias. Everything is computed in float64 and cast to float32 once, when
the graph writer stores it, so folding adds no rounding of its own beyond that single cast.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedModuleError
from ..genetic import GeneticConv2d, GeneticLinear
from ..kinds import LayerKind
from ..walk import CONV_TYPES, is_weight_layer
from ..zoo.base import fuse_average_pool
from .graph import GraphBuilder

__all__ = ["FoldedLayer", "fold_layer", "batchnorm_affine", "emit_dense"]


@dataclass(frozen=True)
class FoldedLayer:
    """One conv or linear layer with its BatchNorm folded in, float64.

    Attributes:
        kind: conv or linear.
        weight: [Cout, Cin, k, k] (conv) or [Cout, Cin] (linear).
        bias: [Cout].
        kernel_size, stride, padding: conv geometry (1, 1, 0 for linear).
        pooled: a 2x2 average pool follows (:class:`~gee_deploy.zoo.base.ConvPool`); both forms include it,
            the dense one as a single (k+1) x (k+1) stride-2 conv.
        e_in: genetic layers only: the input encoding as read, [Cin, k*k, g].
        mix: genetic layers only: s * G E_out^T with the BatchNorm scale, per tap, [k*k, g, Cout];
            weight[o, i, p] = sum_a e_in[i, p, a] mix[p, a, o].
    """

    kind: LayerKind
    weight: np.ndarray
    bias: np.ndarray
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    pooled: bool = False
    e_in: np.ndarray | None = None
    mix: np.ndarray | None = None

    @property
    def genetic(self) -> bool:
        return self.e_in is not None

    @property
    def c_in(self) -> int:
        return self.weight.shape[1]

    @property
    def c_out(self) -> int:
        return self.weight.shape[0]

    @property
    def genes(self) -> int:
        return self.e_in.shape[-1] if self.genetic else 0


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def batchnorm_affine(bn: nn.Module | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an eval-mode BatchNorm as y = scale * x + shift, float64; identity for None."""
    if bn is None:
        return np.ones(channels), np.zeros(channels)
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or bn.running_mean is None:
        raise UnsupportedModuleError(f"cannot fold {type(bn).__name__} (needs BatchNorm with running statistics)")
    scale = 1.0 / np.sqrt(_f64(bn.running_var) + bn.eps)
    if bn.weight is not None:
        scale = scale * _f64(bn.weight)
    shift = -_f64(bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + _f64(bn.bias)
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


def fold_layer(m: nn.Module, bn: nn.Module | None = None, pooled: bool = False) -> FoldedLayer:
    """Fold weight layer ``m`` (Conv2d, Linear or their genetic versions) and the BatchNorm ``bn`` after it.

    ``pooled``: ``m`` is a ConvPool's conv, so a 2x2 average pool sits between it and ``bn`` (an eval-mode BN is
    a per-channel affine map, so it commutes with the pool and folds all the same).
    """
    if not is_weight_layer(m):
        raise UnsupportedModuleError(f"{type(m).__name__} is not a weight layer")
    kind = LayerKind.CONV if isinstance(m, CONV_TYPES) else LayerKind.LINEAR
    k, stride, padding = _conv_geometry(m) if kind == LayerKind.CONV else (1, 1, 0)
    c_out = m.out_channels if kind == LayerKind.CONV else m.out_features
    scale, shift = batchnorm_affine(bn, c_out)
    bias = getattr(m, "bias", None)
    bias = shift + scale * _f64(bias) if bias is not None else shift
    if isinstance(m, (GeneticConv2d, GeneticLinear)):
        e_in, e_out, gene_matrix = _f64(m.e_in), _f64(m.e_out), _f64(m.gene_matrix)
        # mix[p, a, o] = s * sum_b G[a, b] E_out[o, p, b] * bn_scale[o]
        mix = np.einsum("ab,opb->pao", gene_matrix, e_out) * float(m.scale) * scale
        weight = np.einsum("ipa,pao->oip", e_in, mix)  # eq. 1, per tap
        weight = weight.reshape(c_out, -1, k, k) if kind == LayerKind.CONV else weight[..., 0]
        return FoldedLayer(kind, weight, bias, k, stride, padding, pooled, e_in, mix)
    weight = _f64(m.weight)
    weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return FoldedLayer(kind, weight, bias, k, stride, padding, pooled)


def emit_dense(graph: GraphBuilder, x: str, layer: FoldedLayer, hint: str) -> str:
    """Write ``layer`` as one Conv or Gemm (weights cast to float32 here, once); returns the output's name."""
    weight, stride = layer.weight, layer.stride
    if layer.pooled:  # conv + 2x2 average pool as one stride-2 conv, as ConvPool runs it
        weight, stride = fuse_average_pool(torch.from_numpy(weight)).numpy(), 2
    w, b = graph.const(weight, f"{hint}.weight"), graph.const(layer.bias, f"{hint}.bias")
    if layer.kind == LayerKind.CONV:
        return graph.op("Conv", [x, w, b], hint, pads=[layer.padding] * 4, strides=[stride] * 2)
    return graph.op("Gemm", [x, w, b], hint, transB=1)
