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

:func:`compare` returns a :class:`Parity` (read by attribute; :meth:`Parity.as_dict` is its form in JSON reports).
Each gate is a :class:`Check` (what was measured, the limit, ok, the one-line failure message); callers pick
the gates they enforce, so a table and the failure lines come from one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "accuracy_within_noise",
    "Thresholds",
    "Outputs",
    "Parity",
    "compare",
    "Check",
    "checks",
    "EXPORT_GATES",
    "CHECK_GATES",
    "INT8_PTQ_THRESHOLDS",
    "validation_thresholds",
]


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
INT8_PTQ_THRESHOLDS = Thresholds(
    atol=1e-4, min_match=0.0, min_top1_agreement=0.95, max_spike_delta=5e-3, max_accuracy_delta=3e-3
)


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


@dataclass(frozen=True, kw_only=True)
class Parity:
    """What :func:`compare` measured: ``other`` (deployed) against ``ref`` (the reference) on the same samples.

    Attributes:
        samples: how many.
        top1_agreement: fraction of samples with the reference's arg-max.
        max_logit_diff: largest |logit difference| over samples and classes.
        max_spike_count_diff: largest |spike count difference| over samples and spiking layers.
        match_fraction: fraction of samples whose logits are within ``atol`` and whose spike counts are equal.
        spikes_reference, spikes_deployed: total spike counts over all samples and layers.
        spike_count_delta: |spikes_deployed - spikes_reference| / spikes_reference.
        spike_layer_max_delta: the largest such relative difference of one layer.
        spikes_per_layer_deployed: the deployed model's total per spiking layer, [L].
        layer_names_match: both name their spike columns alike (columns are matched by position).
        accuracy_reference, accuracy_deployed, accuracy_delta (deployed - reference): fractions; None
            without labels.
        accuracy_lost, accuracy_gained: samples only the reference / only the deployed model classifies
            right (the paired counts behind the accuracy delta); None without labels.
    """

    samples: int
    top1_agreement: float
    max_logit_diff: float
    max_spike_count_diff: float
    match_fraction: float
    spikes_reference: float
    spikes_deployed: float
    spike_count_delta: float
    spike_layer_max_delta: float
    spikes_per_layer_deployed: tuple[float, ...]
    layer_names_match: bool
    accuracy_reference: float | None
    accuracy_deployed: float | None
    accuracy_delta: float | None
    accuracy_lost: int | None = None
    accuracy_gained: int | None = None

    def as_dict(self) -> dict:
        """The flat dict JSON reports hold (the paired counts only when labels were known)."""
        d = asdict(self)
        d["spikes_per_layer_deployed"] = list(self.spikes_per_layer_deployed)
        if self.accuracy_lost is None:
            del d["accuracy_lost"], d["accuracy_gained"]
        return d


def compare(ref: Outputs, other: Outputs, atol: float = Thresholds.atol) -> Parity:
    """Parity of ``other`` (deployed) with ``ref`` (the reference) on the same samples.

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
    lost = gained = None
    if ref.labels is not None and other.labels is not None:
        ref_right, right = ref.logits.argmax(1) == ref.labels, other.logits.argmax(1) == other.labels
        lost, gained = int((ref_right & ~right).sum()), int((right & ~ref_right).sum())
    return Parity(
        samples=int(len(ref.logits)),
        top1_agreement=float((ref.logits.argmax(1) == other.logits.argmax(1)).mean()),
        max_logit_diff=float(logit_diff.max()) if logit_diff.size else 0.0,
        max_spike_count_diff=float(np.abs(other.spikes - ref.spikes).max()) if ref.spikes.size else 0.0,
        match_fraction=float(((per_sample <= atol) & same_counts).mean()),
        spikes_reference=ref_total,
        spikes_deployed=total,
        spike_count_delta=abs(total - ref_total) / max(ref_total, 1.0),
        spike_layer_max_delta=float(layer_delta.max()) if len(layer_delta) else 0.0,
        spikes_per_layer_deployed=tuple(layer.tolist()),
        layer_names_match=tuple(ref.spiking_layers) == tuple(other.spiking_layers),
        accuracy_reference=acc_ref,
        accuracy_deployed=acc,
        accuracy_delta=None if acc is None or acc_ref is None else acc - acc_ref,
        accuracy_lost=lost,
        accuracy_gained=gained,
    )


@dataclass(frozen=True)
class Check:
    """One gate: ``what`` was measured as ``measured`` against ``limit``; ``message`` is its failure line."""

    what: str
    measured: float
    limit: float
    ok: bool
    message: str


def _match(m: Parity, t: Thresholds, speedup: float | None) -> Check:
    v = m.match_fraction
    return Check(
        f"samples matching (logits within atol {t.atol:g}, equal spike counts)",
        v,
        t.min_match,
        v >= t.min_match,
        f"samples matching {v:.4%} < {t.min_match:.4%} (logits within atol {t.atol:g}, equal spike counts)",
    )


def _top1(m: Parity, t: Thresholds, speedup: float | None) -> Check:
    v = m.top1_agreement
    return Check(
        "top-1 agreement",
        v,
        t.min_top1_agreement,
        v >= t.min_top1_agreement,
        f"top-1 agreement {v:.4%} < {t.min_top1_agreement:.4%}",
    )


def _spikes(m: Parity, t: Thresholds, speedup: float | None) -> Check:
    v = m.spike_count_delta
    return Check(
        "total spike count rel diff",
        v,
        t.max_spike_delta,
        v <= t.max_spike_delta,
        f"spike-count delta {v:.4%} > {t.max_spike_delta:.4%}",
    )


ACCURACY_Z = 1.645  # one-sided 95%


def _accuracy(m: Parity, t: Thresholds, speedup: float | None) -> Check | None:
    """|accuracy delta| against its limit, as a paired test on the discordant samples.

    With b samples only the reference classifies right and c only the deployed model does, out of n, the delta
    is (c - b) / n with standard error sqrt(b + c - (c - b)^2 / n) / n (the paired, McNemar-style variance).
    The gate fails when |delta| exceeds the limit by more than ``ACCURACY_Z`` standard errors: a real loss
    (a wrong layer, or int8 rounding that costs a point on 10,000 images) fails; a handful of flips on a
    few hundred samples, which cannot tell 0.3 points from 0, does not. No labels, no gate.
    """
    v = m.accuracy_delta
    if v is None:
        return None
    n, lost, gained = m.samples, m.accuracy_lost, m.accuracy_gained
    if lost is None or gained is None or n == 0:
        se = 0.0
    else:
        se = max(lost + gained - (gained - lost) ** 2 / n, 0.0) ** 0.5 / n
    excess = abs(v) - t.max_accuracy_delta
    ok = excess <= ACCURACY_Z * se
    note = f" by {excess / se:.1f} standard errors ({lost} lost, {gained} gained of {n})" if se > 0 else ""
    return Check(
        "|accuracy delta| (points, paired)",
        100 * abs(v),
        100 * t.max_accuracy_delta,
        ok,
        f"accuracy delta {v * 100:+.3f} points exceeds +/-{t.max_accuracy_delta * 100:.3f}{note}",
    )


def accuracy_within_noise(m: Parity, t: Thresholds) -> bool:
    """Whether ``m``'s |accuracy delta| is above ``t.max_accuracy_delta`` yet passes the paired gate (within
    ``ACCURACY_Z`` standard errors of the limit: too few samples to call it a loss); False without labels."""
    check = _accuracy(m, t, None)
    return check is not None and check.ok and check.measured > check.limit


def _speedup(m: Parity, t: Thresholds, speedup: float | None) -> Check | None:
    if speedup is None:
        return None
    v = speedup
    return Check(
        "speed-up vs PyTorch eager at batch 1",
        v,
        t.min_speedup,
        v >= t.min_speedup,
        f"onnxruntime is {v:.2f}x PyTorch eager at batch 1 (p50), below the required {t.min_speedup:.2f}x",
    )


_GATES = {"match": _match, "top1": _top1, "spikes": _spikes, "accuracy": _accuracy, "speedup": _speedup}
EXPORT_GATES = ("match", "top1", "spikes", "accuracy")  # every export, before it is written
CHECK_GATES = ("top1", "accuracy", "spikes", "speedup")  # `gee-deploy check` in CI


def checks(measured: Parity, t: Thresholds, gates: tuple[str, ...], speedup: float | None = None) -> list[Check]:
    """The :class:`Check` of each gate in ``gates`` (in that order) that has its numbers: the accuracy gate
    needs labels, the speed-up gate ``speedup`` (PyTorch eager p50 / deployed p50 at batch 1)."""
    found = (_GATES[g](measured, t, speedup) for g in gates)
    return [c for c in found if c is not None]
