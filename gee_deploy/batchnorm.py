"""An eval-mode BatchNorm as a per-channel affine map, and its fold into the weight layer before it.

Written once over an array-operations backend, as :func:`gee_deploy.quantisation.int8_codes` is: the exporter
runs it on :class:`gee_deploy.export.weights.WeightOps` (numpy, and ONNX operators when a ``genetic`` file
computes its weights in the graph), a quantised model's eval path on :data:`gee_deploy.quantisation.TORCH_OPS`.
Each step is one IEEE float64 operation (add, multiply, divide, square root, negate), so every backend gives the
same numbers bit for bit (docs/design.md, "Int8 layers").
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .errors import UnsupportedModuleError

__all__ = ["BATCHNORMS", "batchnorm_affine", "folded_bias"]

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def batchnorm_affine(ops, bn: nn.Module | None, channels: int, hint: str):
    """(scale, shift) [channels] of an eval-mode BatchNorm as y = scale * x + shift, float64; identity for None.

    scale = weight / sqrt(running_var + eps), shift = -running_mean * scale + bias (``torch.nn.BatchNorm2d``).

    Raises:
        UnsupportedModuleError: ``bn`` is not a BatchNorm with running statistics.
    """
    if bn is None:
        return ops.constant(np.ones(channels), f"{hint}.ones"), ops.constant(np.zeros(channels), f"{hint}.zeros")
    if not isinstance(bn, BATCHNORMS) or bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModuleError(f"cannot fold {type(bn).__name__} (needs BatchNorm with running statistics)")
    variance = ops.add(
        ops.stored(bn.running_var, f"{hint}.running_var"), ops.constant(bn.eps, f"{hint}.eps"), f"{hint}.var_eps"
    )
    # weight / std in one Div: 1 / std times weight is a pattern onnxruntime's graph optimiser may rewrite
    # (DivMulFusion) before it folds, so that the session's fold would differ from the exporter's own
    numerator = ops.stored(bn.weight, f"{hint}.weight") if bn.weight is not None else ops.constant(1.0, "one")
    scale = ops.div(numerator, ops.sqrt(variance, f"{hint}.std"), f"{hint}.scale64")
    shift = ops.mul(
        ops.neg(ops.stored(bn.running_mean, f"{hint}.running_mean"), f"{hint}.neg_mean"), scale, f"{hint}.shift64"
    )
    if bn.bias is not None:
        shift = ops.add(shift, ops.stored(bn.bias, f"{hint}.bias"), f"{hint}.shift64")
    return scale, shift


def folded_bias(ops, scale, shift, bias, hint: str):
    """The bias of a layer with its BatchNorm folded in, float64 [Cout]: shift + scale * ``bias`` (the layer's
    own bias, a tensor, or None for none: then ``shift``)."""
    if bias is None:
        return shift
    return ops.add(shift, ops.mul(scale, ops.stored(bias, f"{hint}.bias"), f"{hint}.bias_scaled"), f"{hint}.bias64")
