"""One runtime interface over PyTorch eager (the reference), onnxruntime and TensorRT plans.

Every runtime takes ``x`` float32 [N, C, H, W] in [0, 1] (numpy) and returns ``(logits [N, classes],
spike_counts [N, L])`` as float32 numpy arrays, plus a :class:`ModelInfo` that says what the columns of
``spike_counts`` are and how many MACs each weight layer costs (for eq. 17).

Runtime names (``--runtimes``): ``torch`` (a checkpoint), ``ort-cpu``, ``ort-cuda``, ``ort-trt`` (an ONNX
file; the last two need onnxruntime-gpu), ``tensorrt`` (a ``.plan`` built by ``gee-deploy export --format
tensorrt``; its metadata is read from ``<plan>.json`` or the ONNX file with the same stem).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError, RuntimeUnavailableError

__all__ = ["ModelInfo", "Runtime", "TorchRuntime", "OrtRuntime", "TensorRTRuntime", "RUNTIMES", "open_runtime",
           "default_runtimes", "validate_input", "read_onnx_info"]

RUNTIMES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
_ORT_PROVIDERS = {"ort-cpu": ["CPUExecutionProvider"],
                  "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                  "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
_META_KEYS = ("gee.timesteps", "gee.input_shape", "gee.class_names", "gee.spiking_layers", "gee.neurons_per_layer",
              "gee.layers")


@dataclass(frozen=True)
class ModelInfo:
    """What a deployed model says about itself (the ONNX ``gee.*`` metadata, or the checkpoint)."""

    timesteps: int
    input_shape: tuple[int, int, int]  # [C, H, W]
    class_names: list[str]
    spiking_layers: list[str]  # order of the spike_counts columns
    neurons_per_layer: list[int]
    layers: list[dict]  # weight layers: name, kind, variant, macs, input_is_spikes, spiking_input_layer
    model_name: str = ""
    dataset: str = ""
    variant: str = ""
    checkpoint_sha256: str = ""
    extra: dict = field(default_factory=dict)


def validate_input(x, info: ModelInfo) -> np.ndarray:
    """``x`` as a C-contiguous float32 [N, C, H, W] array, or an :class:`InputError` saying what is wrong."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputError(f"expected dtype float32 (FP32), got {x.dtype}")
    want = tuple(info.input_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise InputError(f"expected shape [N, {', '.join(map(str, want))}] with N >= 1, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise InputError("input holds NaN or Inf")
    return np.ascontiguousarray(x)


class Runtime:
    """Base: ``name``, ``path``, ``info`` and ``run(x) -> (logits, spike_counts)``."""

    name: str
    path: Path
    info: ModelInfo

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.run(validate_input(x, self.info))

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

        from ..checkpoint import file_sha256, load_model
        from ..data import dataset_info
        from .energy import layer_table

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.model = load_model(self.path)
        meta = self.model.checkpoint
        layers, names, sizes = layer_table(self.model)
        dataset = meta.get("dataset", {}).get("name", "")
        classes = list(meta.get("dataset", {}).get("classes") or (dataset_info(dataset).classes if dataset else []))
        m = self.model
        self.info = ModelInfo(m.timesteps, (m.in_channels, m.image_size, m.image_size), classes, names, sizes,
                              layers, meta.get("model_name", ""), dataset, "eager", file_sha256(self.path))

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


def _parse_metadata(meta: dict[str, str], source: str) -> ModelInfo:
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ModelFileError(f"{source} lacks gee-deploy metadata ({', '.join(missing)}); export it with "
                             "`gee-deploy export`")
    try:
        return ModelInfo(
            timesteps=int(meta["gee.timesteps"]),
            input_shape=tuple(int(v) for v in json.loads(meta["gee.input_shape"])),
            class_names=list(json.loads(meta["gee.class_names"])),
            spiking_layers=list(json.loads(meta["gee.spiking_layers"])),
            neurons_per_layer=[int(v) for v in json.loads(meta["gee.neurons_per_layer"])],
            layers=list(json.loads(meta["gee.layers"])),
            model_name=meta.get("gee.model_name", ""),
            dataset=meta.get("gee.dataset", ""),
            variant=meta.get("gee.variant", ""),
            checkpoint_sha256=meta.get("gee.checkpoint_sha256", ""),
            extra={k: v for k, v in meta.items() if k.startswith("gee.") and k not in _META_KEYS})
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{source} has malformed gee-deploy metadata: {e}") from None


def read_onnx_info(path: str | os.PathLike) -> ModelInfo:
    """The :class:`ModelInfo` in an ONNX file's metadata_props (reads the graph without running it)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError
        raise ModelFileError(f"{path} is not a readable ONNX file (truncated or corrupt?): {e}") from None
    return _parse_metadata({p.key: p.value for p in model.metadata_props}, str(path))


class OrtRuntime(Runtime):
    """onnxruntime over a gee-deploy ONNX file.

    Session options are chosen for latency on a shared machine: every graph optimisation
    (ORT_ENABLE_ALL: constant folding, Conv+Add fusion...), sequential execution (the unrolled graph is a
    chain, parallel branches buy nothing), one inter-op thread, ``threads`` intra-op threads. Spinning
    worker threads cut latency a little at batch 1 but burn cores other processes need, so it is opt-in.
    On CUDA the input is bound on the device with IOBinding, so ORT does no extra host copy.

    Args:
        path: ONNX file written by ``gee-deploy export``.
        kind: ``ort-cpu``, ``ort-cuda`` or ``ort-trt``.
        threads: intra-op threads; None = onnxruntime's default (one per physical core).
        spin: let idle intra-op threads spin.
    """

    def __init__(self, path: str | os.PathLike, kind: str = "ort-cpu", threads: int | None = None,
                 spin: bool = False):
        import onnxruntime as ort

        if kind not in _ORT_PROVIDERS:
            raise RuntimeUnavailableError(f"unknown onnxruntime runtime {kind!r}; use one of {', '.join(_ORT_PROVIDERS)}")
        providers = _ORT_PROVIDERS[kind]
        if providers[0] not in ort.get_available_providers():
            raise RuntimeUnavailableError(f"{kind} needs {providers[0]}, which this onnxruntime lacks "
                                          f"(has {', '.join(ort.get_available_providers())})")
        self.name, self.path, self.threads = kind, Path(path), threads
        if not self.path.is_file():
            raise ModelFileError(f"{self.path} not found")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3
        if kind == "ort-trt":  # cache built engines beside the model: the first TensorRT build takes minutes
            cache = str(self.path.parent / f".{self.path.stem}.trt-cache")
            providers = [("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                                        "trt_engine_cache_path": cache,
                                                        "trt_timing_cache_enable": True}), *providers[1:]]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf classes
            raise ModelFileError(f"{self.path} cannot be loaded by onnxruntime: {str(e).splitlines()[0][:300]}") from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if meta.get("gee.streaming") == "true":
            raise ModelFileError(f"{self.path} is a streaming graph (one timestep per call); bench and serve take "
                                 "the T-unrolled export (gee-deploy export without --streaming)")
        self.info = _parse_metadata(meta, str(self.path))
        names = [o.name for o in self.session.get_outputs()]
        if names[:2] != ["logits", "spike_counts"] or self.session.get_inputs()[0].name != "input":
            raise ModelFileError(f"{self.path} does not follow the gee-deploy contract (input 'input', outputs "
                                 f"'logits', 'spike_counts'); it has outputs {names}")
        self.device = "cuda" if kind != "ort-cpu" else "cpu"

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.device == "cpu":
            logits, spikes = self.session.run(["logits", "spike_counts"], {"input": x})
            return logits, spikes
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output("logits", "cpu")
        binding.bind_output("spike_counts", "cpu")
        self.session.run_with_iobinding(binding)
        logits, spikes = binding.copy_outputs_to_cpu()
        return logits, spikes

    def describe(self) -> dict:
        import onnxruntime as ort

        return {**super().describe(), "providers": self.session.get_providers(), "threads": self.threads,
                "onnxruntime": ort.__version__}


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine (TensorRT 10/11 name-based tensor API, ``execute_async_v3``).

    Buffers are torch CUDA tensors, so no pycuda is needed. The plan carries no metadata of its own: it is
    read from ``<plan>.json`` (the ``gee.*`` keys) or from the ONNX file with the plan's stem.
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
        self.info = self._plan_info(self.path)
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
                       for n in ("input", "logits", "spike_counts")}

    @staticmethod
    def _plan_info(path: Path) -> ModelInfo:
        sidecar = path.with_name(path.name + ".json")
        if sidecar.is_file():
            try:
                return _parse_metadata(json.loads(sidecar.read_text()), str(sidecar))
            except json.JSONDecodeError as e:
                raise ModelFileError(f"{sidecar} is not JSON: {e}") from None
        onnx_path = path.with_suffix(".onnx")
        if onnx_path.is_file():
            return read_onnx_info(onnx_path)
        raise ModelFileError(f"no metadata for {path}: expected {sidecar.name} or {onnx_path.name} beside it")

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        xin = torch.from_numpy(x).to("cuda", self.dtypes["input"])
        self.context.set_input_shape("input", tuple(xin.shape))
        self.context.set_tensor_address("input", xin.data_ptr())
        outs = {}
        for name in ("logits", "spike_counts"):
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelFileError(f"TensorRT failed to execute {self.path}")
        stream.synchronize()
        return outs["logits"].float().cpu().numpy(), outs["spike_counts"].float().cpu().numpy()

    def describe(self) -> dict:
        return {**super().describe(), "tensorrt": self._trt.__version__}


def open_runtime(path: str | os.PathLike, kind: str | None = None, threads: int | None = None) -> Runtime:
    """The runtime ``kind`` over ``path``; with no kind, by suffix: .pt torch, .onnx ort-cpu, .plan tensorrt."""
    p = Path(path)
    if kind is None:
        kind = {".pt": "torch", ".pth": "torch", ".onnx": "ort-cpu", ".plan": "tensorrt",
                ".engine": "tensorrt"}.get(p.suffix.lower())
        if kind is None:
            raise ModelFileError(f"cannot tell what {p} is from its suffix (.pt, .onnx, .plan)")
    if kind == "torch":
        return TorchRuntime(p, threads)
    if kind in _ORT_PROVIDERS:
        return OrtRuntime(p, kind, threads)
    if kind == "tensorrt":
        return TensorRTRuntime(p)
    raise RuntimeUnavailableError(f"unknown runtime {kind!r}; use one of {', '.join(RUNTIMES)}")


def default_runtimes(path: str | os.PathLike) -> list[str]:
    """The runtimes worth benchmarking for a file on this machine."""
    suffix = Path(path).suffix.lower()
    if suffix in (".pt", ".pth"):
        return ["torch"]
    if suffix in (".plan", ".engine"):
        return ["tensorrt"]
    import onnxruntime as ort

    have = ort.get_available_providers()
    return ["ort-cpu"] + [k for k in ("ort-cuda",) if _ORT_PROVIDERS[k][0] in have]
