"""Run a NIR graph of our own export with the spec-only NIR executor and compare it with the PyTorch model.

The executor (:class:`gee_deploy.nir.executor.NIRExecutor`: nirtorch's interpreter with node maps written from the
NIR primitives' definitions, forward Euler over one step ``dt``) knows nothing of our model code.

Validation (:func:`validate_nir`) feeds the raw image at every one of the T steps (direct encoding; the graph's
first node normalises it), averages the graph's output over the steps into logits, sums every LIF node's spikes
into spike counts, and runs the same checks as the ONNX validation (:mod:`gee_deploy.export.validate`): logits
per sample, top-1 agreement, total spikes, accuracy. The file also runs in snntorch's and SpikingJelly's own NIR
importers, whose top-1 agreement with the model is checked; every failed check is collected and reported
together.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import nir
import numpy as np
import torch
from torch import nn

from ..errors import ModelFileError
from ..export.configs import ValidationConfig
from ..export.errors import ExportError, ShapeError
from ..export.validate import ValidationReport, compare_outputs, reference_outputs
from ..parity import Check, Outputs
from ..spec import LOGITS, SPIKE_COUNTS, ModelSpec
from .executor import NIRExecutor, read_nir
from .writer import DT, NIR_METADATA

__all__ = [
    "IMPORTERS",
    "read_nir",
    "NIRExecutor",
    "importer_logits",
    "nir_inputs",
    "normalisation_node",
    "run_nir",
    "validate_nir",
]


def normalisation_node(graph: nir.NIRGraph, source: str) -> str | None:
    """The name of the node of ``graph`` that normalises the raw input (our export's
    :data:`~gee_deploy.nir.writer.NORMALISE`, named in ``nir.input_normalisation``), or None (a file written before
    the normalisation was a node, or not by gee-deploy); :class:`ModelFileError` when the key names no node."""
    value = (graph.metadata or {}).get(NIR_METADATA["normalisation"])
    if value is None:
        return None
    try:
        node = json.loads(value.decode() if isinstance(value, bytes) else str(value))["node"]
    except (ValueError, TypeError, KeyError) as e:
        raise ModelFileError(f"{source} has malformed NIR metadata {NIR_METADATA['normalisation']}: {e}") from None
    if node not in graph.nodes:
        raise ModelFileError(f"{source}: its normalisation node {node!r} is not in the graph")
    return node


def nir_inputs(graph: nir.NIRGraph, source: str) -> tuple[ModelSpec, float, torch.Tensor | None, torch.Tensor | None]:
    """What a reader needs beside the nodes, from the graph's metadata: the model spec (T, spiking layers), dt,
    and the input normalisation a reader must apply before the Input node (mean, std as [1, C, 1, 1]).

    Both layouts our export has written: a file whose graph normalises the raw input itself (node
    :data:`~gee_deploy.nir.writer.NORMALISE`, key ``nir.input_normalisation``) gives ``None, None``; a file written
    before that (keys ``nir.input_mean`` / ``nir.input_std``, its Input node takes normalised images) gives them.

    Raises:
        ModelFileError: no gee-deploy metadata, no dt, neither normalisation layout, or malformed values.
    """
    meta = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (graph.metadata or {}).items()}
    spec = ModelSpec.from_metadata(meta, source)
    in_graph = NIR_METADATA["normalisation"] in meta
    needed = ("dt",) if in_graph else ("dt", "mean", "std")
    missing = [NIR_METADATA[k] for k in needed if NIR_METADATA[k] not in meta]
    if missing:
        raise ModelFileError(
            f"{source} lacks the NIR keys {', '.join(missing)}; export it with `gee-deploy export --format nir`"
        )
    try:
        dt = float(meta[NIR_METADATA["dt"]])
        if in_graph:
            normalisation_node(graph, source)
            return spec, dt, None, None
        mean, std = (
            torch.tensor(json.loads(meta[NIR_METADATA[k]]), dtype=torch.float32).view(1, -1, 1, 1)
            for k in ("mean", "std")
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ModelFileError(f"{source} has malformed NIR metadata: {e}") from None
    return spec, dt, mean, std


def _normalised(x: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """``x`` as a file's Input node takes it: (x - mean) / std with :func:`nir_inputs`'s mean and std (both or
    neither given), or ``x`` itself."""
    return x if mean is None or std is None else (x - mean) / std


def run_nir(
    graph: nir.NIRGraph,
    images: torch.Tensor,
    batch_size: int,
    source: str = "NIR graph",
    threshold: float | None = None,
    labels: np.ndarray | None = None,
) -> Outputs:
    """Logits [S, classes] and spike counts [S, L] (the spec's spiking-layer order) of ``graph`` on ``images``
    [S, C, H, W] in [0, 1], reading T, dt and (files that hold no normalisation node) the normalisation from the
    graph's metadata.

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
        xb = x[i : i + batch_size]
        y, c = run.run(_normalised(xb, mean, std), spec.timesteps)
        logits.append(y.numpy())
        counts.append(torch.stack([c[name] for name in spec.spiking_layers], 1).numpy())
    return Outputs(np.concatenate(logits).astype(np.float32), np.concatenate(counts), labels, spec.spiking_layers)


IMPORTERS = ("snntorch", "spikingjelly")  # the other frameworks' NIR importers validation runs our files in


def _import_into(framework: str, graph: nir.NIRGraph) -> nn.Module:
    """``graph`` loaded by ``framework``'s own NIR importer: a module ``(x, state) -> (y, state)`` per step.

    snntorch 1.0 (``snntorch.import_nir.import_from_nir``) hard-codes dt = 1e-4 s and folds ``r dt / tau`` into
    its thresholds (printing a warning per LIF, silenced here); SpikingJelly 2.0
    (``spikingjelly.activation_based.nir_exchange.import_from_nir``) is given dt = :data:`DT` (its default too).
    Raises ImportError when the framework is not installed.
    """
    if framework == "snntorch":
        from snntorch.import_nir import import_from_nir

        with contextlib.redirect_stdout(io.StringIO()):
            return import_from_nir(copy.deepcopy(graph))
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    return import_from_nir(copy.deepcopy(graph), dt=DT)


@torch.no_grad()
def importer_logits(
    framework: str, graph: nir.NIRGraph, images: torch.Tensor, timesteps: int, batch_size: int
) -> np.ndarray:
    """Logits [S, classes] of ``graph`` run by ``framework``'s own NIR importer (:data:`IMPORTERS`) on ``images``
    [S, C, H, W] as the file's Input node takes them, fed at each of ``timesteps`` steps; the output node's value
    averaged over the steps. Raises ImportError when the framework is not installed."""
    net = _import_into(framework, graph).eval()
    logits = []
    for i in range(0, len(images), batch_size):
        if framework == "snntorch":  # its neurons keep their membrane between calls even when given no state
            from snntorch import utils

            utils.reset(net)
        state, total = None, torch.zeros(())  # a tensor: 0 + y is y
        for _ in range(timesteps):
            y, state = net(images[i : i + batch_size], state)
            total = total + y
        logits.append((total / timesteps).float().numpy())
    return np.concatenate(logits)


def _check_importers(
    report: ValidationReport,
    graph: nir.NIRGraph,
    images: torch.Tensor,
    ref: Outputs,
    spec: ModelSpec,
    cfg: ValidationConfig,
) -> None:
    """Top-1 agreement of each installed :data:`IMPORTERS` framework's run of ``graph`` with the model, gated at
    the validation's top-1 limit; a framework that is not installed is a note, one that cannot load or run the
    file a failed check."""
    limit = cfg.thresholds.min_top1_agreement
    for framework in IMPORTERS:
        what = f"top-1 agreement in {framework}'s NIR importer"
        try:
            logits = importer_logits(framework, graph, images, spec.timesteps, cfg.batch_size)
        except ImportError:
            report.notes.append(f"{framework} is not installed: its NIR importer was not run on the file")
            continue
        except Exception as e:  # noqa: BLE001 (its own code: whatever it raises, the file does not run there)
            report.require(
                f"{framework}'s NIR importer runs the file",
                False,
                ExportError(
                    f"{framework}'s NIR importer cannot run the file: {type(e).__name__}: "
                    f"{(str(e).splitlines() or [''])[0][:200]}"
                ),
            )
            continue
        agree = float((logits.argmax(1) == ref.logits.argmax(1)).mean()) if len(logits) == len(ref.logits) else 0.0
        report.check(Check(what, agree, limit, agree >= limit, f"{what} {agree:.4%} < {limit:.4%}"))
        report.notes.append(
            f"{framework}'s own NIR importer, fed the same images for T = {spec.timesteps} steps: "
            f"top-1 agreement with the model {agree:.4f}"
        )


def validate_nir(
    model: nn.Module,
    graph: nir.NIRGraph,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    cfg: ValidationConfig,
    raise_on_failure: bool = True,
) -> ValidationReport:
    """Run ``graph`` with :class:`NIRExecutor` and with snntorch's and SpikingJelly's own NIR importers
    (:data:`IMPORTERS`) on ``images`` [S, C, H, W] in [0, 1] and compare with ``model``.

    Everything the runs need besides the nodes comes from the graph's own metadata (:func:`nir_inputs`), so this
    checks the file a user gets, not the writer's memory. The executor's logits, spikes and accuracy get the
    export's checks; each importer's top-1 agreement with the model gets the top-1 limit (those frameworks
    discretise the LIF their own way: docs/nir.md). A file that normalises in its graph gets the raw images; one
    written before that (:func:`nir_inputs`) the normalised ones it takes.

    Raises:
        ExportValidationError: listing every failed check (when ``raise_on_failure``).
        ModelFileError: the graph lacks the metadata or LIF nodes it needs.
    """
    report = ValidationReport(samples=len(images))
    y = None if labels is None else labels.numpy()
    got = run_nir(graph, images, cfg.batch_size, labels=y)
    x = images.float().contiguous()
    ref = reference_outputs(model, x, cfg.batch_size, y)
    for what, g, r in ((LOGITS, got.logits, ref.logits), (SPIKE_COUNTS, got.spikes, ref.spikes)):
        report.require(
            f"NIR {what} are {list(r.shape)}",
            g.shape == r.shape,
            ShapeError(f"NIR {what} are {list(g.shape)}, expected {list(r.shape)}"),
        )
    if report.ok:
        compare_outputs(report, ref, got, cfg.thresholds)
        spec, _, mean, std = nir_inputs(graph, "NIR graph")
        _check_importers(report, graph, _normalised(x, mean, std), ref, spec, cfg)
    if raise_on_failure:
        report.raise_if_failed("NIR export")
    return report
