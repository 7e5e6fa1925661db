"""LIF neurons in multi-step mode, and the helpers that move between [T, N, ...] and [T*N, ...].

Training uses spikingjelly's ``lif_multi_step`` (ATan surrogate, hard reset to 0, detach_reset). The eval
path is the same recurrence written with plain tensor ops (Heaviside as a comparison), so it exports to
ONNX and runs on any runtime; a test checks that both paths emit identical spikes.

Spike counts: inside ``with SpikeRecorder(model) as rec:`` every LIF appends the spikes it emitted per
sample (summed over its neurons and the T steps) to ``rec.counts``; export and bench read them from there.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

__all__ = ["LIF", "SPIKE_PRESERVING", "SeqToBatch", "SpikeRecorder", "lif_reference"]

TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0

# Modules that keep a binary spike tensor binary (the layer after them still reads spikes); average pooling
# and everything else makes it analog.
SPIKE_PRESERVING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


def lif_reference(x_seq: torch.Tensor, tau: float = TAU, v_threshold: float = V_THRESHOLD,
                  v_reset: float = V_RESET) -> torch.Tensor:
    """LIF over ``x_seq`` [T, N, ...] with plain tensor ops; returns spikes [T, N, ...].

    .. math:: H_t = V_{t-1} + (X_t - (V_{t-1} - V_{reset})) / \\tau,\\; S_t = [H_t \\ge V_{th}],\\;
              V_t = H_t (1 - S_t) + V_{reset} S_t
    """
    v = torch.full_like(x_seq[0], v_reset)
    spikes = []
    for t in range(x_seq.shape[0]):
        h = v + (x_seq[t] - (v - v_reset)) / tau
        s = (h >= v_threshold).to(x_seq.dtype)
        v = h * (1.0 - s) + v_reset * s
        spikes.append(s)
    return torch.stack(spikes)


class LIF(nn.Module):
    """Multi-step LIF layer: [T, N, ...] in, binary spikes [T, N, ...] out. Stateless across calls."""

    def __init__(self, tau: float = TAU, v_threshold: float = V_THRESHOLD, v_reset: float = V_RESET):
        super().__init__()
        from spikingjelly.activation_based import surrogate

        self.tau = tau
        self.v_threshold = v_threshold
        self.v_reset = v_reset
        self.surrogate = surrogate.ATan()
        self._recorder: SpikeRecorder | None = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 3:
            raise ValueError(f"LIF expects a multi-step tensor [T, N, ...], got shape {tuple(x_seq.shape)}")
        if self.training and torch.is_grad_enabled():
            from spikingjelly.activation_based.functional import lif_multi_step

            v0 = torch.full_like(x_seq[0], self.v_reset)
            spikes, _, _ = lif_multi_step(x_seq, v0, self.tau, True, self.v_threshold, self.v_reset,
                                          self.surrogate, True, False)
        else:
            spikes = lif_reference(x_seq, self.tau, self.v_threshold, self.v_reset)
        if self._recorder is not None:
            self._recorder.counts.append(spikes.sum(dim=[0] + list(range(2, spikes.dim()))))  # [N]
            self._recorder.sizes.append(spikes[0, 0].numel())
        return spikes

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"


class SpikeRecorder(AbstractContextManager):
    """Collects per-sample spike counts of every LIF layer of ``model`` during the forward passes inside it.

    ``counts`` holds one [N] tensor per LIF call in call order; ``sizes`` the neurons per sample of each.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, LIF)]
        self.names = [n for n, m in model.named_modules() if isinstance(m, LIF)]
        self.counts: list[torch.Tensor] = []
        self.sizes: list[int] = []

    def __enter__(self) -> SpikeRecorder:
        for layer in self.layers:
            layer._recorder = self
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            layer._recorder = None

    def stacked(self) -> torch.Tensor:
        """Counts as [N, L], L = number of LIF layers."""
        return torch.stack(self.counts, dim=1)


class SeqToBatch(nn.Sequential):
    """Applies stateless layers (conv, BN, pooling) to [T, N, ...] by folding T into the batch."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        t, n = x_seq.shape[0], x_seq.shape[1]
        y = super().forward(x_seq.flatten(0, 1))  # [T*N, ...]
        return y.unflatten(0, (t, n))  # [T, N, ...]
