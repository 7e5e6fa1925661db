"""The runtimes the server serves: onnxruntime (its CPU, CUDA and TensorRT providers, and OpenVINO through its
OpenVINO execution provider plugin) and TensorRT plans, behind one interface.

Every runtime takes ``x`` float32 [N, C, H, W] in [0, 1] (numpy) and returns ``(logits [N, classes],
spike_counts [N, L])`` as float32 numpy arrays; its ``spec`` (:class:`gee_deploy.spec.ModelSpec`) says what
the columns of ``spike_counts`` are and how many MACs each weight layer costs (for eq. 17). A runtime of a
streaming graph (one timestep per call, docs/export.md) answers :meth:`Runtime.step` instead: one step with
the membranes ``v_in.<lif>`` given and ``v_out.<lif>`` returned under the ``v_in`` names, ready to feed back.

The references they are measured against (PyTorch eager, the NIR executor) and the opener by file suffix live
in :mod:`gee_deploy.evaluation.runtimes`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError, RuntimeUnavailableError
from ..ort_session import create_session, import_onnxruntime, precision_of
from ..spec import INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS, ModelSpec

__all__ = ["Runtime", "OrtRuntime", "TensorRTRuntime", "validate_input"]


# Largest |input| taken. Pixels are in [0, 1] (what the loaders produce and the models were trained on),
# but values outside are computed as given, not refused: the robustness protocol without clipping feeds
# them on purpose, and a NIR graph's event input counts. Beyond this bound the graph's float32 arithmetic
# (normalisation, convolution sums) can overflow to Inf/NaN logits, so it is refused (docs/serving.md).
MAX_ABS_INPUT = 1e6


def validate_input(x, spec: ModelSpec) -> np.ndarray:
    """``x`` as a C-contiguous float32 [N, *spec.input_shape] array (our models: [N, C, H, W]), or an
    :class:`InputError` saying what is wrong: not float32, another shape, NaN/Inf, or a value beyond
    +-:data:`MAX_ABS_INPUT`. Values outside [0, 1] within that bound are accepted and computed as given."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputError(f"expected dtype float32 (FP32), got {x.dtype}")
    want = tuple(spec.input_shape)
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise InputError(f"expected shape [N, {', '.join(map(str, want))}] with N >= 1, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise InputError("input holds NaN or Inf")
    worst = float(x.flat[np.abs(x).argmax()]) if x.size else 0.0
    if abs(worst) > MAX_ABS_INPUT:
        raise InputError(
            f"input holds {worst:g}: pixels are in [0, 1] (values outside are computed as given up to "
            f"+-{MAX_ABS_INPUT:g}, beyond which the graph's float32 arithmetic overflows)"
        )
    return np.ascontiguousarray(x)


class Runtime:
    """Base: ``name``, ``path``, ``spec`` and ``run(x) -> (logits, spike_counts)``; for a streaming graph
    ``state_shapes`` and ``step(x, states) -> (logits, spike_counts, states)``."""

    name: str
    path: Path
    spec: ModelSpec
    state_shapes: dict[str, tuple[int, ...]] = {}  # streaming graphs: v_in.<lif> -> per-sample shape

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        """One timestep of a streaming graph.

        Args:
            x: float32 [N, *spec.input_shape], one step's input of N sequences.
            states: ``v_in.<lif>`` -> float32 [N, *state_shapes[name]], the membranes after the previous step
                (zeros at the start of a sequence).

        Returns:
            (logits [N, classes], spike_counts [N, L], the membranes after this step under the same names).
        """
        raise NotImplementedError(f"the {self.name} runtime does not run streaming graphs")

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.run(validate_input(x, self.spec))

    def describe(self) -> dict:
        return {"runtime": self.name, "path": str(self.path)}


class OrtRuntime(Runtime):
    """onnxruntime over a gee-deploy ONNX file.

    The session comes from :func:`gee_deploy.ort_session.create_session` (the options chosen for latency are
    documented there). On CUDA the input is bound on the device with IOBinding, so ORT does no extra host copy.

    Args:
        path: ONNX file written by ``gee-deploy export``.
        kind: ``ort-cpu``, ``ort-cuda``, ``ort-trt``, ``openvino`` (OpenVINO in f32) or ``openvino-bf16``.
        threads: intra-op threads; None = onnxruntime's default (one per physical core).
        spin: let idle intra-op threads spin.
        allow_streaming: open a streaming graph too (it answers :meth:`step`); without it a streaming graph is
            refused, since :meth:`run` answers whole samples.

    Raises:
        ModelFileError: not a gee-deploy graph, or a streaming graph without ``streaming``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str = "ort-cpu",
        threads: int | None = None,
        spin: bool = False,
        allow_streaming: bool = False,
    ):
        self.name, self.path, self.threads = kind, Path(path), threads
        self.session = create_session(self.path, kind, threads, spin)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec = ModelSpec.from_metadata(meta, str(self.path))
        if self.spec.streaming and not allow_streaming:
            raise ModelFileError(
                f"{self.path} is a streaming graph (one timestep per call); bench and check take "
                "the T-unrolled export (gee-deploy export without --streaming)"
            )
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.state_shapes = {name: tuple(inputs[name].shape[1:]) for name in self.spec.state_inputs}
        self._step_outputs = [*OUTPUT_NAMES, *self.spec.state_outputs]
        names = [o.name for o in self.session.get_outputs()]
        if names[:2] != list(OUTPUT_NAMES) or self.session.get_inputs()[0].name != INPUT_NAME:
            raise ModelFileError(
                f"{self.path} does not follow the gee-deploy contract (input {INPUT_NAME!r}, "
                f"outputs {', '.join(map(repr, OUTPUT_NAMES))}); it has outputs {names}"
            )
        self.device = "cuda" if kind in ("ort-cuda", "ort-trt") else "cpu"

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

    def step(self, x: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        if not self.spec.streaming:
            return super().step(x, states)
        logits, spikes, *after = self.session.run(self._step_outputs, {INPUT_NAME: x, **states})
        return logits, spikes, dict(zip(self.spec.state_inputs, after))

    def describe(self) -> dict:
        ort = import_onnxruntime()
        return {
            **super().describe(),
            "providers": self.session.get_providers(),
            "threads": self.threads,
            "precision": precision_of(self.name),
            "onnxruntime": ort.__version__,
        }


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
            raise RuntimeUnavailableError(
                "the tensorrt runtime needs the `tensorrt` package (pip install 'gee-deploy[gpu]') and a CUDA GPU"
            ) from None
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
        self.dtypes = {
            n: torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(n)))).dtype
            for n in (INPUT_NAME, *OUTPUT_NAMES)
        }

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
