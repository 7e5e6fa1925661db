"""Validate an exported graph against the PyTorch model it came from (optimum-style).

Checks, in order: output names, dtypes and shapes, then values: max abs diff per output, the fraction of
samples whose logits match within ``atol`` and whose spike counts are identical, top-1 agreement, the
relative difference of the total spike count, and the accuracy difference when labels are known. Every
failed check is collected; one :class:`ExportValidationError` lists them all as a table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..neurons import SpikeRecorder
from .configs import INPUT_NAME, OUTPUT_NAMES, ValidationConfig
from .errors import ExportError, ExportValidationError, ShapeError, ToleranceError

__all__ = ["ValidationReport", "reference_outputs", "run_onnx", "validate_export", "validate_streaming",
           "onnx_session"]


@dataclass
class ValidationReport:
    """Parity of one export; ``rows`` = (check, measured, limit, ok)."""

    samples: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    rows: list[tuple[str, str, str, bool]] = field(default_factory=list)
    failures: list[ExportError] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def check(self, what: str, measured: float, limit: float, ok: bool, fmt: str = ".6g",
              error: type[ExportError] = ToleranceError) -> None:
        self.rows.append((what, format(measured, fmt), format(limit, fmt), ok))
        if not ok:
            self.failures.append(error(f"{what}: {measured:{fmt}} (limit {limit:{fmt}})"))

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
                + "; ".join(str(f) for f in self.failures) + "\n" + self.table(), self.failures)


def onnx_session(model_bytes_or_path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    src = str(model_bytes_or_path) if not isinstance(model_bytes_or_path, bytes) else model_bytes_or_path
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def reference_outputs(model: nn.Module, images: torch.Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """PyTorch logits [S, classes] and spike counts [S, L] (LIF call order, as the graph's columns)."""
    logits, counts = [], []
    for i in range(0, len(images), batch_size):
        with SpikeRecorder(model) as rec:
            logits.append(model(images[i:i + batch_size]).float().numpy())
        counts.append(rec.stacked().float().numpy())
    return {OUTPUT_NAMES[0]: np.concatenate(logits), OUTPUT_NAMES[1]: np.concatenate(counts)}


def run_onnx(session, images: np.ndarray, batch_size: int) -> tuple[list[str], list[np.ndarray]]:
    """Output names and per-output arrays of ``session`` over ``images`` in batches."""
    names = [o.name for o in session.get_outputs()]
    chunks = [session.run(None, {INPUT_NAME: images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
    return names, [np.concatenate([c[j] for c in chunks]) for j in range(len(names))]


def _compare(report: ValidationReport, ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
             cfg: ValidationConfig, labels: np.ndarray | None) -> None:
    """The value checks shared by PyTorch-vs-graph and streaming-vs-unrolled validation."""
    logits_name, counts_name = OUTPUT_NAMES
    for name in OUTPUT_NAMES:
        report.max_abs_diff[name] = float(np.abs(got[name] - ref[name]).max()) if ref[name].size else 0.0
    report.rows.append((f"max abs diff {logits_name}", f"{report.max_abs_diff[logits_name]:.3g}", "-", True))
    report.rows.append((f"max abs diff {counts_name}", f"{report.max_abs_diff[counts_name]:.3g}", "-", True))
    per_sample = np.abs(got[logits_name] - ref[logits_name]).max(axis=1)
    same_counts = (got[counts_name] == ref[counts_name]).all(axis=1)
    match = float(((per_sample <= cfg.atol) & same_counts).mean())
    report.check(f"samples matching (logits within atol {cfg.atol:g}, equal spike counts)", match,
                 cfg.min_match, match >= cfg.min_match, ".4f")
    top1 = float((got[logits_name].argmax(1) == ref[logits_name].argmax(1)).mean())
    report.check("top-1 agreement", top1, cfg.min_top1_agreement, top1 >= cfg.min_top1_agreement, ".4f")
    total_ref, total_got = float(ref[counts_name].sum()), float(got[counts_name].sum())
    rel = abs(total_got - total_ref) / max(total_ref, 1.0)
    report.check("total spike count rel diff", rel, cfg.max_spike_rel_diff, rel <= cfg.max_spike_rel_diff, ".3g")
    report.stats.update(top1_agreement=top1, match_fraction=match, spikes_reference=total_ref,
                        spikes_export=total_got, spike_rel_diff=rel,
                        spikes_per_layer_export=got[counts_name].sum(0).tolist())
    if labels is not None:
        acc_ref = float((ref[logits_name].argmax(1) == labels).mean())
        acc_got = float((got[logits_name].argmax(1) == labels).mean())
        delta = abs(acc_got - acc_ref)
        report.check("accuracy delta", delta, cfg.max_accuracy_delta, delta <= cfg.max_accuracy_delta, ".4f")
        report.stats.update(accuracy_reference=acc_ref, accuracy_export=acc_got)


def validate_export(model: nn.Module, onnx_path, images: torch.Tensor, labels: torch.Tensor | None,
                    cfg: ValidationConfig, raise_on_failure: bool = True) -> ValidationReport:
    """Compare the ONNX graph at ``onnx_path`` with eval-mode ``model`` on ``images`` [S, C, H, W] in [0, 1]."""
    report = ValidationReport(samples=len(images))
    session = onnx_session(onnx_path)
    x = images.float().contiguous()
    names, arrays = run_onnx(session, x.numpy(), cfg.batch_size)
    report.require("output names are " + ", ".join(OUTPUT_NAMES), list(names) == list(OUTPUT_NAMES),
                   ShapeError(f"output names {names}, expected {list(OUTPUT_NAMES)}"))
    if not report.ok:
        if raise_on_failure:
            report.raise_if_failed("export")
        return report
    got = dict(zip(names, arrays))
    ref = reference_outputs(model, x, cfg.batch_size)
    for name in OUTPUT_NAMES:
        report.require(f"{name} is float32 {list(ref[name].shape)}",
                       got[name].shape == ref[name].shape and got[name].dtype == np.float32,
                       ShapeError(f"{name} is {got[name].dtype} {list(got[name].shape)}, expected float32 "
                                  f"{list(ref[name].shape)}"))
    if report.ok:
        _compare(report, ref, got, cfg, None if labels is None else labels.numpy())
    if raise_on_failure:
        report.raise_if_failed("export")
    return report


def validate_streaming(stream_path, unrolled_path, images: torch.Tensor, timesteps: int, state_inputs: list[str],
                       cfg: ValidationConfig, raise_on_failure: bool = True) -> ValidationReport:
    """T calls of the streaming graph (zero initial membranes) against one call of the unrolled graph."""
    report = ValidationReport(samples=len(images))
    x = images.float().contiguous().numpy()
    _, (ref_logits, ref_counts) = run_onnx(onnx_session(unrolled_path), x, cfg.batch_size)
    stream = onnx_session(stream_path)
    inputs = {i.name: i for i in stream.get_inputs()}
    logits, counts = [], []
    for i in range(0, len(x), cfg.batch_size):
        batch = x[i:i + cfg.batch_size]
        states = {name: np.zeros([len(batch)] + list(inputs[name].shape[1:]), np.float32) for name in state_inputs}
        sum_logits, sum_counts = 0.0, 0.0
        for _ in range(timesteps):
            out = stream.run(None, {INPUT_NAME: batch, **states})
            sum_logits, sum_counts = sum_logits + out[0], sum_counts + out[1]
            states = dict(zip(state_inputs, out[2:]))
        logits.append(sum_logits / timesteps)
        counts.append(sum_counts)
    ref = {OUTPUT_NAMES[0]: ref_logits, OUTPUT_NAMES[1]: ref_counts}
    got = {OUTPUT_NAMES[0]: np.concatenate(logits).astype(np.float32), OUTPUT_NAMES[1]: np.concatenate(counts)}
    _compare(report, ref, got, cfg, None)
    if raise_on_failure:
        report.raise_if_failed("streaming export")
    return report
