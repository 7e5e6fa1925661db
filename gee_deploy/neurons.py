"""LIF neurons in multi-step mode, and the helpers that move between [T, N, ...] and [T*N, ...].

Training uses spikingjelly's ``lif_multi_step`` (ATan surrogate, hard reset to 0, detach_reset). Everywhere
else the dynamics are the three steps below, written once over an :class:`Ops` backend, split as
spikingjelly's nodes are (``neuronal_charge``, ``neuronal_fire``, ``neuronal_reset``):

.. math:: H_t = V_{t-1} + (X_t - (V_{t-1} - V_{reset})) / \\tau,\\quad S_t = [H_t \\ge V_{th}],\\quad
          V_t = S_t ? V_{reset} : H_t

With :data:`TENSOR_OPS` they are the PyTorch eval path (plain tensor ops, Heaviside as a comparison); the
ONNX exporter runs the same functions with graph-building ops, so the graph computes the same floats in the
same order. A test checks that the eval path emits exactly the spikes of spikingjelly's training path.

Spike counts: inside ``with SpikeRecorder(model) as rec:`` a forward hook on every LIF appends the spikes it
emitted per sample (summed over its neurons and the T steps, in float32 whatever the autocast dtype) to
``rec.counts``; the hooks are removed when the block ends.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from spikingjelly.activation_based import surrogate
from spikingjelly.activation_based.functional import lif_multi_step
from torch import nn

__all__ = [
    "LIF",
    "SPIKE_PRESERVING",
    "SeqToBatch",
    "SpikeRecorder",
    "Ops",
    "TENSOR_OPS",
    "charge",
    "fire",
    "reset",
    "lif_reference",
]

TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0

# Modules that keep a binary spike tensor binary (the layer after them still reads spikes); average pooling
# and everything else makes it analog.
SPIKE_PRESERVING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


class Ops(Protocol):
    """The arithmetic the LIF dynamics need. ``what`` names the quantity of the equation being computed (the
    graph writer names its tensors after it); scalars are Python floats."""

    def add(self, a: Any, b: Any, what: str) -> Any: ...
    def sub(self, a: Any, b: Any, what: str) -> Any: ...
    def mul(self, a: Any, b: Any, what: str) -> Any: ...
    def div(self, a: Any, b: Any, what: str) -> Any: ...
    def greater_equal(self, a: Any, b: Any, what: str) -> Any: ...
    def where(self, cond: Any, a: Any, b: Any, what: str) -> Any: ...
    def zero_where_fired(self, h: Any, spike: Any, threshold: float, what: str) -> Any: ...
    def to_float(self, a: Any, what: str) -> Any: ...


class _TensorOps:
    """:class:`Ops` on torch tensors."""

    def add(self, a, b, what):
        return a + b

    def sub(self, a, b, what):
        return a - b

    def mul(self, a, b, what):
        return a * b

    def div(self, a, b, what):
        return a / b

    def greater_equal(self, a, b, what):
        return a >= b

    def where(self, cond, a, b, what):
        return torch.where(cond, a, b)

    def zero_where_fired(self, h, spike, threshold, what):
        return torch.where(spike, torch.zeros((), dtype=h.dtype, device=h.device), h)

    def to_float(self, a, what):
        return a.float()


TENSOR_OPS = _TensorOps()


def _is_power_of_two(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5


def _divide(ops: Ops, a, tau: float, what: str):
    """a / tau; as a * (1 / tau) when tau is a power of two, where the two are the same float (and Mul is the
    cheaper op: onnxruntime's Div costs about twice its Mul, benchmarks/lif_forms.py)."""
    return ops.mul(a, 1.0 / tau, what) if _is_power_of_two(tau) else ops.div(a, tau, what)


def charge(ops: Ops, v, x, tau: float = TAU, v_reset: float = V_RESET):
    """H_t = V_{t-1} + (X_t - (V_{t-1} - V_reset)) / tau; ``v`` None means the neuron rests at V_reset (t = 0).

    The shortcuts are exact: at rest the bracket is X_t, and V - 0 is V. The order of operations is
    spikingjelly's, so the floats are its training kernel's.
    """
    if v is None:
        h = _divide(ops, x, tau, "h")
        return h if v_reset == 0 else ops.add(v_reset, h, "h")
    d = v if v_reset == 0 else ops.sub(v, v_reset, "d")
    return ops.add(v, _divide(ops, ops.sub(x, d, "d"), tau, "d"), "h")


def fire(ops: Ops, h, v_threshold: float = V_THRESHOLD):
    """S_t = [H_t >= V_th], as a boolean (Heaviside as a comparison)."""
    return ops.greater_equal(h, v_threshold, "fire")


def reset(ops: Ops, h, spike, v_threshold: float = V_THRESHOLD, v_reset: float = V_RESET):
    """Hard reset: V_t = V_reset where S_t, else H_t (equal to H_t (1 - S_t) + V_reset S_t for S_t in {0, 1}).

    With V_reset = 0 each backend writes its cheapest exact form (``zero_where_fired``): torch a ``where``; the
    graph H_t - ThresholdedRelu(H_t, alpha) with alpha the float32 just below V_th, which keeps exactly the
    H_t >= V_th, so it is H_t - H_t = +0 where the neuron fired and H_t - 0 = H_t elsewhere, bit for bit,
    without onnxruntime's Where (several times the cost of the two ops together, benchmarks/lif_forms.py).
    """
    if v_reset != 0:
        return ops.where(spike, v_reset, h, "v")
    return ops.zero_where_fired(h, spike, v_threshold, "v")


def lif_reference(
    x_seq: torch.Tensor, tau: float = TAU, v_threshold: float = V_THRESHOLD, v_reset: float = V_RESET
) -> torch.Tensor:
    """LIF over ``x_seq`` [T, N, ...] with plain tensor ops; returns spikes [T, N, ...] in ``x_seq``'s dtype."""
    v, spikes = None, []
    for t in range(x_seq.shape[0]):
        h = charge(TENSOR_OPS, v, x_seq[t], tau, v_reset)
        s = fire(TENSOR_OPS, h, v_threshold)
        v = reset(TENSOR_OPS, h, s, v_threshold, v_reset)
        spikes.append(s)
    return torch.stack(spikes).to(x_seq.dtype)


class LIF(nn.Module):
    """Multi-step LIF layer: [T, N, ...] in, binary spikes [T, N, ...] out. Stateless across calls.

    Raises:
        ValueError: the input is not multi-step (fewer than 3 dimensions).
    """

    def __init__(self, tau: float = TAU, v_threshold: float = V_THRESHOLD, v_reset: float = V_RESET):
        super().__init__()
        self.tau = tau
        self.v_threshold = v_threshold
        self.v_reset = v_reset
        self.surrogate = surrogate.ATan()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 3:
            raise ValueError(f"LIF expects a multi-step tensor [T, N, ...], got shape {tuple(x_seq.shape)}")
        if self.training and torch.is_grad_enabled():
            v0 = torch.full_like(x_seq[0], self.v_reset)
            spikes, _, _ = lif_multi_step(
                x_seq,
                v0,
                tau=self.tau,
                decay_input=True,
                v_threshold=self.v_threshold,
                v_reset=self.v_reset,
                surrogate_function=self.surrogate,
                detach_reset=True,
                store_v_seq=False,
            )
            return spikes
        return lif_reference(x_seq, self.tau, self.v_threshold, self.v_reset)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"


class SpikeRecorder(AbstractContextManager):
    """Collects per-sample spike counts of every LIF layer of ``model`` during the forward passes inside it.

    A forward hook per LIF (spikingjelly's ``OutputMonitor`` pattern); ``counts`` holds one float32 [N] tensor
    per LIF call in call order, ``sizes`` the neurons per sample of each.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, LIF)]
        self.names = [n for n, m in model.named_modules() if isinstance(m, LIF)]
        self.counts: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def _record(self, module: nn.Module, args, spikes: torch.Tensor) -> None:
        # summed in float32: a bf16/fp16 sum of 0/1 values rounds above 256 (bf16) or 2048 (fp16)
        self.counts.append(spikes.sum(dim=[0] + list(range(2, spikes.dim())), dtype=torch.float32))  # [N]
        self.sizes.append(spikes[0, 0].numel())

    def __enter__(self) -> SpikeRecorder:
        self._hooks = [layer.register_forward_hook(self._record) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        self.remove_hooks()

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def stacked(self) -> torch.Tensor:
        """Counts as [N, L], L = number of LIF layers."""
        return torch.stack(self.counts, dim=1)


class SeqToBatch(nn.Sequential):
    """Applies stateless layers (conv, BN, pooling) to [T, N, ...] by folding T into the batch."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        t, n = x_seq.shape[0], x_seq.shape[1]
        y = super().forward(x_seq.flatten(0, 1))  # [T*N, ...]
        return y.unflatten(0, (t, n))  # [T, N, ...]
