"""Every runtime by name: the served ones (:mod:`gee_deploy.serving.runtimes`) and the references other runtimes
are compared with: PyTorch eager on a checkpoint, and the spec-only NIR executor on a NIR file.

Runtime names (``--runtimes``): ``torch`` (a checkpoint), ``ort-cpu``, ``ort-cuda``, ``ort-trt`` (an ONNX
file; the last two need onnxruntime-gpu), ``openvino`` and ``openvino-bf16`` (an ONNX file on onnxruntime's
OpenVINO execution provider plugin, ``gee-deploy[openvino]``, in f32 or in bf16), ``tensorrt`` (a ``.plan`` built by ``gee-deploy export --format
tensorrt``; its spec is read from the sidecar the export writes beside it), ``nir`` (a NIR file run by the
spec-only NIR executor: the reference of a graph ``gee-deploy export MODEL.nir`` converted from it, whose spec
gives it T, dt, the threshold rule and the input layout).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, RuntimeUnavailableError
from ..kinds import ExportVariant, Precision
from ..ort_session import PROVIDERS, import_onnxruntime
from ..serving.runtimes import OrtRuntime, Runtime, TensorRTRuntime
from ..spec import ModelSpec

__all__ = ["TorchRuntime", "NIRRuntime", "RUNTIMES", "REFERENCES", "open_runtime", "open_each", "default_runtimes"]

RUNTIMES = ("torch", *PROVIDERS, "tensorrt", "nir")
REFERENCES = ("torch", "nir")  # the runtimes other runtimes are compared with


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
        self.spec = describe(
            self.model, class_names=class_names, dataset=dataset, checkpoint_sha256=file_sha256(self.path)
        )

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


class NIRRuntime(Runtime):
    """The spec-only NIR executor (:mod:`gee_deploy.nir.executor`) on a NIR file: the reference of the graphs converted
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
        from ..nir.executor import NIRExecutor, read_nir

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.graph = read_nir(self.path)
        digest = file_sha256(self.path)
        spec = next((s for s in converted if s.checkpoint_sha256 == digest and "threshold_rule" in s.model_args), None)
        if spec is None:
            raise ModelFileError(
                f"{self.path} is a reference only, and no file given with it was converted from it: give the ONNX "
                f"file (or plan) that `gee-deploy export {self.path}` wrote (its spec holds T, dt and the threshold "
                "rule)"
            )
        self.spec = replace(
            spec,
            variant=ExportVariant.NIR,
            layers=tuple(replace(l, precision=Precision.FP32, weight_scales=None) for l in spec.layers),
        )
        self.executor = NIRExecutor(self.graph, float(spec.model_args["dt"]), spec.model_args["threshold_rule"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from ..nir.executor import run_spec

        return run_spec(self.graph, self.spec, x, max(len(x), 1), self.executor)

    def describe(self) -> dict:
        import nir
        import torch

        return {**super().describe(), "threads": torch.get_num_threads(), "nir": nir.__version__}


def open_runtime(
    path: str | os.PathLike, kind: str | None = None, threads: int | None = None, onnx_kind: str = "ort-cpu"
) -> Runtime:
    """The runtime ``kind`` over ``path``; with no kind, by suffix: .pt torch, .onnx ``onnx_kind`` (an onnxruntime
    runtime of :data:`gee_deploy.ort_session.PROVIDERS`), .plan tensorrt."""
    p = Path(path)
    if kind is None:
        kind = {".pt": "torch", ".pth": "torch", ".onnx": onnx_kind, ".plan": "tensorrt", ".engine": "tensorrt"}.get(
            p.suffix.lower()
        )
        if kind is None:
            raise ModelFileError(
                f"cannot tell what {p} is from its suffix (.pt, .onnx, .plan, .engine; .nir beside "
                "the graph converted from it)"
            )
    if kind == "torch":
        return TorchRuntime(p, threads)
    if kind in PROVIDERS:
        return OrtRuntime(p, kind, threads)
    if kind == "tensorrt":
        return TensorRTRuntime(p)
    raise RuntimeUnavailableError(f"unknown runtime {kind!r}; use one of {', '.join(RUNTIMES)}")


def open_each(paths: list[str | os.PathLike], threads: int | None = None, onnx_kind: str = "ort-cpu") -> list[Runtime]:
    """One runtime per file, in the order given: :func:`open_runtime`'s by suffix (ONNX files on ``onnx_kind``),
    and for a .nir file its :class:`NIRRuntime`, opened after the others because it takes T, dt and the threshold
    rule from the spec of the graph converted from it, which must be among them.

    Raises:
        ModelFileError: a file that cannot be opened, or a .nir file without its converted graph.
    """
    nir = {i for i, p in enumerate(paths) if Path(p).suffix.lower() == ".nir"}
    opened = {i: open_runtime(p, threads=threads, onnx_kind=onnx_kind) for i, p in enumerate(paths) if i not in nir}
    specs = [r.spec for r in opened.values()]
    opened.update({i: NIRRuntime(paths[i], specs, threads) for i in nir})
    return [opened[i] for i in range(len(paths))]


def default_runtimes(path: str | os.PathLike) -> list[str]:
    """The runtimes a file is benchmarked on when none are named: a checkpoint on torch, a NIR file on the NIR
    executor, a TensorRT plan on TensorRT; an ONNX file on onnxruntime's CPU provider, and its CUDA provider where
    this onnxruntime has one. OpenVINO only on request (``--runtimes``): it compiles the graph once per batch
    size, and its device depends on the CPU's vendor (docs/serving.md)."""
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
