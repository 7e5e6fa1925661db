"""``export_model``: checkpoint -> validated ONNX file, Triton repository, TensorRT plan or NIR graph."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nir
import onnx
import torch
from torch import nn

from ..checkpoint import file_sha256, load_model, model_origin
from ..genetic import GeneticConv2d, GeneticLinear
from ..data import load_test_arrays
from ..io import atomic_path
from ..kinds import ExportVariant, Int8Form, Int8Policy, Precision, Storage
from ..quantisation import quantised_layers
from ..spec import ModelSpec
from ..triton_config import CPU_ACCELERATORS
from .choose import make_chooser, make_int8_chooser
from .configs import (DEFAULT_OPSET, FORMATS, MIN_OPSET, VARIANTS, ValidationConfig, Variant, lookup,
                      validation_thresholds)
from .errors import ExportError, ExportValidationError, UnknownOptionError
from .int8 import DEFAULT_INT8_FORM
from ..nir.writer import write_nir
from ..nir.validate import read_nir, validate_nir
from .validate import ValidationReport, validate_export, validate_streaming
from .writer import folded_with_scales, write_graph

__all__ = ["ExportReport", "export_model", "export_loaded", "build_onnx", "validation_data"]


@dataclass
class ExportReport:
    """What one export produced, for the CLI and for scripts."""

    out: str
    format: str
    variant: ExportVariant
    opset: int
    streaming: bool
    storage: Storage = Storage.FOLDED
    bytes: int = 0  # size of the written file (a Triton repository: its model.onnx); 0 when not written
    layers: list[dict] = field(default_factory=list)
    macs_per_sample: int = 0  # sum over layers of macs x calls: one inference of one sample
    dense_macs_per_sample: int = 0  # the same network with every layer dense
    validation: dict = field(default_factory=dict)
    streaming_validation: dict = field(default_factory=dict)
    tensorrt_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    reference: str = "PyTorch"  # what validation compared the graph with
    int8_form: Int8Form | None = None  # how int8 layers are spelt; None when the export has none

    def summary(self) -> str:
        size = f", {self.bytes / 2**20:.2f} MiB" if self.bytes else ""
        form = f", int8 form {self.int8_form}" if self.int8_form else ""
        lines = [f"wrote {self.out} ({self.format}, variant {self.variant}{form}, {self.storage} storage"
                 f"{f', opset {self.opset}' if self.opset else ''}{', streaming' if self.streaming else ''}{size})"]
        lines += [f"  {l['name']:<24} {l['kind']:<6} {l['form']:<16} {l.get('precision', 'fp32'):<4} "
                  f"MACs {l['macs']:>13,} x{l['calls']}"
                  for l in self.layers]
        lines.append(f"  MACs per sample: {self.macs_per_sample:,} (all dense: {self.dense_macs_per_sample:,})")
        v = self.validation
        if v:
            lines.append(f"  validated on {v['samples']} samples: top-1 agreement {v['top1_agreement']:.4f}, "
                         f"max |logit diff| {v['max_logit_diff']:.3g}, spikes {v['spikes_deployed']:.0f} (graph) vs "
                         f"{v['spikes_reference']:.0f} ({self.reference})")
        if self.streaming_validation:
            s = self.streaming_validation
            lines.append(f"  streaming vs unrolled over T calls: max |logit diff| {s['max_logit_diff']:.3g}, "
                         f"spike counts diff {s['max_spike_count_diff']:.3g}")
        for p in self.tensorrt_problems:
            lines.append(f"  TensorRT compatibility: {p}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _report_dict(r: ValidationReport) -> dict:
    return {**(r.stats.as_dict() if r.stats else {}), "samples": r.samples, "checks": [list(row) for row in r.rows]}


def validation_data(dataset: str, samples: int, data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` test images [S, C, H, W] and labels of ``dataset``."""
    images, labels = load_test_arrays(dataset, data_dir, samples)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _variant(variant: ExportVariant | str, allow_int8: bool) -> Variant:
    v = lookup(VARIANTS, variant, "variant")
    if allow_int8:
        if v.per_layer is None:
            raise UnknownOptionError(f"--allow-int8 lets --variant auto choose int8 per layer; with --variant "
                                     f"{variant} use --variant int8 for every spike-reading layer")
        v = replace(v, int8=Int8Policy.CHOOSE)
    return v


def resolve_int8_form(variant: Variant, form: Int8Form | str | None, fmt: str = "onnx") -> Int8Form | None:
    """How the export spells its int8 layers: ``form``, or by default the one ``fmt``'s runtime runs fastest
    (:data:`~gee_deploy.export.int8.DEFAULT_INT8_FORM`); None when ``variant`` writes no int8 layer.

    Raises:
        UnknownOptionError: an unknown form, a form given for an export without int8 layers, or the integer form
            for TensorRT (its int8 is QDQ only).
    """
    if form is not None:
        form = Int8Form(lookup({f.value: f for f in Int8Form}, form, "int8 form"))
        if variant.int8 == Int8Policy.NEVER:
            raise UnknownOptionError(f"--int8-form spells int8 layers; --variant {variant.name} writes none (use "
                                     "--variant int8, or --variant auto --allow-int8)")
    if variant.int8 == Int8Policy.NEVER:
        return None
    if form == Int8Form.INTEGER and fmt == "tensorrt":
        raise UnknownOptionError("--int8-form integer is onnxruntime's MatMulInteger, which TensorRT cannot run "
                                 "(its int8 is QDQ only): use --int8-form qdq (the default for --format tensorrt)")
    return form or DEFAULT_INT8_FORM.get(fmt, Int8Form.INTEGER)


def is_genetic(model: nn.Module) -> bool:
    """Whether ``model`` has genetic layers (a dense twin has none)."""
    return any(isinstance(m, (GeneticConv2d, GeneticLinear)) for m in model.modules())


def resolve_storage(model: nn.Module, storage: Storage | str | None, fmt: str = "onnx") -> Storage:
    """The storage an export uses: ``storage``, or by default ``genetic`` for a genetic model in an ONNX file
    or Triton repository and ``folded`` otherwise.

    Raises:
        UnknownOptionError: an unknown storage; ``genetic`` for a dense twin, a TensorRT plan or a NIR file.
    """
    if storage is None:
        return Storage.GENETIC if is_genetic(model) and fmt in ("onnx", "triton") else Storage.FOLDED
    storage = Storage(lookup({s.value: s for s in Storage}, storage, "storage"))
    if storage == Storage.GENETIC:
        if fmt == "tensorrt":
            raise UnknownOptionError("--storage genetic does not apply to --format tensorrt: a plan holds TensorRT's "
                                     "own engine, built from the folded weights (leave --storage out)")
        if fmt == "nir":
            raise UnknownOptionError("--storage genetic does not apply to --format nir: NIR has no constant "
                                     "computation, so a NIR file holds the folded weights (leave --storage out)")
        if not is_genetic(model):
            raise UnknownOptionError("--storage genetic needs a genetic model; this is a dense twin (genes = 0), "
                                     "whose only storage is folded")
    return storage


def build_onnx(model: nn.Module, variant: ExportVariant | str = ExportVariant.DENSE, opset: int | None = None,
               streaming: bool = False, checkpoint_sha256: str = "", profile: bool = False,
               choices: dict[str, ExportVariant] | None = None,
               allow_int8: bool = False, storage: Storage | str | None = Storage.FOLDED,
               int8_form: Int8Form | str | None = None) -> tuple[onnx.ModelProto, ModelSpec]:
    """The checked ONNX graph of eval-mode ``model`` and its spec (no file written).

    ``storage``: folded (the weights as initializers), genetic (the genetic parameters and the subgraph
    computing the weights from them; :mod:`gee_deploy.export.weights`) or None (:func:`resolve_storage`).

    ``choices``: how every genetic layer is written (dense / factorised) by name, as an earlier build chose
    them (the streaming graph repeats the validated unrolled graph's choices); None lets ``variant`` choose.
    ``allow_int8``: with ``auto``, spike-reading layers of at least INT8_MIN_MACS per call get int8 weights.
    ``int8_form``: how int8 layers are spelt (:func:`resolve_int8_form`; default the integer form).

    Raises:
        UnknownOptionError: unknown variant, unsupported opset, or ``allow_int8`` with a fixed variant.
        UnsupportedModuleError: the model holds something the writer cannot translate.
        ExportError: the written graph fails onnx.checker.
    """
    v = _variant(variant, allow_int8)
    opset = _opset(opset)
    choose = make_chooser(v, profile, model.timesteps, opset) if choices is None else \
        (lambda name, *_: choices[name])
    class_names, dataset = model_origin(model)
    proto, spec = write_graph(model.eval(), choose, opset, variant=v.name, class_names=class_names, dataset=dataset,
                              checkpoint_sha256=checkpoint_sha256, streaming=streaming, int8=make_int8_chooser(v),
                              storage=resolve_storage(model, storage),
                              int8_form=resolve_int8_form(v, int8_form) or Int8Form.INTEGER)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the written graph fails onnx.checker: {str(e).splitlines()[0][:300]}") from None
    return proto, spec


def _smaller_storage(genetic: onnx.ModelProto, spec: ModelSpec) -> tuple[onnx.ModelProto, ModelSpec, Storage, list[str]]:
    """The default storage of a graph with int8 layers: genetic, unless folding makes the file smaller.

    An int8 code takes one byte where the encodings it is computed from take four per parameter, so a model
    with few genes per weight (ResNet-18/19 at g = 150) ships smaller folded; the user's number is the file.
    """
    folded, folded_spec = folded_with_scales(genetic, spec)
    if folded.ByteSize() >= genetic.ByteSize():
        return genetic, spec, Storage.GENETIC, []
    note = (f"folded storage ({folded.ByteSize() / 2**20:.2f} MiB): its int8 codes are smaller than the genetic "
            f"parameters ({genetic.ByteSize() / 2**20:.2f} MiB); --storage genetic stores the genetic parameters "
            "instead")
    return folded, folded_spec, Storage.FOLDED, [note]


def _opset(opset: int | None) -> int:
    newest = onnx.defs.onnx_opset_version()
    opset = DEFAULT_OPSET if opset is None else opset
    if not MIN_OPSET <= opset <= newest:
        raise UnknownOptionError(f"opset {opset} is not supported; use {MIN_OPSET}..{newest}")
    return opset


def export_loaded(model: nn.Module, out: str | os.PathLike, *, variant: ExportVariant | str = ExportVariant.DENSE,
                  fmt: str = "onnx", opset: int | None = None, streaming: bool = False,
                  images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                  validation: ValidationConfig | None = None,
                  checkpoint_sha256: str = "", profile: bool = False, max_batch_size: int = 64,
                  fp16: bool = False, allow_int8: bool = False, storage: Storage | str | None = None,
                  int8_form: Int8Form | str | None = None, triton_accelerator: str | None = None) -> ExportReport:
    """Export an already loaded eval-mode model; validate on ``images`` (required) before anything is kept.

    ``validation`` None: the default sample count with the variant's thresholds
    (:func:`~gee_deploy.export.configs.validation_thresholds`). ``storage``: see :func:`resolve_storage`;
    ``int8_form``: :func:`resolve_int8_form`.
    """
    start = time.perf_counter()
    output_format = lookup(FORMATS, fmt, "format")
    v = _variant(variant, allow_int8)
    chosen_storage = storage is not None
    storage = resolve_storage(model, storage, output_format.name)
    int8_form = resolve_int8_form(v, int8_form, output_format.name)
    cfg = validation or ValidationConfig(thresholds=validation_thresholds(v.int8 != Int8Policy.NEVER,
                                                                          bool(quantised_layers(model))))
    if images is None or len(images) == 0:
        raise ExportError("validation needs at least one image")
    if not output_format.out_is_dir and Path(out).is_dir():
        raise ExportError(f"--out {out} is a directory; {output_format.name} writes a file")
    if output_format.name == "nir" and v.int8 != Int8Policy.NEVER:
        raise ExportError("--format nir cannot hold int8 layers (NIR has no int8 type): export --variant dense or "
                          "auto without --allow-int8")
    if output_format.name == "nir":
        report = _export_nir(model, Path(out), variant, opset, streaming, images, labels, cfg, checkpoint_sha256, start)
        if is_genetic(model):
            report.notes.append("NIR has no constant computation: the file holds the folded weights")
        return report
    if output_format.name == "tensorrt":
        from .tensorrt import require_tensorrt

        require_tensorrt()
    unrolled, spec = build_onnx(model, variant, opset, False, checkpoint_sha256, profile, allow_int8=allow_int8,
                                storage=storage, int8_form=int8_form)
    notes = []
    if not chosen_storage and storage == Storage.GENETIC and any(l.precision == Precision.INT8 for l in spec.layers):
        unrolled, spec, storage, notes = _smaller_storage(unrolled, spec)
    report = ExportReport(str(out), output_format.name, v.name, _opset(opset), streaming, storage,
                          layers=[l.as_dict() for l in spec.layers], macs_per_sample=spec.macs_per_sample,
                          dense_macs_per_sample=spec.dense_macs_per_sample, notes=notes,
                          int8_form=int8_form if any(l.precision == Precision.INT8 for l in spec.layers) else None)
    data = unrolled.SerializeToString()
    try:
        val = validate_export(model, data, images, labels, cfg)
    except ExportValidationError as e:
        if any(l.precision == Precision.INT8 for l in spec.layers) and not quantised_layers(model):
            raise ExportValidationError(f"{e}\nhint: int8 weights this checkpoint was not trained with moved it; "
                                        f"`gee-deploy quantize CHECKPOINT --out Q.pt` fine-tunes it so its int8 "
                                        f"export is exact", e.failures) from None
        raise
    report.validation = _report_dict(val)
    final = unrolled
    if streaming:
        # same per-layer choices as the validated unrolled graph, one step per call
        chosen = {l.name: l.variant for l in spec.layers}
        final, spec = build_onnx(model, variant, report.opset, True, checkpoint_sha256, choices=chosen,
                                 allow_int8=allow_int8, storage=storage, int8_form=int8_form)
        sv = validate_streaming(final.SerializeToString(), data, images, model.timesteps, spec.state_inputs, cfg)
        report.streaming_validation = _report_dict(sv)
    from .tensorrt import compatibility_problems

    report.tensorrt_problems = compatibility_problems(final)
    _write(output_format.name, final, spec, Path(out), max_batch_size, fp16, report, triton_accelerator)
    report.seconds = time.perf_counter() - start
    return report


def _export_nir(model: nn.Module, out: Path, variant: ExportVariant | str, opset: int | None, streaming: bool,
                images: torch.Tensor, labels: torch.Tensor | None, cfg: ValidationConfig, checkpoint_sha256: str,
                start: float) -> ExportReport:
    """The folded dense network as a NIR file, read back and run by an independent NIR executor before it is kept."""
    for bad, why in ((variant != ExportVariant.DENSE, f"--variant {variant}"), (streaming, "--streaming"),
                     (opset is not None, "--opset")):
        if bad:
            raise UnknownOptionError(f"{why} does not apply to --format nir (it writes the folded dense network, "
                                     "one step per call)")
    class_names, dataset = model_origin(model)
    graph, spec = write_nir(model.eval(), class_names=class_names, dataset=dataset,
                            checkpoint_sha256=checkpoint_sha256)
    report = ExportReport(str(out), "nir", ExportVariant.DENSE, 0, False, Storage.FOLDED,
                          layers=[l.as_dict() for l in spec.layers],
                          macs_per_sample=spec.macs_per_sample, dense_macs_per_sample=spec.dense_macs_per_sample)
    _note_replaced(out, report)
    with atomic_path(out) as tmp:
        nir.write(tmp, graph)
        val = validate_nir(model, read_nir(tmp), images, labels, cfg, source=str(out))
    report.validation = _report_dict(val)
    report.bytes = out.stat().st_size
    report.seconds = time.perf_counter() - start
    return report


def _write(fmt: str, proto: onnx.ModelProto, spec: ModelSpec, out: Path, max_batch_size: int, fp16: bool,
           report: ExportReport, triton_accelerator: str | None = None) -> None:
    """Write ``proto`` as ``fmt`` (``report.bytes``: the file's size, a Triton repository's model.onnx);
    artefacts without metadata of their own get the spec as a sidecar."""
    _note_replaced(out, report)
    if fmt == "onnx":
        with atomic_path(out) as tmp:
            onnx.save_model(proto, str(tmp))
    elif fmt == "triton":
        from .triton import write_triton_repository

        report.out = str(write_triton_repository(proto, spec, out, max_batch_size, cpu_accelerator=triton_accelerator))
    else:
        from .tensorrt import build_plan

        build_plan(proto, out, max_batch_size=max_batch_size, fp16=fp16)
        spec.write_sidecar(out)
    written = Path(report.out) / "1" / "model.onnx" if FORMATS[fmt].out_is_dir else Path(report.out)
    report.bytes = written.stat().st_size if written.is_file() else 0


def _note_replaced(out: Path, report: ExportReport) -> None:
    if out.exists():
        report.notes.append(f"replaced the existing {out}")


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike,
                 variant: ExportVariant | str = ExportVariant.DENSE, fmt: str = "onnx", opset: int | None = None,
                 streaming: bool = False, atol: float | None = None, samples: int | None = None,
                 data_dir: str | os.PathLike | None = None, profile: bool = False,
                 max_batch_size: int = 64, fp16: bool = False, allow_int8: bool = False,
                 storage: Storage | str | None = None, int8_form: Int8Form | str | None = None,
                 triton_accelerator: str | None = None) -> ExportReport:
    """Export ``checkpoint`` to ``out`` and validate it on the test split of the checkpoint's dataset.

    Args:
        checkpoint: a gee-deploy checkpoint (``best.pt``).
        out: the .onnx file, the Triton repository directory, the TensorRT .plan file or the .nir file.
        variant: dense, factorised, auto (per layer by MACs; by latency with ``profile``) or int8 (dense, every
            spike-reading layer int8).
        fmt: onnx, triton, tensorrt or nir.
        opset: ONNX opset (default 18).
        streaming: one timestep per call with membrane potentials as graph inputs/outputs.
        atol: max abs logit difference per sample (default :class:`gee_deploy.parity.Thresholds`).
        samples: test images to validate on.
        data_dir: where the checkpoint's dataset lives, if not at its default place.
        profile: with ``auto``, choose per layer by measured onnxruntime latency instead of MACs.
        max_batch_size: Triton's max_batch_size / TensorRT profile max.
        fp16: TensorRT only: build an FP16 plan.
        triton_accelerator: Triton only: the CPU execution accelerator its config.pbtxt names ("openvino":
            onnxruntime's OpenVINO execution provider; :data:`gee_deploy.triton_config.CPU_ACCELERATORS`).
        allow_int8: with ``auto``: spike-reading layers may be int8 (those of at least INT8_MIN_MACS per call).
        storage: "genetic" (E, G, scales and BatchNorm parameters, the weights computed in the graph when a
            session loads it), "folded" (the weights), or None: genetic for a genetic checkpoint's ONNX file or
            Triton repository, folded otherwise (:func:`resolve_storage`).
        int8_form: "integer" (MatMulInteger: onnxruntime's CPU int8 kernels), "qdq" (QuantizeLinear /
            DequantizeLinear around Conv / Gemm: TensorRT, OpenVINO) or None: qdq for tensorrt, integer otherwise
            (:func:`resolve_int8_form`; docs/export.md, "Int8").

    Validation limits: :func:`~gee_deploy.export.configs.validation_thresholds` (fp32's, or the post-training
    int8 ones when int8 layers meet a checkpoint not fine-tuned for them), ``atol`` overriding theirs.
    """
    lookup(FORMATS, fmt, "format")
    v = _variant(variant, allow_int8)
    _opset(opset)
    resolve_int8_form(v, int8_form, fmt)
    if fp16 and fmt != "tensorrt":
        raise UnknownOptionError(f"--fp16 builds an FP16 TensorRT plan: it applies to --format tensorrt, not {fmt}")
    if triton_accelerator is not None and fmt != "triton":
        raise UnknownOptionError(f"--triton-accelerator names an accelerator in Triton's config.pbtxt: it applies to "
                                 f"--format triton, not {fmt}")
    if triton_accelerator not in (None, *CPU_ACCELERATORS):
        raise UnknownOptionError(f"unknown --triton-accelerator {triton_accelerator!r}; use one of "
                                 f"{', '.join(CPU_ACCELERATORS)}")
    model = load_model(checkpoint)
    thresholds = validation_thresholds(v.int8 != Int8Policy.NEVER, bool(quantised_layers(model)))
    cfg = ValidationConfig(thresholds=thresholds if atol is None else replace(thresholds, atol=atol))
    cfg = cfg if samples is None else replace(cfg, samples=samples)
    dataset = model.checkpoint.dataset_name
    if not dataset:
        raise ExportError(f"{checkpoint} names no dataset; cannot validate the export")
    images, labels = validation_data(dataset, cfg.samples, data_dir)
    report = export_loaded(model, out, variant=variant, fmt=fmt, opset=opset, streaming=streaming, images=images,
                           labels=labels, validation=cfg, checkpoint_sha256=file_sha256(checkpoint),
                           profile=profile, max_batch_size=max_batch_size, fp16=fp16, allow_int8=allow_int8,
                           storage=storage, int8_form=int8_form, triton_accelerator=triton_accelerator)
    if samples is not None and len(images) < samples:
        report.notes.append(f"--samples {samples}: the {dataset} test split holds {len(images)} images; validated on all")
    return report


def report_json(report: ExportReport) -> str:
    """The report as JSON, with ``"ok": true`` first (a failed export prints ``"ok": false`` instead)."""
    return json.dumps({"ok": True, **asdict(report)}, indent=2)
