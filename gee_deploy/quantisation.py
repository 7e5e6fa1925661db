"""Int8 weights for the layers that read spikes: symmetric per-output-channel quantisation.

Why int8 this way: docs/design.md, "Int8 layers".

After the stem every conv / linear layer reads spikes, exactly 0 or 1, so as uint8 they are exact and only the
weights lose precision. One function, :func:`quantise_weight`, defines the int8 codes and scales; the
quantisation-aware fine-tune (straight-through fake quantisation, :func:`fake_quantise`), the PyTorch eval path
of a quantised checkpoint and the int8 exporter all call it on the same float32 weight the model's forward
uses, so they agree on every code.

.. math:: s_o = \\max_j |W_{o,j}| / 127,\\quad q_{o,j} = \\mathrm{clamp}(\\mathrm{round}(W_{o,j} / s_o), -127, 127),
          \\quad W \\approx q\\,s

**BatchNorm fold.** An eval-mode BatchNorm multiplies output channel o by a constant b_o and adds a shift, so
W b_o has the same codes q_o with scale s_o b_o: the fold changes the per-channel float scale, never the
integers, and a layer is int8-exact with or without its BN folded.

**Which weight.** A :class:`~gee_deploy.zoo.base.ConvPool` runs its k x k conv and 2x2 average pool as one
(k+1) x (k+1) stride-2 conv; that fused kernel (a sum of four taps / 4, not int8-representable when the k x k
kernel is) is what runs and what the export writes, so it is the one quantised. Genetic layers quantise their
generated W = scale E_in G E_out^T (paper eq. 1). Plain ``nn.Conv2d`` / ``nn.Linear`` layers outside a
ConvPool are not supported (their forward reads ``weight`` directly; a parametrisation would change the
checkpoint's keys and fingerprint).

A quantised checkpoint records its scheme and layers (:class:`gee_deploy.checkpoint.QuantisationRecord`);
:func:`gee_deploy.checkpoint.build_model` re-attaches the quantisers, so the checkpoint rebuilds its model
alone (docs/design.md, "Checkpoints"). Layer names follow :class:`~gee_deploy.spec.LayerSpec` (a ConvPool is
named by its conv).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .errors import ConfigError
from .genetic import GeneticConv2d, GeneticLinear
from .walk import describe
from .zoo.base import ConvPool

__all__ = ["QMAX", "SCHEME", "quantise_weight", "fake_quantise", "quantisable_modules", "spike_reading_layers",
           "attach_quantisers", "quantised_layers", "int8_weight"]

QMAX = 127  # symmetric: -127..127 (no -128, so negation and the zero point stay exact)
SCHEME = "int8-symmetric-per-output-channel"


def quantise_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 codes of ``w`` [Cout, ...]: (q int8 [Cout, ...], s float [Cout]).

    The channel's largest |w| maps to exactly +-127; an all-zero channel gets s = 1 (its codes are 0).
    Rounding is half-to-even (``torch.round``), the same in every caller.
    """
    flat = w.detach().reshape(len(w), -1)
    amax = flat.abs().amax(dim=1)
    s = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(w.detach() / s.view(-1, *[1] * (w.dim() - 1))), -QMAX, QMAX)
    return q.to(torch.int8), s


def fake_quantise(w: torch.Tensor) -> torch.Tensor:
    """q s in ``w``'s dtype, with a straight-through gradient: d(out)/d(w) = identity (Bengio et al. 2013)."""
    q, s = quantise_weight(w)
    wq = q.to(w.dtype) * s.view(-1, *[1] * (w.dim() - 1)).to(w.dtype)
    return w + (wq - w).detach()


def quantisable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> the module whose weight gets quantised, per weight layer (a ConvPool under its conv's name)."""
    out: dict[str, nn.Module] = {}
    inside_pool = set()
    for name, m in model.named_modules():
        if isinstance(m, ConvPool):
            out[f"{name}.0"] = m
            inside_pool.add(f"{name}.0")
        elif isinstance(m, (GeneticConv2d, GeneticLinear, nn.Conv2d, nn.Linear)) and name not in inside_pool:
            out[name] = m
    return out


def spike_reading_layers(model: nn.Module) -> list[str]:
    """Weight layers whose input is a LIF's binary spikes, as the model walk follows them by data flow
    (:mod:`gee_deploy.walk`: max pooling and flatten keep spikes binary, average pooling and residual sums do
    not). Structural: the answer does not depend on the weights or on any data."""
    was_training = model.training
    model.eval()  # the walk runs one sample through every module: no BatchNorm statistics may move
    try:
        return [layer.name for layer in describe(model).layers if layer.input_is_spikes]
    finally:
        model.train(was_training)


def attach_quantisers(model: nn.Module, layers: Iterable[str]) -> None:
    """Make the forward of each named layer use :func:`fake_quantise` d weights (training and eval).

    Raises:
        ConfigError: a name that is not a weight layer of ``model``, or a plain nn.Conv2d / nn.Linear.
    """
    modules = quantisable_modules(model)
    for name in layers:
        m = modules.get(name)
        if m is None:
            raise ConfigError(f"{name!r} is not a weight layer of {type(model).__name__}")
        if not isinstance(m, (ConvPool, GeneticConv2d, GeneticLinear)):
            raise ConfigError(f"cannot quantise {name} ({type(m).__name__}): int8 fine-tuning supports genetic "
                              "layers and ConvPool convs")
        m.quantiser = fake_quantise


def quantised_layers(model: nn.Module) -> list[str]:
    """Names of the layers that run with quantised weights."""
    return [n for n, m in quantisable_modules(model).items() if getattr(m, "quantiser", None) is not None]


@torch.no_grad()
def int8_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8, s float32 [Cout]) of the weight ``module``'s forward runs with: the fused kernel of a ConvPool,
    the generated W of a genetic layer (generated in float64, rounded to float32 once: ``exact_weight``, the
    weight the exporter computes too), the plain weight otherwise; the codes equal those the fake-quantised
    forward uses."""
    if isinstance(module, ConvPool):
        w = module.quantisation_source()
    elif isinstance(module, (GeneticConv2d, GeneticLinear)):
        w = module.exact_weight()
    else:
        w = module.weight
    return quantise_weight(w.float())
