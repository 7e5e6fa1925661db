"""A Triton Inference Server model repository: ``REPO/<name>/config.pbtxt``, ``REPO/<name>/1/model.onnx`` and the
model spec beside them (``REPO/<name>/spec.json``, :func:`gee_deploy.spec.sidecar_path`)."""
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

__all__ = ["triton_config", "write_triton_repository"]

_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
          onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32"}


def _tensor(v: onnx.ValueInfoProto) -> str:
    tt = v.type.tensor_type
    dims = ", ".join(str(d.dim_value) for d in tt.shape.dim[1:])  # axis 0 is Triton's batch axis
    return f'  {{\n    name: "{v.name}"\n    data_type: {_TYPES[tt.elem_type]}\n    dims: [ {dims} ]\n  }}'


def triton_config(model: onnx.ModelProto, spec: ModelSpec, name: str, max_batch_size: int) -> str:
    """config.pbtxt text: onnxruntime backend, batch axis 0, dynamic batching."""
    preferred = sorted({b for b in (max_batch_size // 4, max_batch_size // 2, max_batch_size) if b > 0})
    return "\n".join([
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor(v) for v in model.graph.input) + "\n]",
        "output [\n" + ",\n".join(_tensor(v) for v in model.graph.output) + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        "  max_queue_delay_microseconds: 500\n}",
        'parameters: {\n  key: "' + ModelSpec.key("timesteps") + '"\n  value: { string_value: "'
        + str(spec.timesteps) + '" }\n}',
        "",
    ])


def write_triton_repository(model: onnx.ModelProto, spec: ModelSpec, repo: str | os.PathLike,
                            max_batch_size: int = 64, name: str | None = None) -> Path:
    """Write (or atomically replace) the model directory ``repo/name``; returns it."""
    if max_batch_size < 1:
        raise GeeError(f"max batch size must be >= 1, got {max_batch_size}")
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", spec.model_name or "model")
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
        (staging / "config.pbtxt").write_text(triton_config(model, spec, name, max_batch_size))
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
