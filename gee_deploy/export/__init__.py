"""Export stage: checkpoint -> T-unrolled ONNX graph (dense / factorised / auto), validated against PyTorch.

The graph contract (input ``input`` float32 [N, C, H, W] in [0, 1]; outputs ``logits`` [N, classes] and
``spike_counts`` [N, L]; streaming graphs' membrane inputs/outputs; the ``gee.*`` metadata) is
:mod:`gee_deploy.spec`'s :class:`~gee_deploy.spec.ModelSpec`: the writer builds it in its walk of the model and
stores it in the graph's ``metadata_props``, and beside artefacts that hold no metadata (TensorRT plans, Triton
repositories) as a JSON sidecar. One self-contained file (no external data), ``onnx.checker`` clean with
``full_check``, opset 18 by default.
"""
from __future__ import annotations

from .api import ExportReport, build_onnx, export_loaded, export_model
from .configs import FORMATS, VARIANTS, ValidationConfig
from .errors import ExportError, ExportValidationError, ShapeError, ToleranceError

__all__ = ["export_model", "export_loaded", "build_onnx", "ExportReport", "ValidationConfig", "VARIANTS",
           "FORMATS", "ExportError", "ExportValidationError", "ShapeError", "ToleranceError"]
