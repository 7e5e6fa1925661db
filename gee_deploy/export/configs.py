"""What varies per export, declared as data and looked up by name (variants, formats, tolerances)."""
from __future__ import annotations

from dataclasses import dataclass

from ..parity import Thresholds
from .errors import UnknownOptionError

__all__ = ["Variant", "Format", "ValidationConfig", "VARIANTS", "FORMATS", "MIN_OPSET", "DEFAULT_OPSET", "lookup"]

MIN_OPSET = 18  # Split(num_outputs) and ReduceMean with axes as an input
DEFAULT_OPSET = 18  # the newest opset TensorRT 10's ONNX parser and onnxruntime both cover fully


@dataclass(frozen=True)
class Variant:
    """How genetic layers are written.

    Attributes:
        name: the CLI spelling.
        per_layer: None = every genetic layer uses ``fixed``; "macs" / "latency" = chosen per layer.
        fixed: the form of every genetic layer when ``per_layer`` is None.
    """

    name: str
    fixed: str | None
    per_layer: str | None = None
    help: str = ""


@dataclass(frozen=True)
class Format:
    """An output format: what ``--out`` names and which writer produces it."""

    name: str
    out_is_dir: bool
    help: str = ""


@dataclass(frozen=True)
class ValidationConfig:
    """How every export is checked against its PyTorch model before it is written (everything reported at once).

    Attributes:
        thresholds: parity limits (:class:`gee_deploy.parity.Thresholds`, shared with `gee-deploy check`).
        samples: how many test images of the checkpoint's dataset to compare on.
        batch_size: batch size of both runs.
    """

    thresholds: Thresholds = Thresholds()
    samples: int = 256
    batch_size: int = 64


VARIANTS = {v.name: v for v in (
    Variant("dense", "dense", help="fold scale * E_in G E_out^T and BatchNorm into plain Conv/Gemm weights"),
    Variant("factorised", "factorised", help="keep the per-tap rank-g form: pointwise -> shift -> pointwise"),
    Variant("auto", None, "macs", help="per layer, whichever of dense / factorised costs less (MACs + data movement)"),
)}

FORMATS = {f.name: f for f in (
    Format("onnx", False, "one self-contained .onnx file"),
    Format("triton", True, "a Triton Inference Server model repository (config.pbtxt + 1/model.onnx)"),
    Format("tensorrt", False, "a TensorRT plan built from the ONNX graph (needs the tensorrt package)"),
)}


def lookup(table: dict, name: str, what: str):
    """``table[name]``, or one clear line naming the choices."""
    if name not in table:
        raise UnknownOptionError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return table[name]
