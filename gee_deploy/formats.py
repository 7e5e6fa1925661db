"""The entry point of an export: checkpoint -> validated ONNX file, Triton repository, TensorRT plan or NIR graph.

Each output format names the stage function that exports a loaded model to it (:data:`EXPORTERS`): the formats
holding an ONNX graph are the export stage's (:func:`gee_deploy.export.api.export_onnx`, which hands the graph to
the format's file writer), NIR is the nir stage's (:func:`gee_deploy.nir.export.export_nir`). This module sits
above both stages, so neither imports the other for it; the CLI (``gee-deploy export``) and the Python API
(:func:`export_model`, :func:`export_loaded`) come through here with one checked
:class:`~gee_deploy.export.options.ExportOptions` (docs/design.md, "Options objects").
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from .checkpoint import file_sha256, load_model
from .export.api import ExportReport, export_onnx, validation_data
from .export.errors import ExportError
from .export.options import ExportOptions, export_options, validation_for
from .kinds import ExportFormat
from .nir.export import export_nir

__all__ = ["EXPORTERS", "export_model", "export_loaded"]

# (model, out, images [S, C, H, W], labels [S] or None, options, checkpoint sha256) -> the report of the
# validated, written export
EXPORTERS: dict[ExportFormat, Callable[..., ExportReport]] = {
    ExportFormat.ONNX: export_onnx,
    ExportFormat.TRITON: export_onnx,
    ExportFormat.TENSORRT: export_onnx,
    ExportFormat.NIR: export_nir,
}


def _options(options: ExportOptions | None, settings: dict) -> ExportOptions:
    if options is not None and settings:
        raise TypeError(f"pass either options or keywords, not both (got {', '.join(settings)})")
    return options if options is not None else export_options(**settings)


def export_model(
    checkpoint: str | os.PathLike, out: str | os.PathLike, options: ExportOptions | None = None, **settings
) -> ExportReport:
    """Export ``checkpoint`` to ``out`` and validate it on the test split of the checkpoint's dataset.

    Args:
        checkpoint: a gee-deploy checkpoint (``best.pt``).
        out: the .onnx file, the Triton repository directory, the TensorRT .plan file or the .nir file.
        options: the checked options (:func:`~gee_deploy.export.options.export_options`), or None to build them
            from ``settings``: ``variant`` (dense, factorised, auto, int8), ``fmt`` (onnx, triton, tensorrt,
            nir; default onnx), ``opset``, ``storage``, ``streaming``, ``atol``, ``samples``, ``data_dir``,
            ``profile``, ``max_batch_size``, ``fp16``, ``allow_int8`` (:class:`ExportOptions` says what each is).

    Validation limits: :func:`~gee_deploy.export.options.validation_for` (fp32's, or the post-training int8 ones
    when int8 layers meet a checkpoint not fine-tuned for them), ``atol`` overriding theirs.

    Raises:
        UnknownOptionError, ExportError: bad options (before the checkpoint is read) or a model the format
            cannot hold; CheckpointError: an unreadable checkpoint; ExportValidationError: a check failed
            (nothing written).
    """
    options = _options(options, settings)
    model = load_model(checkpoint)
    cfg = validation_for(model, options)
    dataset = model.checkpoint.dataset_name
    if not dataset:
        raise ExportError(f"{checkpoint} names no dataset; cannot validate the export")
    images, labels = validation_data(dataset, cfg.samples, options.data_dir)
    report = EXPORTERS[options.format.name](model, out, images, labels, options, file_sha256(checkpoint))
    if options.samples is not None and len(images) < options.samples:
        report.notes.append(
            f"--samples {options.samples}: the {dataset} test split holds {len(images)} images; validated on all"
        )
    return report


def export_loaded(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    options: ExportOptions | None = None,
    **settings,
) -> ExportReport:
    """Export an already loaded eval-mode model to ``out``; validate on ``images`` [S, C, H, W] in [0, 1] (and
    ``labels`` [S]) before anything is kept. ``options`` or ``settings``: as for :func:`export_model`, with
    ``validation`` (a :class:`~gee_deploy.export.configs.ValidationConfig`) besides ``atol`` and ``samples``."""
    options = _options(options, settings)
    return EXPORTERS[options.format.name](model, out, images, labels, options, "")
