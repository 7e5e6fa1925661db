"""Accuracy of a runtime on a dataset, its parity with the PyTorch reference, and the CI gates of `check`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Evaluation", "evaluate", "compare", "Thresholds", "failed_gates"]


@dataclass
class Evaluation:
    """Outputs of one runtime over a dataset."""

    logits: np.ndarray  # [N, classes]
    spikes: np.ndarray  # [N, L]
    labels: np.ndarray  # [N]
    spiking_layers: list[str]

    @property
    def accuracy(self) -> float:
        return float((self.logits.argmax(1) == self.labels).mean())

    @property
    def spikes_per_sample(self) -> float:
        return float(self.spikes.astype(np.float64).sum(1).mean())


def evaluate(runtime, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> Evaluation:
    """Run ``runtime`` over ``images`` in batches; keeps every logit and spike count."""
    logits, spikes = [], []
    for i in range(0, len(images), batch_size):
        out_logits, out_spikes = runtime(images[i:i + batch_size])
        logits.append(out_logits)
        spikes.append(out_spikes)
    return Evaluation(np.concatenate(logits), np.concatenate(spikes), labels, list(runtime.info.spiking_layers))


def compare(ref: Evaluation, other: Evaluation) -> dict:
    """Parity of ``other`` with the reference on the same samples.

    ``spike_count_delta`` is |total spikes - reference total| / reference total; ``spike_layer_max_delta``
    the largest such relative difference of one layer (columns matched by position: both follow the
    model's LIF order).
    """
    if ref.logits.shape != other.logits.shape:
        raise ValueError(f"logits of shape {ref.logits.shape} and {other.logits.shape} cannot be compared")
    if ref.spikes.shape != other.spikes.shape:
        raise ValueError(f"spike counts of shape {ref.spikes.shape} and {other.spikes.shape} cannot be compared")
    ref_total, total = ref.spikes.sum(0).astype(np.float64), other.spikes.sum(0).astype(np.float64)
    layer_delta = np.abs(total - ref_total) / np.maximum(ref_total, 1.0)
    return {
        "top1_agreement": float((ref.logits.argmax(1) == other.logits.argmax(1)).mean()),
        "max_logit_diff": float(np.abs(ref.logits - other.logits).max()),
        "accuracy_delta": other.accuracy - ref.accuracy,
        "spike_count_delta": float(abs(total.sum() - ref_total.sum()) / max(ref_total.sum(), 1.0)),
        "spike_layer_max_delta": float(layer_delta.max()) if len(layer_delta) else 0.0,
        "layer_names_match": ref.spiking_layers == other.spiking_layers,
    }


@dataclass(frozen=True)
class Thresholds:
    """The gates of `gee-deploy check`; defaults match the export issue's parity targets."""

    min_top1_agreement: float = 0.999  # fraction of samples whose top-1 class equals the reference's
    max_accuracy_delta: float = 0.001  # |accuracy - reference accuracy|, as a fraction (0.001 = 0.1 points)
    max_spike_delta: float = 0.001  # relative difference of the total spike count
    min_speedup: float = 2.0  # PyTorch eager p50 / onnxruntime p50 at batch 1, measured in the same run


def failed_gates(measured: dict, t: Thresholds) -> list[str]:
    """One line per gate ``measured`` fails (empty when all pass)."""
    failures = []
    if measured["top1_agreement"] < t.min_top1_agreement:
        failures.append(f"top-1 agreement {measured['top1_agreement']:.4%} < {t.min_top1_agreement:.4%}")
    if abs(measured["accuracy_delta"]) > t.max_accuracy_delta:
        failures.append(f"accuracy delta {measured['accuracy_delta'] * 100:+.3f} points exceeds "
                        f"+/-{t.max_accuracy_delta * 100:.3f}")
    if measured["spike_count_delta"] > t.max_spike_delta:
        failures.append(f"spike-count delta {measured['spike_count_delta']:.4%} > {t.max_spike_delta:.4%}")
    if measured["speedup"] < t.min_speedup:
        failures.append(f"onnxruntime is {measured['speedup']:.2f}x PyTorch eager at batch 1 (p50), below "
                        f"the required {t.min_speedup:.2f}x")
    return failures
