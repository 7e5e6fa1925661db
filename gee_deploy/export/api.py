"""The export stage's pipeline: a loaded model -> a validated ONNX file, Triton repository or TensorRT plan.

:func:`export_onnx` builds the graph (:func:`onnx_graph`), validates it against the PyTorch model and hands it
to its format's writer (:data:`FILE_WRITERS`); what it does is fixed by one checked
:class:`~gee_deploy.export.options.ExportOptions`. The entry point that loads a checkpoint and dispatches on
the format (NIR included) is :func:`gee_deploy.formats.export_model`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch

from ..data import load_test_arrays
from ..io import atomic_path
from ..kinds import ExportFormat, ExportVariant, Int8Form, Precision, Storage
from ..quantisation import quantised_layers
from ..spec import LayerSpec, ModelSpec
from ..zoo.base import SpikingNet
from .choose import make_chooser
from .errors import ExportError, ExportValidationError
from .options import ExportOptions, export_options, storage_for, validation_for
from .validate import ValidationReport, validate_export, validate_streaming
from .writer import folded_with_scales, write_graph

__all__ = [
    "ExportReport",
    "export_onnx",
    "onnx_graph",
    "build_onnx",
    "validation_data",
    "validation_dict",
    "write_artefact",
    "FILE_WRITERS",
    "report_json",
]


@dataclass
class ExportReport:
    """What one export produced, for the CLI and for scripts."""

    out: str
    format: ExportFormat
    variant: ExportVariant
    opset: int
    streaming: bool
    storage: Storage = Storage.FOLDED
    bytes: int = 0  # size of the written file (a Triton repository: its model.onnx); 0 when not written
    layers: list[LayerSpec] = field(default_factory=list)  # as written, in graph order
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
        lines = [
            f"wrote {self.out} ({self.format}, variant {self.variant}{form}, {self.storage} storage"
            f"{f', opset {self.opset}' if self.opset else ''}{', streaming' if self.streaming else ''}{size})"
        ]
        lines += [
            f"  {l.name:<24} {l.kind:<6} {l.form:<16} {l.precision:<4} MACs {l.macs:>13,} x{l.calls}"
            for l in self.layers
        ]
        lines.append(f"  MACs per sample: {self.macs_per_sample:,} (all dense: {self.dense_macs_per_sample:,})")
        v = self.validation
        if v:
            lines.append(
                f"  validated on {v['samples']} samples: top-1 agreement {v['top1_agreement']:.4f}, "
                f"max |logit diff| {v['max_logit_diff']:.3g}, spikes {v['spikes_deployed']:.0f} (graph) vs "
                f"{v['spikes_reference']:.0f} ({self.reference})"
            )
        if self.streaming_validation:
            s = self.streaming_validation
            lines.append(
                f"  streaming vs unrolled over T calls: max |logit diff| {s['max_logit_diff']:.3g}, "
                f"spike counts diff {s['max_spike_count_diff']:.3g}"
            )
        for p in self.tensorrt_problems:
            lines.append(f"  TensorRT compatibility: {p}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The report as JSON-ready values, each layer in :meth:`~gee_deploy.spec.LayerSpec.as_dict`'s form."""
        return {**asdict(self), "layers": [l.as_dict() for l in self.layers]}


def validation_dict(r: ValidationReport) -> dict:
    """A validation's statistics, sample count and checks table, as the report's ``validation`` holds them."""
    return {**(r.stats.as_dict() if r.stats else {}), "samples": r.samples, "checks": [list(row) for row in r.rows]}


def validation_data(dataset: str, samples: int, data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` test images [S, C, H, W] and labels of ``dataset``."""
    images, labels = load_test_arrays(dataset, data_dir, samples)
    return torch.from_numpy(images), torch.from_numpy(labels)


def onnx_graph(
    model: SpikingNet,
    options: ExportOptions,
    storage: Storage,
    *,
    streaming: bool = False,
    checkpoint_sha256: str = "",
    choices: dict[str, ExportVariant] | None = None,
) -> tuple[onnx.ModelProto, ModelSpec]:
    """The checked ONNX graph of eval-mode ``model`` and its spec (no file written), as ``options`` ask.

    ``storage``: folded (the weights as initializers) or genetic (the genetic parameters and the subgraph
    computing the weights from them; :mod:`gee_deploy.export.weights`), as :func:`storage_for` resolved it.
    ``streaming``: the one-step graph (membrane potentials as inputs/outputs) instead of the T-unrolled one.
    ``choices``: how every genetic layer is written (dense / factorised) by name, as an earlier build chose
    them (the streaming graph repeats the validated unrolled graph's choices); None lets the variant choose.

    Raises:
        UnsupportedModuleError: the model holds something the writer cannot translate.
        ExportError: the written graph fails onnx.checker.
    """
    choose = (
        make_chooser(options.variant, options.profile, model.timesteps, options.opset)
        if choices is None
        else (lambda name, *_: choices[name])
    )
    proto, spec = write_graph(
        model.eval(), choose, options, storage=storage, streaming=streaming, checkpoint_sha256=checkpoint_sha256
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the written graph fails onnx.checker: {str(e).splitlines()[0][:300]}") from None
    return proto, spec


def build_onnx(
    model: SpikingNet,
    variant: ExportVariant | str = ExportVariant.DENSE,
    *,
    streaming: bool = False,
    storage: Storage | str | None = Storage.FOLDED,
    **settings,
) -> tuple[onnx.ModelProto, ModelSpec]:
    """Python API: the checked ONNX graph of eval-mode ``model`` and its spec (no file written).

    ``storage``: folded (the default here), genetic, or None (:func:`storage_for`). ``streaming``: the one-step
    graph. ``settings``: the other keywords of :func:`~gee_deploy.export.options.export_options` (``opset``,
    ``allow_int8``, ``profile``), checked there.

    Raises:
        UnknownOptionError: unknown variant, unsupported opset, or ``allow_int8`` with a fixed variant.
        UnsupportedModuleError: the model holds something the writer cannot translate.
        ExportError: the written graph fails onnx.checker.
    """
    options = export_options(variant=variant, storage=storage, **settings)
    return onnx_graph(model, options, storage_for(model, options), streaming=streaming)


def _smaller_storage(
    genetic: onnx.ModelProto, spec: ModelSpec
) -> tuple[onnx.ModelProto, ModelSpec, Storage, list[str]]:
    """The default storage of a graph with int8 layers: genetic, unless folding makes the file smaller.

    An int8 code takes one byte where the encodings it is computed from take four per parameter, so a model
    with few genes per weight (ResNet-18/19 at g = 150) ships smaller folded; the user's number is the file.
    """
    folded, folded_spec = folded_with_scales(genetic, spec)
    if folded.ByteSize() >= genetic.ByteSize():
        return genetic, spec, Storage.GENETIC, []
    note = (
        f"folded storage ({folded.ByteSize() / 2**20:.2f} MiB): its int8 codes are smaller than the genetic "
        f"parameters ({genetic.ByteSize() / 2**20:.2f} MiB); --storage genetic stores the genetic parameters "
        "instead"
    )
    return folded, folded_spec, Storage.FOLDED, [note]


def export_onnx(
    model: SpikingNet,
    out: str | os.PathLike,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    options: ExportOptions,
    checkpoint_sha256: str = "",
) -> ExportReport:
    """Export an already loaded eval-mode model as an ONNX file, Triton repository or TensorRT plan, as
    ``options`` ask; validate on ``images`` [S, C, H, W] (and ``labels`` [S], for accuracy) before anything is kept.

    Raises:
        ExportError: no images; ``out`` a directory where the format writes a file; the graph cannot be written.
        UnknownOptionError: ``--storage genetic`` for a dense twin.
        ExportValidationError: a check failed (every failure listed; nothing written).
    """
    start = time.perf_counter()
    output_format = options.format
    storage = storage_for(model, options)
    cfg = validation_for(model, options)
    if images is None or len(images) == 0:
        raise ExportError("validation needs at least one image")
    if not output_format.out_is_dir and Path(out).is_dir():
        raise ExportError(f"--out {out} is a directory; {output_format.name} writes a file")
    if output_format.name == ExportFormat.TENSORRT:
        from .tensorrt import require_tensorrt

        require_tensorrt()
    unrolled, spec = onnx_graph(model, options, storage, checkpoint_sha256=checkpoint_sha256)
    notes: list[str] = []
    if (
        options.storage is None
        and storage == Storage.GENETIC
        and any(l.precision == Precision.INT8 for l in spec.layers)
    ):
        unrolled, spec, storage, notes = _smaller_storage(unrolled, spec)
    report = ExportReport(
        str(out),
        output_format.name,
        options.variant.name,
        options.opset,
        options.streaming,
        storage,
        layers=list(spec.layers),
        macs_per_sample=spec.macs_per_sample,
        dense_macs_per_sample=spec.dense_macs_per_sample,
        notes=notes,
        int8_form=options.int8_form if any(l.precision == Precision.INT8 for l in spec.layers) else None,
    )
    data = unrolled.SerializeToString()
    try:
        val = validate_export(model, data, images, labels, cfg)
    except ExportValidationError as e:
        if any(l.precision == Precision.INT8 for l in spec.layers) and not quantised_layers(model):
            raise ExportValidationError(
                f"{e}\nhint: int8 weights this checkpoint was not trained with moved it; "
                f"`gee-deploy quantize CHECKPOINT --out Q.pt` fine-tunes it so its int8 "
                f"export is exact",
                e.failures,
            ) from None
        raise
    report.validation = validation_dict(val)
    final = unrolled
    if options.streaming:
        # same per-layer choices as the validated unrolled graph, one step per call
        chosen = {l.name: l.variant for l in spec.layers}
        final, spec = onnx_graph(
            model, options, storage, streaming=True, checkpoint_sha256=checkpoint_sha256, choices=chosen
        )
        sv = validate_streaming(final.SerializeToString(), data, images, spec, cfg)
        report.streaming_validation = validation_dict(sv)
    from .tensorrt import compatibility_problems

    report.tensorrt_problems = compatibility_problems(final)
    write_artefact(final, spec, Path(out), options, report)
    report.seconds = time.perf_counter() - start
    return report


def _write_onnx(proto: onnx.ModelProto, spec: ModelSpec, out: Path, options: ExportOptions) -> Path:
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
    return out


def _write_triton(proto: onnx.ModelProto, spec: ModelSpec, out: Path, options: ExportOptions) -> Path:
    from .triton import write_triton_repository

    return Path(
        write_triton_repository(proto, spec, out, options.max_batch_size, cpu_accelerator=options.triton_accelerator)
    )


def _write_tensorrt(proto: onnx.ModelProto, spec: ModelSpec, out: Path, options: ExportOptions) -> Path:
    from .tensorrt import build_plan

    build_plan(proto, out, max_batch_size=options.max_batch_size, fp16=options.fp16)
    spec.write_sidecar(out)
    return out


# the writer of each format that holds an ONNX graph: (graph, spec, --out, options) -> the path written; NIR's
# is gee_deploy.nir.export, a stage this one does not import (gee_deploy.formats dispatches on the format)
FILE_WRITERS = {
    ExportFormat.ONNX: _write_onnx,
    ExportFormat.TRITON: _write_triton,
    ExportFormat.TENSORRT: _write_tensorrt,
}


def write_artefact(
    proto: onnx.ModelProto, spec: ModelSpec, out: Path, options: ExportOptions, report: ExportReport
) -> None:
    """Write ``proto`` in ``options.format`` with its writer in :data:`FILE_WRITERS` (``report.bytes``: the
    file's size, a Triton repository's model.onnx; ``report.out``: what was written); artefacts without
    metadata of their own get the spec as a sidecar."""
    note_replaced(out, report)
    written = FILE_WRITERS[options.format.name](proto, spec, out, options)
    report.out = str(written)
    sized = written / "1" / "model.onnx" if options.format.out_is_dir else written
    report.bytes = sized.stat().st_size if sized.is_file() else 0


def note_replaced(out: Path, report: ExportReport) -> None:
    """Add a note to ``report`` when ``out`` exists (the export is about to replace it)."""
    if out.exists():
        report.notes.append(f"replaced the existing {out}")


def report_json(report: ExportReport) -> str:
    """The report as JSON, with ``"ok": true`` first (a failed export prints ``"ok": false`` instead)."""
    return json.dumps({"ok": True, **report.as_dict()}, indent=2)
