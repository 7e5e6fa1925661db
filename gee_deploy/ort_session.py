"""The one onnxruntime session factory: export validation, ``--profile``, bench, check and serve all use it.

Options are chosen for latency on a shared machine (onnxruntime docs, "Tune performance"): every graph
optimisation (ORT_ENABLE_ALL: constant folding, Conv+Add fusion, NCHWc layouts), sequential execution (the
unrolled graph is a chain; parallel branches buy nothing), one inter-op thread, ``threads`` intra-op threads,
and no spinning worker threads (spinning cuts batch-1 latency a little but burns cores other processes need).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingExtraError, ModelFileError, RuntimeUnavailableError, reason

__all__ = ["PROVIDERS", "OPTIMIZATION_LEVELS", "import_onnxruntime", "create_session", "openvino_session_options"]

# runtime name -> execution providers, most preferred first
PROVIDERS = {"ort-cpu": ("CPUExecutionProvider",),
             "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
             "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")}
# ``optimization`` -> onnxruntime's GraphOptimizationLevel member; "all" (the default) adds the layout
# optimisations (NCHWc) to "extended"'s fusions
OPTIMIZATION_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                       "none": "ORT_DISABLE_ALL"}


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
        raise MissingExtraError("onnxruntime is not installed: pip install 'gee-deploy[cpu]' (or "
                                "'gee-deploy[gpu]' for onnxruntime-gpu and TensorRT on a CUDA machine)") from None
    return onnxruntime


def create_session(model: bytes | str | os.PathLike, kind: str = "ort-cpu", threads: int | None = None,
                   spin: bool = False, profile_prefix: str | None = None, optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` over ``model`` (serialised bytes or a path).

    Args:
        model: the ONNX graph as bytes, or its path.
        kind: ``ort-cpu``, ``ort-cuda`` or ``ort-trt`` (see :data:`PROVIDERS`).
        threads: intra-op threads; None or 0 = onnxruntime's default (one per physical core).
        spin: let idle intra-op threads spin.
        profile_prefix: turn on onnxruntime's profiler, writing ``<prefix>_<date>.json`` (``end_profiling()``).
        optimization: graph optimisation level (:data:`OPTIMIZATION_LEVELS`); below "all" only to measure what
            the optimisations buy (benchmarks).

    Raises:
        RuntimeUnavailableError: ``kind`` or ``optimization`` is unknown, or ``kind``'s provider is missing from
            this onnxruntime (:class:`~gee_deploy.errors.MissingExtraError`: no onnxruntime at all).
        ModelFileError: the file is missing or onnxruntime cannot load it.
    """
    ort = import_onnxruntime()
    if kind not in PROVIDERS:
        raise RuntimeUnavailableError(f"unknown onnxruntime runtime {kind!r}; use one of {', '.join(PROVIDERS)}")
    if optimization not in OPTIMIZATION_LEVELS:
        raise RuntimeUnavailableError(f"unknown graph optimisation level {optimization!r}; use one of "
                                      f"{', '.join(OPTIMIZATION_LEVELS)}")
    providers: list = list(PROVIDERS[kind])
    if providers[0] not in ort.get_available_providers():
        raise RuntimeUnavailableError(f"{kind} needs {providers[0]}, which this onnxruntime lacks "
                                      f"(has {', '.join(ort.get_available_providers())})")
    source = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(source).is_file():
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
    if kind == "ort-trt" and not isinstance(model, bytes):
        # cache built engines beside the model: the first TensorRT build takes minutes
        path = Path(source)
        cache = str(path.parent / f".{path.stem}.trt-cache")
        providers[0] = ("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                                      "trt_engine_cache_path": cache,
                                                      "trt_timing_cache_enable": True})
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf classes
        what = "the graph" if isinstance(model, bytes) else source
        raise ModelFileError(f"{what} cannot be loaded by onnxruntime: {reason(e, 300)}") from None


def openvino_session_options(threads: int | None = None, precision: str = "f32"):
    """``onnxruntime.SessionOptions`` that run a graph on OpenVINO's CPU device through onnxruntime's OpenVINO
    execution provider plugin (package ``onnxruntime-ep-openvino``; onnxruntime docs, "Using a Plugin Execution
    Provider Library"), for ``onnxruntime.InferenceSession(model, options)`` with no ``providers``.

    The plugin library is registered once per process (``register_execution_provider_library``) and its CPU
    device added with ``add_provider_for_devices``; OpenVINO's properties go through the provider's
    ``load_config`` (OpenVINO docs, "CPU device"): ``INFERENCE_PRECISION_HINT`` = ``precision`` (f32 by default:
    the CPU plugin's own default on an AMX CPU is bf16, which moves spikes), ``INFERENCE_NUM_THREADS`` =
    ``threads`` (None: OpenVINO's default), one stream and the LATENCY hint. Nodes OpenVINO does not take run on
    onnxruntime's CPU provider.

    Raises:
        MissingExtraError: the plugin is not installed. RuntimeUnavailableError: it cannot be loaded, or finds no
            CPU device.
    """
    import json

    ort = import_onnxruntime()
    try:
        import onnxruntime_ep_openvino as plugin
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime_ep_openvino":
            raise
        raise MissingExtraError("OpenVINO needs onnxruntime's OpenVINO execution provider plugin: "
                                "pip install onnxruntime-ep-openvino") from None
    name = plugin.get_ep_name()
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(name, plugin.get_library_path())
        except Exception as e:  # a plugin built for another onnxruntime
            raise RuntimeUnavailableError(f"onnxruntime {ort.__version__} cannot load the OpenVINO plugin: "
                                          f"{reason(e, 200)}") from None
    cpu = [d for d in ort.get_ep_devices() if d.ep_name == name and d.ep_metadata.get("ov_device") == "CPU"]
    if not cpu:
        raise RuntimeUnavailableError("the OpenVINO plugin found no CPU device on this machine")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_provider_for_devices(cpu[:1], {"load_config": json.dumps({"CPU": config})})
    return opts
