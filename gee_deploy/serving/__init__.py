"""Serving stage: the runtimes a deployed graph is served on, and the `serve` inference server.

* :mod:`.runtimes`: onnxruntime (CPU, CUDA, TensorRT EPs) and TensorRT plans behind one interface (the evaluation
  stage measures them against their references).
* :mod:`.server`: the Open Inference Protocol (KServe v2 REST, OIP gRPC) with dynamic batching (:mod:`.batcher`),
  on uvicorn and grpc.aio, built from one :class:`~.config.ServeConfig`; :mod:`.app`, :mod:`.grpc_service`,
  :mod:`.codec`, :mod:`.service`, :mod:`.metrics` are its parts, :mod:`.sequences` the state table of a streaming
  graph (Triton's sequence extension) and :mod:`.connection` the one place it goes past uvicorn's public API.

It reads what export wrote (the graph and its :class:`~gee_deploy.spec.ModelSpec`), never the export code. The
names below load on first use, so importing one module of the stage does not start uvicorn, grpc or onnxruntime.
"""

from __future__ import annotations

import importlib

__all__ = ["InferenceServer", "OrtRuntime", "ServeConfig"]

_HOME = {"InferenceServer": ".server", "OrtRuntime": ".runtimes", "ServeConfig": ".config"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name], __name__), name)
