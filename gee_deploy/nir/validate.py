"""Run a NIR graph of our own export with the spec-only NIR executor and compare it with the PyTorch model.

The executor (:class:`gee_deploy.nir.executor.NIRExecutor`: nirtorch's interpreter with node maps written from the
NIR primitives' definitions, forward Euler over one step ``dt``) knows nothing of our model code.

Validation (:func:`validate_nir`) feeds the normalised image at every one of the T steps (direct encoding),
averages the graph's output over the steps into logits, sums every LIF node's spikes into spike counts, and runs
the same checks as the ONNX validation (:mod:`.validate`): logits per sample, top-1 agreement, total spikes,
accuracy; every failed check is collected and reported together.
"""
from __future__ import annotations

import json

import nir
import numpy as np
import torch
from torch import nn

from ..errors import ModelFileError
from .executor import NIRExecutor, read_nir
from ..parity import Outputs
from ..spec import LOGITS, SPIKE_COUNTS, ModelSpec
from ..export.configs import ValidationConfig
from ..export.errors import ShapeError
from .writer import NIR_METADATA
from ..export.validate import ValidationReport, compare_outputs, reference_outputs

__all__ = ["read_nir", "NIRExecutor", "nir_inputs", "run_nir", "validate_nir"]


def nir_inputs(graph: nir.NIRGraph, source: str) -> tuple[ModelSpec, float, torch.Tensor, torch.Tensor]:
    """What a reader needs beside the nodes, from the graph's metadata: the model spec (T, spiking layers),
    dt, and the input normalisation (mean, std as [1, C, 1, 1]); :class:`ModelFileError` when absent."""
    meta = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (graph.metadata or {}).items()}
    spec = ModelSpec.from_metadata(meta, source)
    missing = [NIR_METADATA[k] for k in ("dt", "mean", "std") if NIR_METADATA[k] not in meta]
    if missing:
        raise ModelFileError(f"{source} lacks the NIR keys {', '.join(missing)}; export it with "
                             "`gee-deploy export --format nir`")
    try:
        dt = float(meta[NIR_METADATA["dt"]])
        mean, std = (torch.tensor(json.loads(meta[NIR_METADATA[k]]), dtype=torch.float32).view(1, -1, 1, 1)
                     for k in ("mean", "std"))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{source} has malformed NIR metadata: {e}") from None
    return spec, dt, mean, std


def run_nir(graph: nir.NIRGraph, images: torch.Tensor, batch_size: int, source: str = "NIR graph",
            threshold: float | None = None, labels: np.ndarray | None = None) -> Outputs:
    """Logits [S, classes] and spike counts [S, L] (the spec's spiking-layer order) of ``graph`` on ``images``
    [S, C, H, W] in [0, 1], reading T, dt and the normalisation from the graph's metadata.

    ``threshold``: replace every LIF's v_threshold (to measure what the threshold convention changes).
    """
    spec, dt, mean, std = nir_inputs(graph, source)
    run = NIRExecutor(graph, dt)
    missing = [name for name in spec.spiking_layers if name not in run.lif_modules]
    if missing:
        raise ModelFileError(f"{source} lacks the LIF node(s) {', '.join(missing)} its metadata lists")
    if threshold is not None:
        for m in run.lif_modules.values():
            m.v_threshold.fill_(threshold)
    x = images.float().contiguous()
    logits, counts = [], []
    for i in range(0, len(x), batch_size):
        y, c = run.run((x[i:i + batch_size] - mean) / std, spec.timesteps)
        logits.append(y.numpy())
        counts.append(torch.stack([c[name] for name in spec.spiking_layers], 1).numpy())
    return Outputs(np.concatenate(logits).astype(np.float32), np.concatenate(counts), labels, spec.spiking_layers)


def validate_nir(model: nn.Module, graph: nir.NIRGraph, images: torch.Tensor, labels: torch.Tensor | None,
                 cfg: ValidationConfig, raise_on_failure: bool = True) -> ValidationReport:
    """Run ``graph`` with :class:`NIRExecutor` on ``images`` [S, C, H, W] in [0, 1] and compare with ``model``.

    Everything the run needs besides the nodes comes from the graph's own metadata (:func:`nir_inputs`), so this
    checks the file a user gets, not the writer's memory. The graph's input is the normalised image (NIR has no
    constant node, so the normalisation cannot fold exactly into the zero-padded stem conv; docs/export.md).

    Raises:
        ExportValidationError: listing every failed check (when ``raise_on_failure``).
        ModelFileError: the graph lacks the metadata or LIF nodes it needs.
    """
    report = ValidationReport(samples=len(images))
    y = None if labels is None else labels.numpy()
    got = run_nir(graph, images, cfg.batch_size, labels=y)
    ref = reference_outputs(model, images.float().contiguous(), cfg.batch_size, y)
    for what, g, r in ((LOGITS, got.logits, ref.logits), (SPIKE_COUNTS, got.spikes, ref.spikes)):
        report.require(f"NIR {what} are {list(r.shape)}", g.shape == r.shape,
                       ShapeError(f"NIR {what} are {list(g.shape)}, expected {list(r.shape)}"))
    if report.ok:
        compare_outputs(report, ref, got, cfg.thresholds)
    if raise_on_failure:
        report.raise_if_failed("NIR export")
    return report
