"""The one onnxruntime session factory: export validation, ``--profile``, bench, check and serve all use it.

Options are chosen for latency on a shared machine (onnxruntime docs, "Tune performance"): every graph
optimisation (ORT_ENABLE_ALL: constant folding, Conv+Add fusion, NCHWc layouts), sequential execution (the
unrolled graph is a chain; parallel branches buy nothing), one inter-op thread, ``threads`` intra-op threads,
and no spinning worker threads (spinning cuts batch-1 latency a little but burns cores other processes need).

OpenVINO runs as onnxruntime's OpenVINO execution provider plugin (package ``onnxruntime-ep-openvino``, the
``gee-deploy[openvino]`` extra; onnxruntime docs, "Using a Plugin Execution Provider Library"): the library is
registered once per process (``onnxruntime.register_execution_provider_library``) and its CPU device added with
``SessionOptions.add_provider_for_devices``. OpenVINO's own properties go through the provider's ``load_config``
(OpenVINO docs, "CPU device: supported properties"): ``INFERENCE_PRECISION_HINT`` f32 (exact; the CPU plugin's
default on an AMX or AVX-512-BF16 CPU is bf16, which moves spikes: docs/export.md) or bf16 for ``openvino-bf16``,
``INFERENCE_NUM_THREADS`` = ``threads``, one stream and the LATENCY hint (one request at a time, like the
intra-op settings above). Nodes OpenVINO cannot take fall back to the CPU provider with the options above.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import MissingExtraError, ModelFileError, RuntimeUnavailableError, reason

__all__ = [
    "PROVIDERS",
    "OPTIMIZATION_LEVELS",
    "OPENVINO_PRECISION",
    "import_onnxruntime",
    "require_runtime",
    "precision_of",
    "create_session",
    "openvino_session_options",
    "openvino_unavailable",
]

# runtime name -> execution providers, most preferred first
PROVIDERS = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "openvino": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
    "openvino-bf16": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
}
# OpenVINO runtime name -> its INFERENCE_PRECISION_HINT (the float ops' precision; int8 layers stay int8)
OPENVINO_PRECISION = {"openvino": "f32", "openvino-bf16": "bf16"}
_OPENVINO_EXTRA = (
    "the openvino runtime needs onnxruntime's OpenVINO execution provider plugin: pip install 'gee-deploy[openvino]'"
)
# plugin libraries registered with onnxruntime in this process (registering one twice is an error)
_registered_libraries: set[str] = set()
# ``optimization`` -> onnxruntime's GraphOptimizationLevel member; "all" (the default) adds the layout
# optimisations (NCHWc) to "extended"'s fusions
OPTIMIZATION_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "none": "ORT_DISABLE_ALL",
}


def import_onnxruntime():
    """The ``onnxruntime`` module, from whichever extra installed it: ``gee-deploy[cpu]`` (onnxruntime) or
    ``gee-deploy[gpu]`` (onnxruntime-gpu; both distributions provide the module, so one is installed, never both).

    Raises:
        MissingExtraError: neither is installed.
    """
    try:
        import onnxruntime
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime":  # installed, but something it needs is not: its own message says what
            raise
        raise MissingExtraError(
            "onnxruntime is not installed: pip install 'gee-deploy[cpu]' (or "
            "'gee-deploy[gpu]' for onnxruntime-gpu and TensorRT on a CUDA machine)"
        ) from None
    return onnxruntime


def _openvino_plugin():
    """The ``onnxruntime_ep_openvino`` module, or :class:`MissingExtraError` naming the extra."""
    try:
        import onnxruntime_ep_openvino
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime_ep_openvino":
            raise
        raise MissingExtraError(_OPENVINO_EXTRA) from None
    return onnxruntime_ep_openvino


def require_runtime(kind: str) -> None:
    """Refuse, before any work, a runtime name this installation cannot provide: an unknown name, or an OpenVINO
    runtime without its plugin (the commands call this while parsing options; the onnxruntime providers are
    checked when the session is created).

    Raises:
        RuntimeUnavailableError: unknown ``kind``; MissingExtraError: no OpenVINO plugin (names the extra).
    """
    if kind not in PROVIDERS:
        raise RuntimeUnavailableError(f"unknown onnxruntime runtime {kind!r}; use one of {', '.join(PROVIDERS)}")
    if kind in OPENVINO_PRECISION:
        _openvino_cpu(import_onnxruntime())


def openvino_unavailable() -> str | None:
    """Why the ``openvino`` runtimes cannot run on this machine (the one-line error they would raise), or None
    when they can: the plugin is installed, loads, and offers OpenVINO's CPU device."""
    try:
        _openvino_cpu(import_onnxruntime())
    except RuntimeUnavailableError as e:
        return str(e)
    return None


def precision_of(kind: str) -> str:
    """The precision ``kind`` computes the graph's float ops in: ``bf16`` for ``openvino-bf16``, else ``f32``
    (onnxruntime's CPU and CUDA providers and TensorRT without its fp16 flag compute float32 as written)."""
    return OPENVINO_PRECISION.get(kind, "f32")


def _openvino_cpu(ort):
    """The OpenVINO plugin's ``OrtEpDevice`` for OpenVINO's CPU device, the plugin registered once per process.

    Raises:
        MissingExtraError: the plugin is not installed. RuntimeUnavailableError: it cannot be loaded, or offers no
            CPU device (onnxruntime-ep-openvino 1.8 offers only Intel CPUs, though OpenVINO runs on others:
            onnxruntime pull request 31981, "Allow OpenVINO CPU EP discovery on non-Intel CPUs").
    """
    plugin = _openvino_plugin()
    name = plugin.get_ep_name()
    library = plugin.get_library_path()
    if library not in _registered_libraries:  # once per process, whether or not it offers devices
        try:
            ort.register_execution_provider_library("openvino", library)
        except Exception as e:  # a plugin built for another onnxruntime
            if "already registered" not in str(e):  # by another caller in this process: the same library
                raise RuntimeUnavailableError(
                    f"onnxruntime {ort.__version__} cannot load the OpenVINO plugin: {reason(e, 200)}"
                ) from None
        _registered_libraries.add(library)
    devices = ort.get_ep_devices()
    cpu = [d for d in devices if d.ep_name == name and d.ep_metadata.get("ov_device") == "CPU"]
    if not cpu:
        vendors = sorted({d.device.vendor for d in devices if d.device.type == ort.OrtHardwareDeviceType.CPU})
        why = (
            f"this {'/'.join(vendors) or 'unknown'} CPU (its device discovery lists Intel CPUs only); run on an "
            "Intel CPU or use the ort-cpu runtime"
            if not any("intel" in v.lower() for v in vendors)
            else "this machine; use the ort-cpu runtime"
        )
        raise RuntimeUnavailableError(f"the OpenVINO plugin offers no CPU device on {why}")
    return cpu[0]


def _add_openvino(ort, opts, precision: str, threads: int | None) -> None:
    """Add the OpenVINO plugin's CPU device (:func:`_openvino_cpu`) to ``opts`` with ``precision`` (the
    ``INFERENCE_PRECISION_HINT``), ``threads`` inference threads (None: OpenVINO's default, one per physical
    core), one stream."""
    cpu = _openvino_cpu(ort)
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    opts.add_provider_for_devices([cpu], {"load_config": json.dumps({"CPU": config})})


def create_session(
    model: bytes | str | os.PathLike,
    kind: str = "ort-cpu",
    threads: int | None = None,
    spin: bool = False,
    profile_prefix: str | None = None,
    optimization: str = "all",
):
    """An ``onnxruntime.InferenceSession`` over ``model`` (serialised bytes or a path).

    Args:
        model: the ONNX graph as bytes, or its path.
        kind: ``ort-cpu``, ``ort-cuda``, ``ort-trt``, ``openvino`` or ``openvino-bf16`` (see :data:`PROVIDERS`).
        threads: intra-op threads (and OpenVINO's inference threads); None or 0 = the default (one per physical
            core).
        spin: let idle intra-op threads spin.
        profile_prefix: turn on onnxruntime's profiler, writing ``<prefix>_<date>.json`` (``end_profiling()``).
        optimization: graph optimisation level (:data:`OPTIMIZATION_LEVELS`); below "all" only to measure what
            the optimisations buy (benchmarks).

    Raises:
        RuntimeUnavailableError: ``kind`` or ``optimization`` is unknown, or ``kind``'s provider is missing from
            this onnxruntime (:class:`~gee_deploy.errors.MissingExtraError`: no onnxruntime at all, or no OpenVINO
            plugin for an OpenVINO runtime).
        ModelFileError: the file is missing or onnxruntime cannot load it.
    """
    ort = import_onnxruntime()
    if kind not in PROVIDERS:
        raise RuntimeUnavailableError(f"unknown onnxruntime runtime {kind!r}; use one of {', '.join(PROVIDERS)}")
    if optimization not in OPTIMIZATION_LEVELS:
        raise RuntimeUnavailableError(
            f"unknown graph optimisation level {optimization!r}; use one of {', '.join(OPTIMIZATION_LEVELS)}"
        )
    providers: list = list(PROVIDERS[kind])
    if kind in OPENVINO_PRECISION:
        _openvino_plugin()
    elif providers[0] not in ort.get_available_providers():
        raise RuntimeUnavailableError(
            f"{kind} needs {providers[0]}, which this onnxruntime lacks "
            f"(has {', '.join(ort.get_available_providers())})"
        )
    source = model if isinstance(model, bytes) else str(model)
    if isinstance(source, str) and not Path(source).is_file():
        raise ModelFileError(f"{source} not found")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if kind in OPENVINO_PRECISION:
        _add_openvino(ort, opts, OPENVINO_PRECISION[kind], threads)
    if kind == "ort-trt" and isinstance(source, str):
        # cache built engines beside the model: the first TensorRT build takes minutes
        path = Path(source)
        cache = str(path.parent / f".{path.stem}.trt-cache")
        providers[0] = (
            "TensorrtExecutionProvider",
            {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache, "trt_timing_cache_enable": True},
        )
    try:
        # OpenVINO: add_provider_for_devices chose them; the CPU provider takes what OpenVINO cannot
        return ort.InferenceSession(
            source, sess_options=opts, providers=None if kind in OPENVINO_PRECISION else providers
        )
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf classes
        what = "the graph" if isinstance(source, bytes) else source
        raise ModelFileError(f"{what} cannot be loaded by onnxruntime: {reason(e, 300)}") from None


def openvino_session_options(threads: int | None = None, precision: str = "f32"):
    """``onnxruntime.SessionOptions`` that run a graph on OpenVINO's CPU device through onnxruntime's OpenVINO
    execution provider plugin, for ``onnxruntime.InferenceSession(model, options)`` with no ``providers``: the
    plugin registered and its device added as for the ``openvino`` runtimes (module docstring), with
    ``INFERENCE_PRECISION_HINT`` = ``precision`` (f32 or bf16) and ``threads`` inference threads (None:
    OpenVINO's default). :func:`create_session` with ``kind="openvino"`` adds the project's other options.

    Raises:
        MissingExtraError: the plugin is not installed. RuntimeUnavailableError: it cannot be loaded, or finds no
            CPU device.
    """
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    _add_openvino(ort, opts, precision, threads)
    return opts
