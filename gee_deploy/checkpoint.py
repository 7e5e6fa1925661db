"""Checkpoints that rebuild their model alone and load without executing pickled code.

A checkpoint is a dict saved with torch.save and read with ``torch.load(weights_only=True)``:

    format        "gee-deploy/1"
    model_name    registered architecture
    model_args    resolved create_model kwargs (genes, timesteps, num_classes, ..., mean, std)
    architecture  fingerprint of the module tree (:func:`architecture_fingerprint`): a checkpoint written by
                  another version of an architecture (a pool moved, a kernel changed) is refused, even
                  when its parameter names and shapes still fit; files written before the fingerprint was
                  computed from geometry hold :func:`legacy_architecture_fingerprint` and still load
    recipe        the resolved recipe (dict)
    dataset       {"name", "classes"}
    state_dict    model weights
    optimizer, scheduler   training state (absent in exported-only files)
    epoch         epochs finished
    metrics       last epoch's metrics; best_acc
    rng           CPU RNG state, for an exact resume
    quantisation  (int8 fine-tuned checkpoints only) {"scheme", "layers"}: layers whose forward uses int8
                  fake-quantised weights (:mod:`gee_deploy.quantisation`), re-attached on load
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, GeeError, reason
from .io import atomic_path
from .quantisation import SCHEME, attach_quantisers
from .zoo import create_model

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "load_model", "build_model", "file_sha256",
           "architecture_fingerprint", "legacy_architecture_fingerprint"]

FORMAT = "gee-deploy/1"
_REQUIRED = ("format", "model_name", "model_args", "state_dict")


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    payload = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError, zipfile errors...
        if "Unsupported global" in str(e):  # a pickle of Python objects: never unpickle it here
            raise CheckpointError(f"{p} is not a gee-deploy checkpoint: it holds pickled Python objects, which "
                                  "gee-deploy never loads (checkpoints are read with weights_only=True)") from None
        if "Weights only load failed" in str(e):  # torch's advice to re-run unsafely is not ours to give
            hint = "an ONNX graph? bench and serve take those" if p.suffix == ".onnx" else "another kind of file?"
            raise CheckpointError(f"{p} is not a gee-deploy checkpoint (torch.load cannot read it as weights; "
                                  f"{hint})") from None
        raise CheckpointError(f"{p} is not a readable checkpoint (truncated or corrupt?): {reason(e)}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        raise CheckpointError(f"{p} is not a gee-deploy checkpoint (missing model name, args or weights)")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"{p} has format {ckpt['format']!r}; this version reads {FORMAT!r}")
    return ckpt


# What a module's forward reads besides its parameters: conv, pool and flatten geometry (the fused ConvPool
# carries the geometry of the conv it runs) and the LIF constants. Channel counts come from parameter shapes.
_GEOMETRY = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "output_size",
             "ceil_mode", "count_include_pad", "divisor_override", "return_indices", "start_dim", "end_dim",
             "tau", "v_threshold", "v_reset")


def _plain(value):
    """``value`` as JSON can hold it: tuples become lists, anything else unusual its str()."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the network's explicit geometry, module by module in registration order.

    Each entry holds the module's qualified name and type, the geometry attributes it has among
    ``kernel_size, stride, padding, dilation, groups, padding_mode, output_size, ceil_mode, count_include_pad,
    divisor_override, return_indices, start_dim, end_dim`` (and a LIF's ``tau, v_threshold, v_reset``), and
    the names and shapes of its own parameters and buffers. A moved pool, a changed kernel or stride, or a reordered block changes it; a reworded
    ``extra_repr`` or another torch release's module printout does not.
    """
    entries = []
    for name, module in model.named_modules():
        entries.append({
            "name": name, "type": type(module).__name__,
            "geometry": {key: _plain(getattr(module, key)) for key in _GEOMETRY if hasattr(module, key)},
            "parameters": [[n, list(p.shape)] for n, p in module.named_parameters(recurse=False)],
            "buffers": [[n, list(b.shape)] for n, b in module.named_buffers(recurse=False)],
        })
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def legacy_architecture_fingerprint(model: nn.Module) -> str:
    """The fingerprint checkpoints held before :func:`architecture_fingerprint`: sha256 of ``repr(model)``."""
    return hashlib.sha256(repr(model).encode()).hexdigest()[:16]


def build_model(ckpt: dict, source: str = "checkpoint") -> nn.Module:
    """The model a checkpoint describes, with its weights; raises CheckpointError on an architecture mismatch.

    The stored fingerprint may be the current one or the legacy repr-based one (files written before it).
    """
    model = create_model(ckpt["model_name"], **ckpt["model_args"])
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else "") + \
               (f" {len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "")
        raise CheckpointError(f"{source} does not match architecture {ckpt['model_name']!r}: {what.strip()}")
    stored = ckpt.get("architecture")  # weights fit: is it still the same network around them?
    known = (architecture_fingerprint(model), legacy_architecture_fingerprint(model))
    if stored is not None and stored not in known:
        raise CheckpointError(f"{source} was written by another version of architecture {ckpt['model_name']!r} "
                              "(its layer structure differs from this installation's); retrain or use the matching "
                              "gee-deploy version")
    quant = ckpt.get("quantisation")
    if quant:  # an int8 fine-tuned checkpoint computes with its quantised weights, in eval as in training
        if quant.get("scheme") != SCHEME:
            raise CheckpointError(f"{source} uses quantisation scheme {quant.get('scheme')!r}; this gee-deploy "
                                  f"knows {SCHEME!r}")
        try:
            attach_quantisers(model, quant.get("layers", []))
        except GeeError as e:
            raise CheckpointError(f"{source}: {e}") from None
    return model


def load_model(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """Eval-mode model of checkpoint ``path``; ``model.checkpoint`` keeps the metadata (no weights)."""
    ckpt = load_checkpoint(path, map_location)
    try:
        model = build_model(ckpt, str(path))
    except RuntimeError as e:  # shape mismatches from load_state_dict
        raise CheckpointError(f"{path} does not match architecture {ckpt['model_name']!r}: "
                              f"{str(e).splitlines()[-1].strip()[:200]}") from None
    model.checkpoint = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "scheduler", "rng")}
    return model.eval()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
