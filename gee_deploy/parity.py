"""Parity of a deployed model with the PyTorch model it came from: one set of metrics and thresholds.

Export validation (every export, before anything is written) and serving (``bench``'s parity columns,
``check``'s CI gates) compare the same things the same way:

* top-1 agreement: the fraction of samples whose arg-max class equals the reference's;
* samples matching: logits within ``atol`` of the reference and identical spike counts. Spiking layers are
  threshold functions: a float32 rounding difference of 1e-7 can flip one spike near the threshold and move
  that sample's logits by a whole synapse weight, so a small fraction of samples may differ;
* total spike count delta: |total - reference total| / reference total (and the largest per-layer delta);
* accuracy delta, when labels are known;
* (``check`` only) the latency ratio PyTorch eager p50 / deployed p50 at batch 1, measured in the same run.

Each gate is a :class:`Check` (what was measured, the limit, ok, the one-line failure message); callers pick
the gates they enforce, so a table and the failure lines come from one place.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Thresholds", "Outputs", "compare", "Check", "checks", "EXPORT_GATES", "CHECK_GATES", "INT8_PTQ_THRESHOLDS",
           "validation_thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """Parity limits; the defaults are the project's parity targets, shared by export validation and `check`.

    Attributes:
        atol: max abs logit difference for a sample to count as matching.
        min_match: fraction of samples whose logits match within ``atol`` and whose spike counts are equal.
        min_top1_agreement: fraction of samples with the reference's arg-max.
        max_spike_delta: relative difference of the total spike count.
        max_accuracy_delta: |accuracy difference| as a fraction (0.001 = 0.1 points) that the samples must not
            show to be exceeded: the gate fails when the paired difference exceeds it by more than
            ``ACCURACY_Z`` standard errors (see ``_accuracy``), so one flipped image out of 256 (0.39 points)
            is not read as a 0.39-point loss.
        min_speedup: PyTorch eager p50 / deployed p50 at batch 1 (``check`` only).
    """

    atol: float = 1e-4
    min_match: float = 0.99
    min_top1_agreement: float = 0.999
    max_spike_delta: float = 1e-3
    max_accuracy_delta: float = 1e-3
    min_speedup: float = 2.0


# Validation of a post-training int8 export (the fp32 checkpoint's weights rounded to int8 per channel), against the
# fp32 model: the weights differ by design, so logits never match within 1e-4 and a membrane near the threshold may
# cross it. Its limits (docs/design.md, "Parity") are accuracy within 0.3 points and total spikes within 0.5%; our
# top-1 agreement target (98%) is reported, and gated here at 95% only: rounding alone moved 2.2% of the demo
# checkpoint's 1,000 test images (accuracy unchanged, spikes 0.03%), while a wrong int8 layer (codes, tap order,
# scale) drops agreement to near chance. An int8 export of an int8 fine-tuned checkpoint (`gee-deploy quantize`)
# computes what its model computes, so it keeps the fp32 limits.
INT8_PTQ_THRESHOLDS = Thresholds(atol=1e-4, min_match=0.0, min_top1_agreement=0.95, max_spike_delta=5e-3,
                                 max_accuracy_delta=3e-3)


def validation_thresholds(int8: bool, quantised_model: bool) -> Thresholds:
    """The parity limits of an export: fp32's, unless int8 layers meet weights they were not trained with."""
    return INT8_PTQ_THRESHOLDS if int8 and not quantised_model else Thresholds()


@dataclass
class Outputs:
    """What one model produced on a set of samples.

    Attributes:
        logits: [N, classes] float32.
        spikes: [N, L] spike counts per sample and spiking layer.
        labels: [N] class indices, or None when unknown.
        spiking_layers: names of the L columns.
    """

    logits: np.ndarray
    spikes: np.ndarray
    labels: np.ndarray | None = None
    spiking_layers: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float | None:
        return None if self.labels is None else float((self.logits.argmax(1) == self.labels).mean())

    @property
    def spikes_per_sample(self) -> float:
        return float(self.spikes.astype(np.float64).sum(1).mean())


def compare(ref: Outputs, other: Outputs, atol: float = Thresholds.atol) -> dict:
    """Parity of ``other`` (deployed) with ``ref`` (the reference) on the same samples, as a flat dict.

    Spike columns are matched by position (both follow the model's LIF order); ``layer_names_match`` says
    whether their names agree too.

    Raises:
        ValueError: the logits or spike counts have different shapes.
    """
    if ref.logits.shape != other.logits.shape:
        raise ValueError(f"logits of shape {ref.logits.shape} and {other.logits.shape} cannot be compared")
    if ref.spikes.shape != other.spikes.shape:
        raise ValueError(f"spike counts of shape {ref.spikes.shape} and {other.spikes.shape} cannot be compared")
    logit_diff = np.abs(other.logits - ref.logits)
    per_sample = logit_diff.max(axis=1) if logit_diff.size else np.zeros(len(ref.logits))
    same_counts = (other.spikes == ref.spikes).all(axis=1)
    ref_layer, layer = ref.spikes.astype(np.float64).sum(0), other.spikes.astype(np.float64).sum(0)
    ref_total, total = float(ref_layer.sum()), float(layer.sum())
    layer_delta = np.abs(layer - ref_layer) / np.maximum(ref_layer, 1.0)
    acc_ref, acc = ref.accuracy, other.accuracy
    return {
        "samples": int(len(ref.logits)),
        "top1_agreement": float((ref.logits.argmax(1) == other.logits.argmax(1)).mean()),
        "max_logit_diff": float(logit_diff.max()) if logit_diff.size else 0.0,
        "max_spike_count_diff": float(np.abs(other.spikes - ref.spikes).max()) if ref.spikes.size else 0.0,
        "match_fraction": float(((per_sample <= atol) & same_counts).mean()),
        "spikes_reference": ref_total,
        "spikes_deployed": total,
        "spike_count_delta": abs(total - ref_total) / max(ref_total, 1.0),
        "spike_layer_max_delta": float(layer_delta.max()) if len(layer_delta) else 0.0,
        "spikes_per_layer_deployed": layer.tolist(),
        "layer_names_match": tuple(ref.spiking_layers) == tuple(other.spiking_layers),
        "accuracy_reference": acc_ref,
        "accuracy_deployed": acc,
        "accuracy_delta": None if acc is None or acc_ref is None else acc - acc_ref,
        **_discordant(ref, other),
    }


def _discordant(ref: Outputs, other: Outputs) -> dict:
    """The paired counts behind the accuracy delta: samples only the reference gets right, only ``other`` does."""
    if ref.labels is None or other.labels is None:
        return {}
    ref_right, right = ref.logits.argmax(1) == ref.labels, other.logits.argmax(1) == other.labels
    return {"accuracy_lost": int((ref_right & ~right).sum()), "accuracy_gained": int((right & ~ref_right).sum())}


@dataclass(frozen=True)
class Check:
    """One gate: ``what`` was measured as ``measured`` against ``limit``; ``message`` is its failure line."""

    what: str
    measured: float
    limit: float
    ok: bool
    message: str


def _match(m: dict, t: Thresholds) -> Check:
    v = m["match_fraction"]
    return Check(f"samples matching (logits within atol {t.atol:g}, equal spike counts)", v, t.min_match,
                 v >= t.min_match, f"samples matching {v:.4%} < {t.min_match:.4%} (logits within atol {t.atol:g}, "
                                   "equal spike counts)")


def _top1(m: dict, t: Thresholds) -> Check:
    v = m["top1_agreement"]
    return Check("top-1 agreement", v, t.min_top1_agreement, v >= t.min_top1_agreement,
                 f"top-1 agreement {v:.4%} < {t.min_top1_agreement:.4%}")


def _spikes(m: dict, t: Thresholds) -> Check:
    v = m["spike_count_delta"]
    return Check("total spike count rel diff", v, t.max_spike_delta, v <= t.max_spike_delta,
                 f"spike-count delta {v:.4%} > {t.max_spike_delta:.4%}")


ACCURACY_Z = 1.645  # one-sided 95%


def _accuracy(m: dict, t: Thresholds) -> Check | None:
    """|accuracy delta| against its limit, as a paired test on the discordant samples.

    With b samples only the reference classifies right and c only the deployed model does, out of n, the delta
    is (c - b) / n with standard error sqrt(b + c - (c - b)^2 / n) / n (the paired, McNemar-style variance).
    The gate fails when |delta| exceeds the limit by more than ``ACCURACY_Z`` standard errors: a real loss
    (a wrong layer, or int8 rounding that costs a point on 10,000 images) fails; a handful of flips on a
    few hundred samples, which cannot tell 0.3 points from 0, does not. Without the paired counts (an old
    report) the delta is compared as measured.
    """
    v = m.get("accuracy_delta")
    if v is None:
        return None
    n, lost, gained = m.get("samples", 0), m.get("accuracy_lost"), m.get("accuracy_gained")
    if lost is None or gained is None or n == 0:
        se = 0.0
    else:
        se = max(lost + gained - (gained - lost) ** 2 / n, 0.0) ** 0.5 / n
    excess = abs(v) - t.max_accuracy_delta
    ok = excess <= ACCURACY_Z * se
    note = f" by {excess / se:.1f} standard errors ({lost} lost, {gained} gained of {n})" if se > 0 else ""
    return Check("|accuracy delta| (points, paired)", 100 * abs(v), 100 * t.max_accuracy_delta, ok,
                 f"accuracy delta {v * 100:+.3f} points exceeds +/-{t.max_accuracy_delta * 100:.3f}{note}")


def _speedup(m: dict, t: Thresholds) -> Check:
    v = m["speedup"]
    return Check("speed-up vs PyTorch eager at batch 1", v, t.min_speedup, v >= t.min_speedup,
                 f"onnxruntime is {v:.2f}x PyTorch eager at batch 1 (p50), below the required {t.min_speedup:.2f}x")


_GATES = {"match": _match, "top1": _top1, "spikes": _spikes, "accuracy": _accuracy, "speedup": _speedup}
EXPORT_GATES = ("match", "top1", "spikes", "accuracy")  # every export, before it is written
CHECK_GATES = ("top1", "accuracy", "spikes", "speedup")  # `gee-deploy check` in CI


def checks(measured: dict, t: Thresholds, gates: tuple[str, ...]) -> list[Check]:
    """The :class:`Check` of each gate in ``gates`` (in that order) that ``measured`` has the numbers for."""
    found = (_GATES[g](measured, t) for g in gates)
    return [c for c in found if c is not None]
