"""Export stage: checkpoint -> T-unrolled ONNX graph (dense / factorised / auto), validated against PyTorch.

The graph contract (input ``input`` float32 [N, C, H, W] in [0, 1]; outputs ``logits`` [N, classes] and
``spike_counts`` [N, L]; streaming graphs' membrane inputs/outputs; the ``gee.*`` metadata) is
:mod:`gee_deploy.spec`'s :class:`~gee_deploy.spec.ModelSpec`: the writer builds it in its walk of the model and
stores it in the graph's ``metadata_props``, and beside artefacts that hold no metadata (TensorRT plans, Triton
repositories) as a JSON sidecar. One self-contained file (no external data), ``onnx.checker`` clean with
``full_check``, opset 18 by default.

What an export does is one :class:`~gee_deploy.export.options.ExportOptions`, checked where it is built; the entry
point that loads a checkpoint and dispatches on the format (NIR, written by :mod:`gee_deploy.nir`, included) is
:func:`gee_deploy.formats.export_model`.
"""

from __future__ import annotations

from .api import ExportReport, build_onnx, export_onnx
from .configs import FORMATS, VARIANTS, ValidationConfig
from .errors import ExportError, ExportValidationError, ShapeError, ToleranceError
from .options import ExportOptions, export_options

__all__ = [
    "export_onnx",
    "build_onnx",
    "ExportReport",
    "ExportOptions",
    "export_options",
    "ValidationConfig",
    "VARIANTS",
    "FORMATS",
    "ExportError",
    "ExportValidationError",
    "ShapeError",
    "ToleranceError",
]
