"""What varies per export, declared as data and looked up by name (variants, formats, tolerances)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..kinds import ExportVariant, Int8Policy
from ..parity import INT8_PTQ_THRESHOLDS, Thresholds, validation_thresholds
from .errors import UnknownOptionError

__all__ = ["Variant", "Format", "ValidationConfig", "VARIANTS", "FORMATS", "MIN_OPSET", "DEFAULT_OPSET", "lookup",
           "INT8_MIN_MACS", "INT8_PTQ_THRESHOLDS", "validation_thresholds"]

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
            :data:`INT8_MIN_MACS` per call that need no strided-slice gathering; ``auto`` with ``--allow-int8``).
    """

    name: ExportVariant
    fixed: ExportVariant | None
    per_layer: str | None = None
    help: str = ""
    int8: Int8Policy = Int8Policy.NEVER


@dataclass(frozen=True)
class Format:
    """An output format: what ``--out`` names and which writer produces it."""

    name: str
    out_is_dir: bool
    help: str = ""
    suffixes: tuple[str, ...] = ()  # file names this format writes (lower case); none for a directory


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
    Variant(ExportVariant.DENSE, ExportVariant.DENSE,
            help="fold scale * E_in G E_out^T and BatchNorm into plain Conv/Gemm weights"),
    Variant(ExportVariant.FACTORISED, ExportVariant.FACTORISED,
            help="keep the per-tap rank-g form: pointwise -> shift -> pointwise"),
    Variant(ExportVariant.AUTO, None, "macs",
            help="per layer, whichever of dense / factorised costs less (MACs + data movement)"),
    Variant(ExportVariant.INT8, ExportVariant.DENSE, int8=Int8Policy.ALL,
            help="dense, and every layer that reads spikes as uint8 spikes x int8 per-channel weights -> int32 (the "
                 "stem stays float32)"),
)}

# Smallest layer (MACs per call) ``auto --allow-int8`` writes int8: benchmarks/int8_conv.py measured a 256 -> 10
# Gemm (2,560 MACs) 0.8x as fast in int8 (per-op overhead: Cast, Mul, Add) and a 1,152 -> 256 one (295k MACs)
# 21x as fast.
INT8_MIN_MACS = 16384


FORMATS = {fmt.name: fmt for fmt in (
    Format("onnx", False, "one self-contained .onnx file", (".onnx",)),
    Format("triton", True, "a Triton Inference Server model repository (config.pbtxt + 1/model.onnx)"),
    Format("tensorrt", False, "a TensorRT plan built from the ONNX graph (needs the tensorrt package)",
           (".plan", ".engine")),
    Format("nir", False, "a NIR graph (.nir, HDF5) of the folded dense network for neuromorphic simulators/chips",
           (".nir",)),
)}


_LIKE = {"onnx": "an ONNX file", "tensorrt": "a TensorRT plan", "nir": "a NIR file"}


def format_for(out: str | os.PathLike, fmt: str | None) -> str:
    """The format an export to ``out`` writes: ``fmt``, or without one the format ``out``'s suffix names
    (.onnx, .plan / .engine, .nir). A file is only ever written under a suffix of its format, so a
    checkpoint's name (.pt) or a typo never receives an ONNX graph; a Triton repository is a directory
    (--format triton, any name without a file format's suffix).

    Raises:
        UnknownOptionError: an unknown ``fmt``; ``out`` named for another format than ``fmt`` (a .nir file
            that would hold ONNX, a Triton directory named .onnx); a file format's ``out`` without one of its
            suffixes; no ``fmt`` and a suffix that names no format.
    """
    suffix = Path(out).suffix.lower()
    named = next((f.name for f in FORMATS.values() if suffix in f.suffixes), None)
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    if fmt is None:
        if named is None and Path(out).is_dir():
            raise UnknownOptionError(f"--out {out} is a directory: give a file ending in {known}, or --format triton "
                                     "to write a Triton repository there")
        if named is None:
            raise UnknownOptionError(f"--out {out}: {f'the suffix {suffix}' if suffix else 'a name without a suffix'} "
                                     f"names no export format; end it in {known}, or give --format triton for a "
                                     "Triton repository directory")
        return named
    chosen = lookup(FORMATS, fmt, "format")
    if named is not None and named != chosen.name:
        what = "a directory" if chosen.out_is_dir else f"a {' or '.join(chosen.suffixes)} file"
        raise UnknownOptionError(f"--out {out} is named like {_LIKE[named]} but --format {fmt} writes {what}: "
                                 "rename --out, or drop --format and let the suffix choose")
    if not chosen.out_is_dir and named is None:
        if Path(out).is_dir():
            raise UnknownOptionError(f"--out {out} is a directory: --format {fmt} writes a "
                                     f"{' or '.join(chosen.suffixes)} file")
        raise UnknownOptionError(f"--out {out}: --format {fmt} writes a {' or '.join(chosen.suffixes)} file; "
                                 "name --out so")
    return chosen.name


def lookup(table: dict, name: str, what: str):
    """``table[name]``, or one clear line naming the choices."""
    if name not in table:
        raise UnknownOptionError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return table[name]
