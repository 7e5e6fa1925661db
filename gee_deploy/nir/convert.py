"""``convert_nir``: a NIR file from any framework -> validated ONNX file, Triton repository or TensorRT plan.

The graph is written by :mod:`.importer` and, before anything is kept, run by onnxruntime and by the spec-only
NIR executor (:class:`gee_deploy.nir.executor.NIRExecutor`) on the user's inputs (``--images``) or on random inputs of
the declared shape; the checks and limits are our own exports' (:mod:`.validate`, :mod:`gee_deploy.parity`).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import file_sha256
from ..data import load_test_arrays
from ..errors import GeeError, InputError
from ..export.api import ExportReport, validation_dict, write_artefact
from ..export.configs import ValidationConfig
from ..export.errors import ExportError, UnknownOptionError
from ..export.options import ExportOptions
from ..export.validate import ValidationReport, compare_outputs, run_graph, validate_streaming
from ..kinds import ExportFormat, ExportVariant
from ..ort_session import create_session
from ..parity import INT8_PTQ_THRESHOLDS, Outputs, Thresholds
from .executor import read_nir, run_spec
from .importer import NIRImport, file_facts, graph_dt, import_graph, topological_order
from .options import NIRImportOptions

__all__ = ["convert_nir", "load_inputs"]


def load_inputs(path: str | os.PathLike, spec_shape: tuple[int, ...], samples: int | None) -> np.ndarray:
    """The float32 inputs in ``path`` (.npy) [S, *spec_shape], the first ``samples`` of them.

    Raises:
        InputError: missing or unreadable file, not floating point, another shape, or NaN / Inf values.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--images {p} not found")
    try:
        x = np.load(p, allow_pickle=False)
    except Exception as e:  # OSError, ValueError (a pickle or text), EOFError (empty), zipfile errors ...
        why = "not in numpy's .npy format" if "pickled" in str(e) else (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"--images {p} is not a readable .npy array ({why}); save one with numpy.save") from None
    if not isinstance(x, np.ndarray):  # an .npz archive (or a torch .pt, which is a zip too)
        raise InputError(f"--images {p} is an archive, not one .npy array; save the inputs with numpy.save")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(
            f"--images {p} holds {x.dtype}; the graph takes float32 inputs (scale them as the model "
            "was trained, e.g. pixels / 255)"
        )
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(spec_shape) or len(x) == 0:
        raise InputError(f"--images {p} is {list(x.shape)}; the graph takes [S, {', '.join(map(str, spec_shape))}]")
    x = x[:samples] if samples else x
    if not np.isfinite(x).all():
        raise InputError(f"--images {p} holds NaN or Inf")
    return np.ascontiguousarray(x, dtype=np.float32)


def _dataset_images(dataset: str, shape: tuple[int, ...], samples: int) -> np.ndarray | None:
    """The first ``samples`` test images of ``dataset`` (the one a file exported by gee-deploy names), or None
    when there is none, it is not on this machine, or its images are not of ``shape``."""
    if not dataset:
        return None
    try:
        x = load_test_arrays(dataset, None, samples)[0]
    except GeeError:
        return None
    return x if tuple(x.shape[1:]) == tuple(shape) else None


def convert_nir(
    path: str | os.PathLike, out: str | os.PathLike, options: ExportOptions, nir_import: NIRImportOptions
) -> ExportReport:
    """Convert the NIR file ``path`` and validate it against the NIR executor before writing ``out``.

    Args:
        path: a NIR file (HDF5, as ``nir.write`` writes it).
        out: the .onnx file, Triton repository directory or TensorRT .plan file.
        options: the checked export options: the format (onnx, triton or tensorrt), the variant (dense or
            int8), the opset, ``samples`` (how many inputs to validate on, default 256), ``atol`` (max abs logit
            difference for a sample to count as matching) and Triton's / TensorRT's settings, as for checkpoints.
        nir_import: how to read the graph: T, dt, the input mode, the threshold rule and the validation inputs
            (:class:`~gee_deploy.nir.options.NIRImportOptions`).

    With ``options.streaming`` the one-timestep graph (membranes as graph I/O, docs/streaming.md) is written after
    the unrolled graph has been validated against the executor, and T calls of it are checked against the unrolled
    graph.

    Raises:
        UnknownOptionError, InputError, ModelFileError, UnsupportedModuleError: bad input, one line, before any
            work; ExportValidationError: a check failed (nothing is written).
    """
    start = time.perf_counter()
    output_format, variant, samples = options.format, str(options.variant.name), options.samples
    timesteps, dt, images = nir_import.timesteps, nir_import.dt, nir_import.images
    if output_format.name == ExportFormat.NIR:
        raise UnknownOptionError("the input is already a NIR file: write onnx (--out X.onnx), triton or tensorrt")
    if output_format.name == ExportFormat.TENSORRT and options.int8_form is not None:
        raise UnknownOptionError(
            "a NIR import writes int8 layers in the integer form (onnxruntime's MatMulIntegerToFloat), "
            "which TensorRT cannot run: export --variant dense for --format tensorrt"
        )
    if not output_format.out_is_dir and Path(out).is_dir():
        raise ExportError(f"--out {out} is a directory; {output_format.name} writes a file")
    graph = read_nir(path)
    topological_order(graph, str(path))  # unsupported nodes and cycles first: no flag can fix those
    facts = file_facts(graph, str(path))  # our own export's T, classes, dataset and input normalisation
    steps = timesteps or facts.timesteps
    if steps is None:
        raise UnknownOptionError("this NIR file states no T (it describes one step): pass --timesteps")
    file_dt = graph_dt(graph)
    step_dt = dt if dt is not None else file_dt
    if step_dt is None:
        raise UnknownOptionError(
            f"{path} states no dt in its metadata: pass --dt (SpikingJelly and snntorch export with dt = 1e-4 s)"
        )
    opts = NIRImport(
        steps,
        float(step_dt),
        nir_import.input_mode,
        nir_import.threshold_rule,
        variant,
        facts.input_mean,
        facts.input_std,
        facts.normalisation_node,
    )
    opts.check()
    if output_format.name == "tensorrt":
        from ..export.tensorrt import require_tensorrt

        require_tensorrt()
    proto, spec = import_graph(
        graph,
        opts,
        options.opset,
        source=str(path),
        file_sha256=file_sha256(path),
        class_names=facts.class_names,
        dataset=facts.dataset,
    )
    # the one-step graph is written before any validation, so what it cannot hold is refused before any work
    stream = (
        import_graph(
            graph,
            replace(opts, streaming=True),
            options.opset,
            source=str(path),
            file_sha256=file_sha256(path),
            class_names=facts.class_names,
            dataset=facts.dataset,
        )
        if options.streaming
        else None
    )
    cfg = ValidationConfig(thresholds=INT8_PTQ_THRESHOLDS if variant == "int8" else Thresholds())
    cfg = cfg if options.atol is None else replace(cfg, thresholds=replace(cfg.thresholds, atol=options.atol))
    notes = []
    if dt is not None and file_dt is not None and dt != file_dt:
        notes.append(f"--dt {dt} replaces the dt = {file_dt} the file states")
    if timesteps is None:
        notes.append(f"T = {facts.timesteps}, as the file records (--timesteps to change it)")
    if facts.normalisation_node is not None:
        notes.append(
            f"the graph takes pixels in [0, 1]: the file's node {facts.normalisation_node!r} normalises "
            "them, as the model it was exported from did"
        )
    if facts.input_mean is not None:
        notes.append(
            "the graph takes pixels in [0, 1] and normalises them with the file's nir.input_mean / "
            "nir.input_std (a file written before the normalisation was a node of the graph)"
        )
    x = None
    if images is not None:
        x = load_inputs(images, spec.input_shape, samples or cfg.samples)
        notes.append(f"validated on {len(x)} inputs of {images}")
    elif opts.input_mode == "static":
        x = _dataset_images(facts.dataset, spec.input_shape, samples or cfg.samples)
        if x is not None:
            notes.append(f"validated on {len(x)} test images of {facts.dataset}, the file's dataset")
    if x is None:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((samples or cfg.samples, *spec.input_shape), generator=gen).numpy()
        notes.append(
            f"no --images: validated on {len(x)} random inputs uniform in [0, 1) of shape "
            f"[{', '.join(map(str, spec.input_shape))}]; pass --images FILE.npy to validate on real data"
        )
    report = ExportReport(
        str(out),
        output_format.name,
        ExportVariant(variant),
        options.opset,
        options.streaming,
        layers=list(spec.layers),
        macs_per_sample=spec.macs_per_sample,
        dense_macs_per_sample=spec.dense_macs_per_sample,
        notes=notes,
        reference="NIR executor",
    )
    data = proto.SerializeToString()
    val = ValidationReport(samples=len(x))
    _, (logits, counts) = run_graph(create_session(data), x, cfg.batch_size)
    ref = Outputs(*run_spec(graph, spec, x, cfg.batch_size), None, spec.spiking_layers)
    compare_outputs(val, ref, Outputs(logits, counts, None, spec.spiking_layers), cfg.thresholds)
    val.raise_if_failed("NIR import")
    report.validation = validation_dict(val)
    if stream is not None:
        stream_proto, stream_spec = stream
        sv = validate_streaming(stream_proto.SerializeToString(), data, x, stream_spec, cfg)
        report.streaming_validation = validation_dict(sv)
        proto, spec = stream_proto, stream_spec
    from ..export.tensorrt import compatibility_problems

    report.tensorrt_problems = compatibility_problems(proto)
    write_artefact(proto, spec, Path(out), options, report)
    report.seconds = time.perf_counter() - start
    return report
