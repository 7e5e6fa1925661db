"""A Triton Inference Server model repository: ``REPO/<name>/config.pbtxt``, ``REPO/<name>/1/model.onnx`` and the
model spec beside them (``REPO/<name>/spec.json``, :func:`gee_deploy.spec.sidecar_path`).

``config.pbtxt`` is :func:`gee_deploy.triton_config.model_config`, the configuration ``gee-deploy serve`` reports
at ``/v2/models/{name}/config``; the instance group is left to Triton (one instance per GPU, or the CPU), and
``cpu_accelerator="openvino"`` names onnxruntime's OpenVINO execution provider for the CPU instances."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import onnx

from ..errors import GeeError
from ..io import publish_mode
from ..spec import ModelSpec
from ..triton_config import model_config, to_pbtxt

__all__ = ["write_triton_repository"]


def write_triton_repository(
    model: onnx.ModelProto,
    spec: ModelSpec,
    repo: str | os.PathLike,
    max_batch_size: int = 64,
    name: str | None = None,
    cpu_accelerator: str | None = None,
) -> Path:
    """Write (or atomically replace) the model directory ``repo/name``; returns it."""
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", spec.model_name or "model")
    try:
        config = to_pbtxt(model_config(name, spec, max_batch_size, graph=model.graph, cpu_accelerator=cpu_accelerator))
    except ValueError as e:
        raise GeeError(f"cannot describe {name} to Triton: {e}") from None
    repo = Path(repo)
    target = repo / name
    try:
        repo.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    except OSError as e:
        raise GeeError(f"cannot write {repo}: {e.strerror or e}") from None
    try:
        (staging / "1").mkdir()
        onnx.save_model(model, str(staging / "1" / "model.onnx"))
        (staging / "config.pbtxt").write_text(config)
        spec.write_sidecar(staging)
        publish_mode(staging)  # mkdtemp made it 0700: Triton's container may run as another user
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=repo))
            os.replace(target, old / name)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
