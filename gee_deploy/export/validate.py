"""Validate an exported graph against the PyTorch model it came from (optimum-style).

Checks, in order: output names, dtypes and shapes, then values with :mod:`gee_deploy.parity` (the metrics and
thresholds serving's ``check`` uses too): max abs diff per output, samples matching, top-1 agreement, total
spike count and, when labels are known, accuracy. Every failed check is collected; one
:class:`ExportValidationError` lists them all as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..kinds import StepInput
from ..neurons import SpikeRecorder
from ..ort_session import create_session
from ..parity import EXPORT_GATES, Check, Outputs, Parity, Thresholds, checks, compare
from ..spec import INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS, ModelSpec
from .configs import ValidationConfig
from .errors import ExportError, ExportValidationError, ShapeError, ToleranceError

__all__ = [
    "ValidationReport",
    "compare_outputs",
    "reference_outputs",
    "run_graph",
    "validate_export",
    "validate_streaming",
]


@dataclass
class ValidationReport:
    """Parity of one export; ``rows`` = (check, measured, limit, ok), ``stats`` = :func:`parity.compare`'s result
    (None until the value checks ran), ``notes``: checks that could not run here, and why."""

    samples: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    rows: list[tuple[str, str, str, bool]] = field(default_factory=list)
    failures: list[ExportError] = field(default_factory=list)
    stats: Parity | None = None
    notes: list[str] = field(default_factory=list)  # what was not checked, and why

    @property
    def ok(self) -> bool:
        return not self.failures

    def check(self, c: Check) -> None:
        self.rows.append((c.what, f"{c.measured:.6g}", f"{c.limit:.6g}", c.ok))
        if not c.ok:
            self.failures.append(ToleranceError(c.message))

    def require(self, what: str, ok: bool, error: ExportError) -> None:
        """A pass/fail check (names, shapes) whose failure is ``error``."""
        self.rows.append((what, "yes" if ok else "no", "yes", ok))
        if not ok:
            self.failures.append(error)

    def table(self) -> str:
        width = max(len(r[0]) for r in self.rows) if self.rows else 10
        lines = [f"{'check':<{width}}  {'measured':>12}  {'limit':>12}  ok"]
        lines += [f"{w:<{width}}  {m:>12}  {lim:>12}  {'yes' if ok else 'NO'}" for w, m, lim, ok in self.rows]
        return "\n".join(lines)

    def raise_if_failed(self, what: str) -> None:
        if self.failures:
            raise ExportValidationError(
                f"{what} failed {len(self.failures)} validation check(s): "
                + "; ".join(str(f) for f in self.failures)
                + "\n"
                + self.table(),
                self.failures,
            )


@torch.no_grad()
def reference_outputs(
    model: nn.Module, images: torch.Tensor, batch_size: int, labels: np.ndarray | None = None
) -> Outputs:
    """PyTorch logits [S, classes] and spike counts [S, L] (LIF call order, as the graph's columns)."""
    logits, counts = [], []
    for i in range(0, len(images), batch_size):
        with SpikeRecorder(model) as rec:
            logits.append(model(images[i : i + batch_size]).float().numpy())
        counts.append(rec.stacked().numpy())
    return Outputs(np.concatenate(logits), np.concatenate(counts), labels, tuple(rec.names))


def run_graph(session, images: np.ndarray, batch_size: int) -> tuple[list[str], list[np.ndarray]]:
    """Output names and per-output arrays of ``session`` over ``images`` in batches."""
    names = [o.name for o in session.get_outputs()]
    chunks = [session.run(None, {INPUT_NAME: images[i : i + batch_size]}) for i in range(0, len(images), batch_size)]
    return names, [np.concatenate([c[j] for c in chunks]) for j in range(len(names))]


def compare_outputs(report: ValidationReport, ref: Outputs, got: Outputs, t: Thresholds) -> None:
    """The value checks shared by PyTorch-vs-graph and streaming-vs-unrolled validation."""
    stats = compare(ref, got, t.atol)
    report.max_abs_diff = {LOGITS: stats.max_logit_diff, SPIKE_COUNTS: stats.max_spike_count_diff}
    for name, diff in report.max_abs_diff.items():
        report.rows.append((f"max abs diff {name}", f"{diff:.3g}", "-", True))
    for c in checks(stats, t, EXPORT_GATES):
        report.check(c)
    report.stats = stats


def validate_export(
    model: nn.Module,
    graph,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    cfg: ValidationConfig,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Compare the ONNX graph ``graph`` (bytes or path) with eval-mode ``model`` on ``images`` [S, C, H, W] in [0, 1].

    Raises:
        ExportValidationError: a check failed (with ``raise_on_failure``); the message lists every failure.
    """
    report = ValidationReport(samples=len(images))
    x = images.float().contiguous()
    names, arrays = run_graph(create_session(graph), x.numpy(), cfg.batch_size)
    report.require(
        "output names are " + ", ".join(OUTPUT_NAMES),
        list(names) == list(OUTPUT_NAMES),
        ShapeError(f"output names {names}, expected {list(OUTPUT_NAMES)}"),
    )
    if report.ok:
        got = dict(zip(names, arrays))
        ref = reference_outputs(model, x, cfg.batch_size, None if labels is None else labels.numpy())
        for name, want in ((LOGITS, ref.logits), (SPIKE_COUNTS, ref.spikes)):
            report.require(
                f"{name} is float32 {list(want.shape)}",
                got[name].shape == want.shape and got[name].dtype == np.float32,
                ShapeError(f"{name} is {got[name].dtype} {list(got[name].shape)}, expected float32 {list(want.shape)}"),
            )
        if report.ok:
            compare_outputs(
                report, ref, Outputs(got[LOGITS], got[SPIKE_COUNTS], ref.labels, ref.spiking_layers), cfg.thresholds
            )
    if raise_on_failure:
        report.raise_if_failed("export")
    return report


def validate_streaming(
    stream, unrolled, images, spec: ModelSpec, cfg: ValidationConfig, raise_on_failure: bool = True
) -> ValidationReport:
    """T calls of the streaming graph ``stream`` (zero initial membranes; ``spec``: its spec, with T and the
    membrane inputs) against one call of the unrolled graph.

    ``images`` (tensor or array) is the unrolled graph's input: [S, C, H, W], fed at every step, or
    [S, T, ...] when ``spec.step_input`` is ``frames``, step t's call taking ``images[:, t]``.
    """
    timesteps, state_inputs = spec.timesteps, spec.state_inputs
    frames = spec.step_input == StepInput.FRAMES
    report = ValidationReport(samples=len(images))
    x = np.ascontiguousarray(images.float().numpy() if isinstance(images, torch.Tensor) else images, np.float32)
    _, (ref_logits, ref_counts) = run_graph(create_session(unrolled), x, cfg.batch_size)
    session = create_session(stream)
    inputs = {i.name: i for i in session.get_inputs()}
    logits, counts = [], []
    for i in range(0, len(x), cfg.batch_size):
        batch = x[i : i + cfg.batch_size]
        states = {name: np.zeros([len(batch)] + list(inputs[name].shape[1:]), np.float32) for name in state_inputs}
        sum_logits, sum_counts = 0.0, 0.0
        for t in range(timesteps):
            step = np.ascontiguousarray(batch[:, t]) if frames else batch
            out = session.run(None, {INPUT_NAME: step, **states})
            sum_logits, sum_counts = sum_logits + out[0], sum_counts + out[1]
            states = dict(zip(state_inputs, out[2:]))
        logits.append(sum_logits / timesteps)
        counts.append(sum_counts)
    got = Outputs(np.concatenate(logits).astype(np.float32), np.concatenate(counts))
    compare_outputs(report, Outputs(ref_logits, ref_counts), got, cfg.thresholds)
    if raise_on_failure:
        report.raise_if_failed("streaming export")
    return report
