"""``export_nir``: a loaded model -> a validated NIR file of its folded dense network (``--format nir``).

The graph is written by :func:`.writer.write_nir`, and before the file is kept it is read back and run by the
spec-only NIR executor against the PyTorch model (:func:`.validate.validate_nir`). What to do is one checked
:class:`~gee_deploy.export.options.ExportOptions` (its checks refused what NIR cannot hold: int8 layers, genetic
storage, another variant, streaming, an opset); :func:`gee_deploy.formats.export_model` dispatches here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nir
import torch

from ..checkpoint import model_origin
from ..errors import UnsupportedModuleError
from ..export.api import ExportReport, note_replaced, validation_dict
from ..export.errors import ExportError
from ..export.options import ExportOptions, is_genetic, validation_for
from ..io import atomic_path
from ..kinds import ExportVariant, Storage
from ..zoo.base import SpikingNet
from .validate import read_nir, validate_nir
from .writer import write_nir

__all__ = ["export_nir"]


def export_nir(
    model: SpikingNet,
    out: str | os.PathLike,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    options: ExportOptions,
    checkpoint_sha256: str = "",
) -> ExportReport:
    """Write eval-mode ``model`` as the NIR file ``out``, validated on ``images`` [S, C, H, W] in [0, 1] (and
    ``labels`` [S], for accuracy) by the NIR executor before it is kept.

    Raises:
        ExportError: no images; ``out`` is a directory.
        UnsupportedModuleError: a module with no NIR primitive (max pooling of spikes), or a quantised stem.
        ExportValidationError: a check failed (every failure listed; nothing written).
    """
    start = time.perf_counter()
    out = Path(out)
    cfg = validation_for(model, options)
    if images is None or len(images) == 0:
        raise ExportError("validation needs at least one image")
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; {options.format.name} writes a file")
    if getattr(model, "input_codes", None) is not None:
        raise UnsupportedModuleError(
            "NIR has no rounding primitive for the 8-bit input codes of an int8 checkpoint's stem (gee-deploy "
            "quantize); write NIR from the fp32 checkpoint it was fine-tuned from"
        )
    class_names, dataset = model_origin(model)
    graph, spec = write_nir(model.eval(), class_names=class_names, dataset=dataset, checkpoint_sha256=checkpoint_sha256)
    report = ExportReport(
        str(out),
        options.format.name,
        ExportVariant.DENSE,
        0,
        False,
        Storage.FOLDED,
        layers=list(spec.layers),
        macs_per_sample=spec.macs_per_sample,
        dense_macs_per_sample=spec.dense_macs_per_sample,
    )
    note_replaced(out, report)
    with atomic_path(out) as tmp:
        nir.write(tmp, graph)
        val = validate_nir(model, read_nir(tmp), images, labels, cfg)  # the graph just written holds its metadata
    report.validation = validation_dict(val)
    report.notes += val.notes
    report.bytes = out.stat().st_size
    report.seconds = time.perf_counter() - start
    if is_genetic(model):
        report.notes.append("NIR has no constant computation: the file holds the folded weights")
    return report
