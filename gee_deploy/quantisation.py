"""Int8 weights for the layers that read spikes: symmetric per-output-channel quantisation.

Why int8 this way: docs/design.md, "Int8 layers".

After the stem every conv / linear layer reads spikes, exactly 0 or 1, so as 8-bit integers they are exact and
only the weights lose precision. One function, :func:`int8_codes`, defines the int8 codes and scales, written
once over a small set of array operations the way :mod:`gee_deploy.neurons` writes the LIF once: it runs on torch
tensors here (:data:`TORCH_OPS`: the quantisation-aware fine-tune's straight-through fake quantisation,
:func:`fake_quantise`, and the PyTorch eval path of a quantised checkpoint, through :func:`quantise_weight`), and
on :class:`gee_deploy.export.weights.WeightOps` in the exporter (numpy when weights are folded, ONNX operators
when a ``genetic`` file computes the codes in its graph). Every caller hands it the same float32 weight the
model's forward uses, so they agree on every code.

.. math:: s_o = \\max_j |W_{o,j}| / 127,\\quad q_{o,j} = \\mathrm{clamp}(\\mathrm{round}(W_{o,j} / s_o), -127, 127),
          \\quad W \\approx q\\,s

with round half to even and an all-zero channel at s = 1 (its codes are 0).

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

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .genetic import GeneticConv2d, GeneticLinear
from .walk import describe
from .zoo.base import ConvPool

__all__ = [
    "QMAX",
    "SCHEME",
    "TorchOps",
    "TORCH_OPS",
    "int8_codes",
    "quantise_weight",
    "fake_quantise",
    "quantisable_modules",
    "spike_reading_layers",
    "attach_quantisers",
    "quantised_layers",
    "int8_weight",
]

QMAX = 127  # symmetric: -127..127 (no -128, so negation and the zero point stay exact)
SCHEME = "int8-symmetric-per-output-channel"


class TorchOps:
    """The array operations :func:`int8_codes` needs, on torch tensors laid out [..., Cout] (output channel last,
    as the exporter's weights are). ``hint`` names a graph tensor in the ONNX backend; unused here."""

    _DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

    def constant(self, value, hint: str, dtype=np.float64) -> torch.Tensor:
        return torch.tensor(value, dtype=self._DTYPES[np.dtype(dtype)])

    def abs_max(self, a: torch.Tensor, hint: str) -> torch.Tensor:
        """max |a| over every axis but the last: [Cout]."""
        return a.abs().reshape(-1, a.shape[-1]).amax(dim=0)

    def div(self, a: torch.Tensor, b: torch.Tensor, hint: str) -> torch.Tensor:
        return a / b

    def where_positive(self, a: torch.Tensor, then: torch.Tensor, otherwise: torch.Tensor, hint: str) -> torch.Tensor:
        return torch.where(a > 0, then, otherwise.to(a.device))

    def round_clip_int8(self, a: torch.Tensor, bound: int, hint: str) -> torch.Tensor:
        """int8 clip(round half to even(a), -bound, bound)."""
        return torch.clamp(torch.round(a), -bound, bound).to(torch.int8)


TORCH_OPS = TorchOps()


def int8_codes(ops, w, hint: str = "weight"):
    """The int8 rule: (q int8 [..., Cout], s float32 [Cout]) of float32 weight ``w`` [..., Cout] (output channel
    last), symmetric per output channel.

    s_o = max |w[..., o]| / 127 (1 for an all-zero channel), q = clamp(round half to even(w / s_o), -127, 127):
    the channel's largest |w| maps to exactly +-127. ``ops``: :data:`TORCH_OPS` for torch tensors, or a
    :class:`gee_deploy.export.weights.WeightOps` (numpy values, and ONNX nodes when it writes a graph: Abs,
    ReduceMax, Greater, Where, Div, QuantizeLinear with scale 1 and an int8 Clip); each backend's operations
    are IEEE float32 with the same rounding, so all give the same codes and scales bit for bit.
    """
    amax = ops.abs_max(w, f"{hint}.amax")
    step = ops.where_positive(
        amax,
        ops.div(amax, ops.constant(QMAX, "qmax", np.float32), f"{hint}.step"),
        ops.constant(1.0, "one", np.float32),
        f"{hint}.weight_scale",
    )
    return ops.round_clip_int8(ops.div(w, step, f"{hint}.ratio"), QMAX, f"{hint}.q"), step


def quantise_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`int8_codes` of a torch weight in its own layout, [Cout, ...] (output channel first):
    (q int8 [Cout, ...], s float [Cout])."""
    q, s = int8_codes(TORCH_OPS, w.detach().movedim(0, -1))
    return q.movedim(-1, 0).contiguous(), s


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
            raise ConfigError(
                f"cannot quantise {name} ({type(m).__name__}): int8 fine-tuning supports genetic "
                "layers and ConvPool convs"
            )
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
        weight = module.weight
        assert isinstance(weight, torch.Tensor), f"{type(module).__name__} has no weight tensor"
        w = weight
    return quantise_weight(w.float())
