"""One runtime interface over PyTorch eager (the reference), onnxruntime and TensorRT plans.

Every runtime takes ``x`` float32 [N, C, H, W] in [0, 1] (numpy) and returns ``(logits [N, classes],
spike_counts [N, L])`` as float32 numpy arrays; its ``spec`` (:class:`gee_deploy.spec.ModelSpec`) says what
the columns of ``spike_counts`` are and how many MACs each weight layer costs (for eq. 17).

Runtime names (``--runtimes``): ``torch`` (a checkpoint), ``ort-cpu``, ``ort-cuda``, ``ort-trt`` (an ONNX
file; the last two need onnxruntime-gpu), ``tensorrt`` (a ``.plan`` built by ``gee-deploy export --format
tensorrt``; its spec is read from the sidecar the export writes beside it), ``nir`` (a NIR file run by the
spec-only NIR executor: the reference of a graph ``gee-deploy export MODEL.nir`` converted from it, whose spec
gives it T, dt, the threshold rule and the input layout).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError, RuntimeUnavailableError
from ..ort_session import PROVIDERS, create_session, import_onnxruntime
from ..spec import INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS, ModelSpec

__all__ = ["Runtime", "TorchRuntime", "OrtRuntime", "TensorRTRuntime", "NIRRuntime", "RUNTIMES", "REFERENCES",
           "open_runtime", "default_runtimes", "validate_input"]

RUNTIMES = ("torch", *PROVIDERS, "tensorrt", "nir")
REFERENCES = ("torch", "nir")  # the runtimes other runtimes are compared with


def validate_input(x, spec: ModelSpec) -> np.ndarray:
    """``x`` as a C-contiguous float32 [N, *spec.input_shape] array (our models: [N, C, H, W]), or an
    :class:`InputError` saying what is wrong."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputError(f"expected dtype float32 (FP32), got {x.dtype}")
    want = tuple(spec.input_shape)
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise InputError(f"expected shape [N, {', '.join(map(str, want))}] with N >= 1, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise InputError("input holds NaN or Inf")
    return np.ascontiguousarray(x)


class Runtime:
    """Base: ``name``, ``path``, ``spec`` and ``run(x) -> (logits, spike_counts)``."""

    name: str
    path: Path
    spec: ModelSpec

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.run(validate_input(x, self.spec))

    def describe(self) -> dict:
        return {"runtime": self.name, "path": str(self.path)}


class TorchRuntime(Runtime):
    """PyTorch eager on the checkpoint: the reference every other runtime is compared with.

    Args:
        path: a gee-deploy checkpoint.
        threads: torch intra-op threads (process-wide); None leaves torch's default.
    """

    name = "torch"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import torch

        from ..checkpoint import file_sha256, load_model, model_origin
        from ..walk import describe

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.model = load_model(self.path)
        class_names, dataset = model_origin(self.model)
        self.spec = describe(self.model, class_names=class_names, dataset=dataset,
                             checkpoint_sha256=file_sha256(self.path))

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from ..neurons import SpikeRecorder

        with torch.inference_mode(), SpikeRecorder(self.model) as rec:
            logits = self.model(torch.from_numpy(x))
            spikes = rec.stacked()  # [N, L]
        return logits.numpy(), spikes.float().numpy()

    def describe(self) -> dict:
        import torch

        return {**super().describe(), "threads": torch.get_num_threads(), "torch": torch.__version__}


class OrtRuntime(Runtime):
    """onnxruntime over a gee-deploy ONNX file.

    The session comes from :func:`gee_deploy.ort_session.create_session` (the options chosen for latency are
    documented there). On CUDA the input is bound on the device with IOBinding, so ORT does no extra host copy.

    Args:
        path: ONNX file written by ``gee-deploy export``.
        kind: ``ort-cpu``, ``ort-cuda`` or ``ort-trt``.
        threads: intra-op threads; None = onnxruntime's default (one per physical core).
        spin: let idle intra-op threads spin.
    """

    def __init__(self, path: str | os.PathLike, kind: str = "ort-cpu", threads: int | None = None,
                 spin: bool = False):
        self.name, self.path, self.threads = kind, Path(path), threads
        self.session = create_session(self.path, kind, threads, spin)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec = ModelSpec.from_metadata(meta, str(self.path))
        if self.spec.streaming:
            raise ModelFileError(f"{self.path} is a streaming graph (one timestep per call); bench and serve take "
                                 "the T-unrolled export (gee-deploy export without --streaming)")
        names = [o.name for o in self.session.get_outputs()]
        if names[:2] != list(OUTPUT_NAMES) or self.session.get_inputs()[0].name != INPUT_NAME:
            raise ModelFileError(f"{self.path} does not follow the gee-deploy contract (input {INPUT_NAME!r}, "
                                 f"outputs {', '.join(map(repr, OUTPUT_NAMES))}); it has outputs {names}")
        self.device = "cuda" if kind != "ort-cpu" else "cpu"

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.device == "cpu":
            logits, spikes = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
            return logits, spikes
        ort = import_onnxruntime()
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for name in OUTPUT_NAMES:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        logits, spikes = binding.copy_outputs_to_cpu()
        return logits, spikes

    def describe(self) -> dict:
        ort = import_onnxruntime()
        return {**super().describe(), "providers": self.session.get_providers(), "threads": self.threads,
                "onnxruntime": ort.__version__}


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine (TensorRT 10/11 name-based tensor API, ``execute_async_v3``).

    Buffers are torch CUDA tensors, so no pycuda is needed. The plan carries no metadata of its own: its spec is
    the sidecar ``gee-deploy export --format tensorrt`` writes beside it (:func:`gee_deploy.spec.sidecar_path`).
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike):
        try:
            import tensorrt as trt
        except ImportError:
            raise RuntimeUnavailableError("the tensorrt runtime needs the `tensorrt` package (pip install "
                                          "'gee-deploy[gpu]') and a CUDA GPU") from None
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailableError("the tensorrt runtime needs a CUDA GPU")
        self.path = Path(path)
        self.spec = ModelSpec.from_artefact(self.path)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine it deserialises
        try:
            engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except OSError as e:
            raise ModelFileError(f"cannot read {self.path}: {e.strerror}") from None
        if engine is None:
            raise ModelFileError(f"{self.path} is not a TensorRT plan for this TensorRT version and GPU")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.dtypes = {n: torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(n)))).dtype
                       for n in (INPUT_NAME, *OUTPUT_NAMES)}

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        xin = torch.from_numpy(x).to("cuda", self.dtypes[INPUT_NAME])
        self.context.set_input_shape(INPUT_NAME, tuple(xin.shape))
        self.context.set_tensor_address(INPUT_NAME, xin.data_ptr())
        outs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelFileError(f"TensorRT failed to execute {self.path}")
        stream.synchronize()
        return outs[LOGITS].float().cpu().numpy(), outs[SPIKE_COUNTS].float().cpu().numpy()

    def describe(self) -> dict:
        return {**super().describe(), "tensorrt": self._trt.__version__}


class NIRRuntime(Runtime):
    """The spec-only NIR executor (:mod:`gee_deploy.nirexec`) on a NIR file: the reference of the graphs converted
    from it, for a model that has no PyTorch checkpoint here.

    Args:
        path: the NIR file.
        converted: the specs of the other models being run; the one converted from this file (same sha256) gives
            T, dt, the threshold rule, the input layout and the layer table (as fp32 layers: the reference).
        threads: torch intra-op threads (process-wide); None leaves torch's default.

    Raises:
        ModelFileError: no converted graph among ``converted``, or an unreadable file.
    """

    name = "nir"

    def __init__(self, path: str | os.PathLike, converted: list[ModelSpec], threads: int | None = None):
        from dataclasses import replace

        import torch

        from ..checkpoint import file_sha256
        from ..nirexec import NIRExecutor, read_nir

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.graph = read_nir(self.path)
        digest = file_sha256(self.path)
        spec = next((s for s in converted if s.checkpoint_sha256 == digest and "threshold_rule" in s.model_args),
                    None)
        if spec is None:
            raise ModelFileError(f"{self.path} is a reference only: give the ONNX file (or plan) that `gee-deploy "
                                 "export` converted from it too (its spec holds T, dt and the threshold rule)")
        self.spec = replace(spec, variant="nir", layers=tuple(replace(l, precision="fp32", weight_scales=None)
                                                              for l in spec.layers))
        self.executor = NIRExecutor(self.graph, float(spec.model_args["dt"]), spec.model_args["threshold_rule"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from ..nirexec import run_spec

        return run_spec(self.graph, self.spec, x, max(len(x), 1), self.executor)

    def describe(self) -> dict:
        import nir
        import torch

        return {**super().describe(), "threads": torch.get_num_threads(), "nir": nir.__version__}


def open_runtime(path: str | os.PathLike, kind: str | None = None, threads: int | None = None) -> Runtime:
    """The runtime ``kind`` over ``path``; with no kind, by suffix: .pt torch, .onnx ort-cpu, .plan tensorrt."""
    p = Path(path)
    if kind is None:
        kind = {".pt": "torch", ".pth": "torch", ".onnx": "ort-cpu", ".plan": "tensorrt",
                ".engine": "tensorrt"}.get(p.suffix.lower())
        if kind is None:
            raise ModelFileError(f"cannot tell what {p} is from its suffix (.pt, .onnx, .plan, .engine; .nir beside "
                                 "the graph converted from it)")
    if kind == "torch":
        return TorchRuntime(p, threads)
    if kind in PROVIDERS:
        return OrtRuntime(p, kind, threads)
    if kind == "tensorrt":
        return TensorRTRuntime(p)
    raise RuntimeUnavailableError(f"unknown runtime {kind!r}; use one of {', '.join(RUNTIMES)}")


def open_each(paths: list[str | os.PathLike], threads: int | None = None) -> list[Runtime]:
    """One runtime per file, in the order given: :func:`open_runtime`'s by suffix, and for a .nir file its
    :class:`NIRRuntime`, opened after the others because it takes T, dt and the threshold rule from the spec
    of the graph converted from it, which must be among them.

    Raises:
        ModelFileError: a file that cannot be opened, or a .nir file without its converted graph.
    """
    nir = {i for i, p in enumerate(paths) if Path(p).suffix.lower() == ".nir"}
    opened = {i: open_runtime(p, threads=threads) for i, p in enumerate(paths) if i not in nir}
    specs = [r.spec for r in opened.values()]
    opened.update({i: NIRRuntime(paths[i], specs, threads) for i in nir})
    return [opened[i] for i in range(len(paths))]


def default_runtimes(path: str | os.PathLike) -> list[str]:
    """The runtimes worth benchmarking for a file on this machine."""
    suffix = Path(path).suffix.lower()
    if suffix in (".pt", ".pth"):
        return ["torch"]
    if suffix == ".nir":
        return ["nir"]
    if suffix in (".plan", ".engine"):
        return ["tensorrt"]
    ort = import_onnxruntime()
    have = ort.get_available_providers()
    return ["ort-cpu"] + [k for k in ("ort-cuda",) if PROVIDERS[k][0] in have]
