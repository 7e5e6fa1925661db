"""The options of one export: checked once where the user's input arrives, then passed down unchanged.

:func:`export_options` turns what a user gave (the CLI's values, or the Python API's keywords: names, numbers,
None for "the default") into a frozen :class:`ExportOptions` holding the registry entries and enums the stage
works with. Each choice has one checker (:func:`check_format`, :func:`check_variant`, :func:`check_opset`,
:func:`check_storage`), and combinations no format can hold (int8 layers in a TensorRT plan, genetic storage in
a NIR file, an opset for NIR) are refused there too, before any model is loaded; nothing below re-checks them.
Two things depend on the loaded model and are resolved from the options once it is loaded: the storage a
genetic model defaults to (:func:`storage_for`) and the validation limits of a checkpoint not fine-tuned for
int8 (:func:`validation_for`). docs/design.md, "Options objects", says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
from torch import nn

from ..genetic import GeneticConv2d, GeneticLinear
from ..kinds import ExportFormat, ExportVariant, Int8Form, Int8Policy, Storage
from ..quantisation import quantised_layers
from ..triton_config import CPU_ACCELERATORS
from .configs import (
    DEFAULT_OPSET,
    FORMATS,
    MIN_OPSET,
    VARIANTS,
    Format,
    ValidationConfig,
    Variant,
    lookup,
    validation_thresholds,
)
from .errors import ExportError, UnknownOptionError
from .int8 import DEFAULT_INT8_FORM

__all__ = [
    "ExportOptions",
    "export_options",
    "check_format",
    "check_variant",
    "check_int8_form",
    "check_opset",
    "check_storage",
    "storage_for",
    "validation_for",
    "is_genetic",
]

_LIKE = {ExportFormat.ONNX: "an ONNX file", ExportFormat.TENSORRT: "a TensorRT plan", ExportFormat.NIR: "a NIR file"}


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """Everything an export was asked for, checked (build it with :func:`export_options`).

    Attributes:
        format: the output format (an entry of :data:`~gee_deploy.export.configs.FORMATS`).
        variant: how genetic layers are written (:data:`~gee_deploy.export.configs.VARIANTS`); with
            ``--allow-int8`` its ``int8`` policy is ``choose``.
        opset: the ONNX opset; 0 for a format that writes no ONNX graph (NIR).
        storage: what the file holds; None: the model's default (:func:`storage_for`).
        streaming: one timestep per call, membrane potentials as graph inputs/outputs.
        profile: with ``auto``: choose per layer by measured onnxruntime latency instead of MACs.
        validation: the parity limits and sample count; None: the default sample count with the limits
            :func:`validation_for` picks for the variant and the model.
        atol: max abs logit difference per sample, replacing ``validation``'s; None: keep it.
        samples: test images to validate on, replacing ``validation``'s count; None: keep it.
        data_dir: where the checkpoint's dataset lives; None: its standard place.
        max_batch_size: Triton's max_batch_size / the TensorRT optimisation profile's maximum (>= 1).
        fp16: TensorRT only: build an FP16 plan.
        int8_form: how int8 layers are spelt (:class:`~gee_deploy.kinds.Int8Form`: onnxruntime's MatMulIntegerToFloat or QDQ); None
            when the variant writes none.
        triton_accelerator: Triton only: the CPU execution accelerator its config.pbtxt names (one of
            :data:`~gee_deploy.triton_config.CPU_ACCELERATORS`), or None for onnxruntime's CPU provider.
    """

    format: Format = FORMATS[ExportFormat.ONNX]
    variant: Variant = VARIANTS[ExportVariant.DENSE]
    opset: int = DEFAULT_OPSET
    storage: Storage | None = None
    streaming: bool = False
    profile: bool = False
    validation: ValidationConfig | None = None
    atol: float | None = None
    samples: int | None = None
    data_dir: Path | None = None
    max_batch_size: int = 64
    fp16: bool = False
    int8_form: Int8Form | None = None
    triton_accelerator: str | None = None


def export_options(
    *,
    out: str | os.PathLike | None = None,
    fmt: ExportFormat | str | None = None,
    variant: ExportVariant | str = ExportVariant.DENSE,
    allow_int8: bool = False,
    opset: int | None = None,
    storage: Storage | str | None = None,
    streaming: bool = False,
    profile: bool = False,
    validation: ValidationConfig | None = None,
    atol: float | None = None,
    samples: int | None = None,
    data_dir: str | os.PathLike | None = None,
    max_batch_size: int = 64,
    fp16: bool = False,
    int8_form: Int8Form | str | None = None,
    triton_accelerator: str | None = None,
) -> ExportOptions:
    """The checked options of an export: the one place an export's input is checked (docs/export.md).

    Args:
        out: where the export goes; only its suffix is read, to pick the format when ``fmt`` is None.
        fmt: onnx, triton, tensorrt or nir; None: the format ``out``'s suffix names, else onnx.
        variant: dense, factorised, auto or int8; ``allow_int8`` (with auto): spike-reading layers of at least
            INT8_MIN_MACS per call get int8 weights.
        opset: ONNX opset (default 18); storage: genetic, folded or None (the model's default); int8_form:
            integer, qdq or None (the format's default: :func:`check_int8_form`); the rest: the attributes of
            :class:`ExportOptions`.

    Raises:
        UnknownOptionError: an unknown format, variant or storage; an opset out of range; ``--out`` named for
            another format; an option the variant or format has no use for.
        ExportError: int8 layers for a format that cannot hold them.
    """
    output_format = check_format(fmt, out)
    chosen = check_variant(variant, allow_int8, profile)
    if output_format.no_int8 and chosen.int8 != Int8Policy.NEVER:
        raise ExportError(
            f"--format {output_format.name} cannot hold int8 layers ({output_format.no_int8}): "
            "export --variant dense or auto without --allow-int8"
        )
    for bad, why in (
        (output_format.fixed_graph and chosen.name != ExportVariant.DENSE, f"--variant {chosen.name}"),
        (output_format.fixed_graph and streaming, "--streaming"),
    ):
        if bad:
            raise UnknownOptionError(
                f"{why} does not apply to --format {output_format.name} ({output_format.fixed_graph})"
            )
    checked_opset = check_opset(opset, output_format)
    if fp16 and output_format.name != ExportFormat.TENSORRT:
        raise UnknownOptionError(
            f"--fp16 builds an FP16 TensorRT plan: it applies to --format tensorrt, not {output_format.name}"
        )
    if triton_accelerator is not None and output_format.name != ExportFormat.TRITON:
        raise UnknownOptionError(
            f"--triton-accelerator names an accelerator in Triton's config.pbtxt: it applies to "
            f"--format triton, not {output_format.name}"
        )
    if triton_accelerator not in (None, *CPU_ACCELERATORS):
        raise UnknownOptionError(
            f"unknown --triton-accelerator {triton_accelerator!r}; use one of {', '.join(CPU_ACCELERATORS)}"
        )
    return ExportOptions(
        format=output_format,
        variant=chosen,
        opset=checked_opset,
        storage=check_storage(storage, output_format),
        streaming=streaming,
        profile=profile,
        validation=validation,
        atol=atol,
        samples=samples,
        data_dir=None if data_dir is None else Path(data_dir),
        max_batch_size=max_batch_size,
        fp16=fp16,
        int8_form=check_int8_form(int8_form, chosen, output_format),
        triton_accelerator=triton_accelerator,
    )


def check_format(fmt: ExportFormat | str | None, out: str | os.PathLike | None = None) -> Format:
    """The format an export to ``out`` writes: ``fmt``, or without one the format ``out``'s suffix names
    (.onnx, .plan / .engine, .nir; onnx when there is no ``out``). A file is only ever written under a suffix of
    its format, so a checkpoint's name (.pt) or a typo never receives an ONNX graph; a Triton repository is a
    directory (--format triton, any name without a file format's suffix).

    Raises:
        UnknownOptionError: an unknown ``fmt``; ``out`` named for another format than ``fmt`` (a .nir file
            that would hold ONNX, a Triton directory named .onnx); a file format's ``out`` without one of its
            suffixes; no ``fmt`` and a suffix that names no format.
    """
    if out is None:
        return FORMATS[ExportFormat.ONNX] if fmt is None else lookup(FORMATS, fmt, "format")
    suffix = Path(out).suffix.lower()
    named = next((f for f in FORMATS.values() if suffix and suffix in f.suffixes), None)
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    if fmt is None:
        if named is None and Path(out).is_dir():
            raise UnknownOptionError(
                f"--out {out} is a directory: give a file ending in {known}, or --format triton "
                "to write a Triton repository there"
            )
        if named is None:
            raise UnknownOptionError(
                f"--out {out}: {f'the suffix {suffix}' if suffix else 'a name without a suffix'} "
                f"names no export format; end it in {known}, or give --format triton for a "
                "Triton repository directory"
            )
        return named
    chosen = lookup(FORMATS, fmt, "format")
    if named is not None and named.name != chosen.name:
        what = "a directory" if chosen.out_is_dir else f"a {' or '.join(chosen.suffixes)} file"
        raise UnknownOptionError(
            f"--out {out} is named like {_LIKE[named.name]} but --format {fmt} writes {what}: "
            "rename --out, or drop --format and let the suffix choose"
        )
    if not chosen.out_is_dir and named is None:
        if Path(out).is_dir():
            raise UnknownOptionError(
                f"--out {out} is a directory: --format {fmt} writes a {' or '.join(chosen.suffixes)} file"
            )
        raise UnknownOptionError(
            f"--out {out}: --format {fmt} writes a {' or '.join(chosen.suffixes)} file; name --out so"
        )
    return chosen


def check_variant(variant: ExportVariant | str, allow_int8: bool = False, profile: bool = False) -> Variant:
    """The :class:`~gee_deploy.export.configs.Variant` named ``variant``; with ``allow_int8`` its int8 policy is
    ``choose``.

    Raises:
        UnknownOptionError: an unknown variant; ``allow_int8`` or ``profile`` with a variant that writes every
            layer one way (they apply to ``auto``).
    """
    chosen = lookup(VARIANTS, variant, "variant")
    if profile and chosen.per_layer is None:
        raise UnknownOptionError(
            f"--profile times each layer's forms for --variant auto to choose from; --variant "
            f"{variant} writes every layer one way (drop --profile or use --variant auto)"
        )
    if allow_int8:
        if chosen.per_layer is None:
            raise UnknownOptionError(
                f"--allow-int8 lets --variant auto choose int8 per layer; with --variant "
                f"{variant} use --variant int8 for every spike-reading layer"
            )
        chosen = replace(chosen, int8=Int8Policy.CHOOSE)
    return chosen


def check_int8_form(form: Int8Form | str | None, variant: Variant, output_format: Format) -> Int8Form | None:
    """How the export spells its int8 layers: ``form``, or by default the one the format's runtime runs fastest
    (:data:`~gee_deploy.export.int8.DEFAULT_INT8_FORM`: integer for onnxruntime, QDQ for TensorRT); None when
    ``variant`` writes no int8 layer.

    Raises:
        UnknownOptionError: an unknown form, a form given for an export without int8 layers, or the integer form
            for TensorRT (its int8 is QDQ only).
    """
    if form is not None:
        form = Int8Form(lookup({f.value: f for f in Int8Form}, form, "int8 form"))
        if variant.int8 == Int8Policy.NEVER:
            raise UnknownOptionError(
                f"--int8-form spells int8 layers; --variant {variant.name} writes none (use "
                "--variant int8, or --variant auto --allow-int8)"
            )
    if variant.int8 == Int8Policy.NEVER:
        return None
    if form == Int8Form.INTEGER and output_format.name == ExportFormat.TENSORRT:
        raise UnknownOptionError(
            "--int8-form integer is onnxruntime's MatMulIntegerToFloat, which TensorRT cannot run "
            "(its int8 is QDQ only): use --int8-form qdq (the default for --format tensorrt)"
        )
    return form or DEFAULT_INT8_FORM.get(output_format.name, Int8Form.INTEGER)


def check_opset(opset: int | None, output_format: Format) -> int:
    """``opset`` (default :data:`~gee_deploy.export.configs.DEFAULT_OPSET`), or 0 for a format that writes no
    ONNX graph.

    Raises:
        UnknownOptionError: an opset outside MIN_OPSET .. the installed onnx's newest; any opset for NIR.
    """
    if output_format.fixed_graph:
        if opset is not None:
            raise UnknownOptionError(
                f"--opset does not apply to --format {output_format.name} ({output_format.fixed_graph})"
            )
        return 0
    newest = onnx.defs.onnx_opset_version()
    opset = DEFAULT_OPSET if opset is None else opset
    if not MIN_OPSET <= opset <= newest:
        raise UnknownOptionError(f"opset {opset} is not supported; use {MIN_OPSET}..{newest}")
    return opset


def check_storage(storage: Storage | str | None, output_format: Format) -> Storage | None:
    """``storage`` as a :class:`~gee_deploy.kinds.Storage`, or None (the model's default: :func:`storage_for`).

    Raises:
        UnknownOptionError: an unknown storage; ``genetic`` for a format that holds only folded weights.
    """
    if storage is None:
        return None
    storage = Storage(lookup({s.value: s for s in Storage}, storage, "storage"))
    if storage == Storage.GENETIC and output_format.no_genetic:
        raise UnknownOptionError(
            f"--storage genetic does not apply to --format {output_format.name}: "
            f"{output_format.no_genetic} (leave --storage out)"
        )
    return storage


def is_genetic(model: nn.Module) -> bool:
    """Whether ``model`` has genetic layers (a dense twin has none)."""
    return any(isinstance(m, (GeneticConv2d, GeneticLinear)) for m in model.modules())


def storage_for(model: nn.Module, options: ExportOptions) -> Storage:
    """The storage an export of ``model`` uses: ``options.storage``, or by default ``genetic`` for a genetic model
    in a format that can hold it (an ONNX file, a Triton repository) and ``folded`` otherwise.

    Raises:
        UnknownOptionError: ``genetic`` for a dense twin (genes = 0).
    """
    if options.storage is None:
        return Storage.GENETIC if is_genetic(model) and not options.format.no_genetic else Storage.FOLDED
    if options.storage == Storage.GENETIC and not is_genetic(model):
        raise UnknownOptionError(
            "--storage genetic needs a genetic model; this is a dense twin (genes = 0), whose only storage is folded"
        )
    return options.storage


def validation_for(model: nn.Module, options: ExportOptions) -> ValidationConfig:
    """How an export of ``model`` is validated: ``options.validation``, by default the default sample count with
    :func:`~gee_deploy.export.configs.validation_thresholds` (fp32's, or the post-training int8 ones when int8
    layers meet a checkpoint not fine-tuned for them); ``options.atol`` and ``options.samples`` replace its own.
    """
    cfg = options.validation or ValidationConfig(
        thresholds=validation_thresholds(options.variant.int8 != Int8Policy.NEVER, bool(quantised_layers(model)))
    )
    if options.atol is not None:
        cfg = replace(cfg, thresholds=replace(cfg.thresholds, atol=options.atol))
    return cfg if options.samples is None else replace(cfg, samples=options.samples)
