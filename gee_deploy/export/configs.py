"""What varies per export, declared as data and looked up by name (variants, formats, tolerances)."""

from __future__ import annotations

from dataclasses import dataclass

from ..kinds import ExportFormat, ExportVariant, Int8Policy
from ..parity import INT8_PTQ_THRESHOLDS, Thresholds, validation_thresholds
from .errors import UnknownOptionError

__all__ = [
    "Variant",
    "Format",
    "ValidationConfig",
    "VARIANTS",
    "FORMATS",
    "MIN_OPSET",
    "DEFAULT_OPSET",
    "lookup",
    "INT8_MIN_MACS",
    "INT8_PTQ_THRESHOLDS",
    "validation_thresholds",
]

MIN_OPSET = 18  # Split(num_outputs) and ReduceMean with axes as an input
DEFAULT_OPSET = 18  # the newest opset TensorRT 10's ONNX parser and onnxruntime both cover fully


@dataclass(frozen=True)
class Variant:
    """How genetic layers are written.

    Attributes:
        name: the CLI spelling.
        per_layer: None = every genetic layer uses ``fixed``; "macs" = chosen per layer (by measured latency
            with ``--profile``).
        fixed: how every genetic layer is written (dense or factorised) when ``per_layer`` is None.
        int8: which layers that read spikes get int8 weights: never, all, or choose (those with at least
            :data:`INT8_MIN_MACS` per call; ``auto`` with ``--allow-int8``).
    """

    name: ExportVariant
    fixed: ExportVariant | None
    per_layer: str | None = None
    help: str = ""
    int8: Int8Policy = Int8Policy.NEVER


@dataclass(frozen=True)
class Format:
    """An output format: what ``--out`` names and what the file can hold (the options checks read these; the
    function that writes each format is named in :data:`gee_deploy.formats.EXPORTERS`).

    Attributes:
        name: the ``--format`` spelling.
        out_is_dir: ``--out`` names a directory (a Triton repository) rather than a file.
        suffixes: file names this format writes (lower case); none for a directory.
        no_int8: why the format cannot hold int8 layers ("": it can).
        no_genetic: why it cannot hold genetic storage ("": it can, and a genetic model defaults to it).
        fixed_graph: what it always writes, when --variant, --streaming and --opset do not apply ("": they do).
    """

    name: ExportFormat
    out_is_dir: bool
    help: str = ""
    suffixes: tuple[str, ...] = ()
    no_int8: str = ""
    no_genetic: str = ""
    fixed_graph: str = ""


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


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            ExportVariant.DENSE,
            ExportVariant.DENSE,
            help="fold scale * E_in G E_out^T and BatchNorm into plain Conv/Gemm weights",
        ),
        Variant(
            ExportVariant.FACTORISED,
            ExportVariant.FACTORISED,
            help="keep the per-tap rank-g form: pointwise -> shift -> pointwise",
        ),
        Variant(
            ExportVariant.AUTO,
            None,
            "macs",
            help="per layer, whichever of dense / factorised costs less (MACs + data movement)",
        ),
        Variant(
            ExportVariant.INT8,
            ExportVariant.DENSE,
            int8=Int8Policy.ALL,
            help="dense, and every layer that reads spikes as uint8 spikes x int8 per-channel weights -> int32 (the "
            "stem stays float32, but for a gee-deploy quantize checkpoint's, which reads 8-bit input codes)",
        ),
    )
}

# Smallest layer (MACs per call) ``auto --allow-int8`` writes int8: benchmarks/int8_conv.py measured a 256 -> 10
# Gemm (2,560 MACs) 0.8x as fast in int8 (per-op overhead: Cast, Mul, Add) and a 1,152 -> 256 one (295k MACs)
# 21x as fast.
INT8_MIN_MACS = 16384


FORMATS = {
    fmt.name: fmt
    for fmt in (
        Format(ExportFormat.ONNX, False, "one self-contained .onnx file", (".onnx",)),
        Format(ExportFormat.TRITON, True, "a Triton Inference Server model repository (config.pbtxt + 1/model.onnx)"),
        Format(
            ExportFormat.TENSORRT,
            False,
            "a TensorRT plan built from the ONNX graph (needs the tensorrt package)",
            (".plan", ".engine"),
            no_genetic="a plan holds TensorRT's own engine, built from the folded weights",
        ),
        Format(
            ExportFormat.NIR,
            False,
            "a NIR graph (.nir, HDF5) of the folded dense network for neuromorphic simulators/chips",
            (".nir",),
            no_int8="NIR has no int8 type",
            no_genetic="NIR has no constant computation, so a NIR file holds the folded weights",
            fixed_graph="it writes the folded dense network, one step per call",
        ),
    )
}


def lookup(table: dict, name: str, what: str):
    """``table[name]``, or one clear line naming the choices."""
    if name not in table:
        raise UnknownOptionError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return table[name]
