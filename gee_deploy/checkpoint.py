"""Checkpoints that rebuild their model alone and load without executing pickled code.

What a checkpoint holds is :class:`Checkpoint`, written and read here only: :meth:`Checkpoint.to_payload` is the
dict saved with torch.save, :meth:`Checkpoint.from_payload` reads it back (``torch.load(weights_only=True)``)
through the one reader of stored layouts, :func:`_stored_layout`. The payload's keys (checkpoint format 1, the
layout gee-deploy has written since b36eec0):

    format        "gee-deploy/1": the format's version tag (:data:`FORMAT_VERSION`)
    model_name    registered architecture
    model_args    resolved create_model kwargs (genes, timesteps, num_classes, ..., mean, std)
    architecture  fingerprint of the module tree (:func:`architecture_fingerprint`): a checkpoint written by
                  another version of an architecture (a pool moved, a kernel changed) is refused, even
                  when its parameter names and shapes still fit; absent from a checkpoint built in Python
                  without one (not checked)
    recipe        the resolved recipe (dict)
    dataset       {"name", "classes"}; absent when the checkpoint names none
    state_dict    model weights
    optimizer, scheduler   training state (last.pt only: what --resume continues from)
    scaler        (float16 mixed precision only) the GradScaler's state, for an exact resume
    epoch         epochs finished
    metrics       last epoch's metrics (a train.jsonl row); best_acc
    quantisation  (int8 fine-tuned checkpoints only) {"scheme", "layers", "epochs", "lr_scale", "source",
                  "source_sha256"}: layers whose forward uses int8 fake-quantised weights
                  (:mod:`gee_deploy.quantisation`), re-attached on load, and the fine-tune that made them

No RNG state is stored: the trainer re-seeds every epoch from the recipe's seed (:mod:`gee_deploy.training.trainer`),
so a resumed run needs none.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import dataset_info
from .errors import CheckpointError, GeeError, reason
from .io import atomic_path, format_version
from .quantisation import SCHEME, attach_quantisers, quantised_layers
from .zoo import create_model
from .zoo.base import SpikingNet

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "DatasetRecord",
    "QuantisationRecord",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "build_model",
    "model_origin",
    "file_sha256",
    "architecture_fingerprint",
]

FORMAT_VERSION = 1  # the layout the module docstring lists
_FORMAT_PREFIX = "gee-deploy/"
FORMAT = f"{_FORMAT_PREFIX}{FORMAT_VERSION}"
_REQUIRED = ("model_name", "model_args", "state_dict", "recipe", "epoch", "metrics", "best_acc")
_OPTIONAL = ("architecture", "dataset", "quantisation", "optimizer", "scheduler", "scaler")


@dataclass(frozen=True, kw_only=True)
class DatasetRecord:
    """The dataset a model was trained on: its name (:func:`gee_deploy.data.dataset_info`) and class names."""

    name: str
    classes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class QuantisationRecord:
    """An int8 fine-tuned checkpoint's quantised layers and the fine-tune that made them.

    Attributes:
        scheme: :data:`gee_deploy.quantisation.SCHEME` (a checkpoint of another scheme is refused).
        layers: the layers whose forward uses int8 fake-quantised weights
            (:func:`~gee_deploy.quantisation.quantised_layers`).
        epochs, lr_scale: the fine-tune's length (passes over the training split) and peak learning rate (x the
            recipe's); None in a record that does not say.
        source, source_sha256: the fp32 checkpoint it was fine-tuned from ("" when unknown).
    """

    scheme: str = SCHEME
    layers: tuple[str, ...]
    epochs: float | None = None
    lr_scale: float | None = None
    source: str = ""
    source_sha256: str = ""

    @classmethod
    def of_model(cls, model: nn.Module, **provenance) -> QuantisationRecord | None:
        """The record of ``model``'s quantised layers (None when it has none); ``provenance``: the other fields."""
        layers = quantised_layers(model)
        return cls(layers=tuple(layers), **provenance) if layers else None


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Everything a checkpoint holds (the module docstring lists the payload keys); built by keyword.

    ``load_model(path).checkpoint`` is the same record without the tensors (:meth:`metadata`).
    """

    model_name: str
    model_args: dict[str, Any]
    state_dict: Mapping[str, torch.Tensor] | None  # None in :meth:`metadata`
    architecture: str | None = None  # None: a checkpoint built in Python without one (not checked)
    recipe: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetRecord | None = None
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    best_acc: float = 0.0
    quantisation: QuantisationRecord | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None

    @property
    def dataset_name(self) -> str:
        """The training dataset's name, "" when the checkpoint names none."""
        return self.dataset.name if self.dataset is not None else ""

    def class_names(self, num_classes: int) -> tuple[str, ...]:
        """One name per logit column: the checkpoint's class names, else its dataset's, else "0".."num_classes-1"
        (whichever first has ``num_classes`` of them)."""
        classes = self.dataset.classes if self.dataset is not None else ()
        if len(classes) != num_classes and self.dataset_name:
            try:
                classes = tuple(dataset_info(self.dataset_name).classes)
            except GeeError:  # a dataset this installation does not know
                classes = ()
        if len(classes) != num_classes:
            classes = tuple(str(i) for i in range(num_classes))
        return tuple(classes)

    def metadata(self) -> Checkpoint:
        """This record without weights and training state."""
        return replace(self, state_dict=None, optimizer=None, scheduler=None, scaler=None)

    # -- the payload torch.save writes ---------------------------------------------------------------------

    def to_payload(self) -> dict:
        """The dict saved with torch.save: plain containers and tensors only (``weights_only`` loads it), in
        checkpoint format :data:`FORMAT_VERSION`'s layout (the module docstring). Absent parts are left out."""
        if self.state_dict is None:
            raise ValueError("a checkpoint without weights (Checkpoint.metadata()) cannot be saved")
        payload: dict[str, Any] = {"format": FORMAT, "model_name": self.model_name, "model_args": self.model_args}
        if self.architecture is not None:
            payload["architecture"] = self.architecture
        payload["recipe"] = self.recipe
        if self.dataset is not None:
            payload["dataset"] = {"name": self.dataset.name, "classes": list(self.dataset.classes)}
        payload.update(state_dict=self.state_dict, epoch=self.epoch, metrics=self.metrics, best_acc=self.best_acc)
        if self.quantisation is not None:
            q = self.quantisation
            payload["quantisation"] = {
                "scheme": q.scheme,
                "layers": list(q.layers),
                "epochs": q.epochs,
                "lr_scale": q.lr_scale,
                "source": q.source,
                "source_sha256": q.source_sha256,
            }
        if self.optimizer is not None:
            payload["optimizer"] = self.optimizer
        if self.scheduler is not None:
            payload["scheduler"] = self.scheduler
        if self.scaler is not None:
            payload["scaler"] = self.scaler
        return payload

    @classmethod
    def from_payload(cls, payload: Any, source: str = "checkpoint") -> Checkpoint:
        """The checkpoint in a loaded payload (:func:`_stored_layout` reads its layout).

        Raises:
            CheckpointError: not a gee-deploy payload, another or a newer format, or a part of the wrong type.
        """
        stored = _stored_layout(payload, source)
        try:
            dataset, quant = stored["dataset"] or None, stored["quantisation"] or None
            return cls(
                model_name=_typed(stored["model_name"], str, "model_name"),
                model_args=dict(_typed(stored["model_args"], dict, "model_args")),
                state_dict=_typed(stored["state_dict"], dict, "state_dict"),
                architecture=stored["architecture"],
                recipe=dict(_typed(stored["recipe"], dict, "recipe")),
                dataset=None
                if dataset is None
                else DatasetRecord(
                    name=str(_typed(dataset, dict, "dataset").get("name") or ""),
                    classes=tuple(str(c) for c in dataset.get("classes") or ()),
                ),
                epoch=int(stored["epoch"]),
                metrics=dict(_typed(stored["metrics"], dict, "metrics")),
                best_acc=float(stored["best_acc"]),
                quantisation=None
                if quant is None
                else QuantisationRecord(
                    scheme=str(_typed(quant, dict, "quantisation").get("scheme")),
                    layers=tuple(str(n) for n in quant.get("layers") or ()),
                    epochs=quant.get("epochs"),
                    lr_scale=quant.get("lr_scale"),
                    source=str(quant.get("source") or ""),
                    source_sha256=str(quant.get("source_sha256") or ""),
                ),
                optimizer=stored["optimizer"],
                scheduler=stored["scheduler"],
                scaler=stored["scaler"],
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source} is not a readable gee-deploy checkpoint: {e}") from None


def _stored_layout(payload: Any, source: str) -> dict:
    """``payload`` with every key of this version's layout (absent optional parts None): the one reader of the
    checkpoint layouts files hold.

    Format 1 is the only one: what :meth:`Checkpoint.to_payload` writes and gee-deploy has written since b36eec0
    (tests/test_checkpoint.py builds that commit's files). Layouts of development versions before it (no recipe
    or metrics, the fingerprint of ``repr(model)``) were never released and are not read.

    Raises:
        CheckpointError: not a gee-deploy payload, another format, a newer version, or a required key missing.
    """
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{source} is not a gee-deploy checkpoint (missing model name, args or weights)")
    version = format_version(payload["format"], _FORMAT_PREFIX)
    if version is None or version < 1:
        raise CheckpointError(f"{source} has format {payload['format']!r}; this version reads {FORMAT!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format {version}, written by a newer gee-deploy; this "
            f"version reads format {FORMAT_VERSION}: upgrade gee-deploy to load it"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{source} is not a gee-deploy checkpoint (missing {', '.join(missing)})")
    return {**dict.fromkeys(_OPTIONAL), **payload}


def _typed(value, kind: type, key: str):
    if not isinstance(value, kind):
        raise TypeError(f"its {key!r} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (torch.save of :meth:`Checkpoint.to_payload`)."""
    payload = ckpt.to_payload()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _check_archive(p: Path) -> None:
    """Refuse a file that is no torch.save archive (a zip, PyTorch's serialization docs) before torch.load
    parses it, saying what it is instead: cut short (a zip's start without its end), empty, or text."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(512)
        whole = zipfile.is_zipfile(p)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    if whole or head.startswith(b"\x80"):  # a zip, or torch's legacy (pickle) format: torch.load decides
        return
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{p} is truncated: a torch.save archive without its end (a copy or a write cut "
            f"short; {p.stat().st_size:,} bytes)"
        )
    if not head:
        raise CheckpointError(f"{p} is empty, not a checkpoint")
    try:
        head.decode("utf-8")
        what = "a text file"
    except UnicodeDecodeError as e:  # a character cut at the 512th byte is still text
        what = "a text file" if e.start >= len(head) - 3 else "another kind of file"
    raise CheckpointError(f"{p} is not a gee-deploy checkpoint: {what}, not a torch.save archive")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    """The checkpoint in file ``path``, read without executing pickled code.

    Raises:
        CheckpointError: missing, truncated or corrupt, a pickle of Python objects, or not a gee-deploy checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    _check_archive(p)
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError, zipfile errors...
        if "Unsupported global" in str(e):  # a pickle of Python objects: never unpickle it here
            raise CheckpointError(
                f"{p} is not a gee-deploy checkpoint: it holds pickled Python objects, which "
                "gee-deploy never loads (checkpoints are read with weights_only=True)"
            ) from None
        if "Weights only load failed" in str(e):  # torch's advice to re-run unsafely is not ours to give
            hint = "an ONNX graph? bench and serve take those" if p.suffix == ".onnx" else "another kind of file?"
            raise CheckpointError(
                f"{p} is not a gee-deploy checkpoint (torch.load cannot read it as weights; {hint})"
            ) from None
        raise CheckpointError(f"{p} is not a readable checkpoint (truncated or corrupt?): {reason(e)}") from None
    return Checkpoint.from_payload(payload, str(p))


# What a module's forward reads besides its parameters: conv, pool and flatten geometry (the fused ConvPool
# carries the geometry of the conv it runs) and the LIF constants. Channel counts come from parameter shapes.
_GEOMETRY = (
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
    "output_size",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
    "return_indices",
    "start_dim",
    "end_dim",
    "tau",
    "v_threshold",
    "v_reset",
)


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
        entries.append(
            {
                "name": name,
                "type": type(module).__name__,
                "geometry": {key: _plain(getattr(module, key)) for key in _GEOMETRY if hasattr(module, key)},
                "parameters": [[n, list(p.shape)] for n, p in module.named_parameters(recurse=False)],
                "buffers": [[n, list(b.shape)] for n, b in module.named_buffers(recurse=False)],
            }
        )
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_model(ckpt: Checkpoint, source: str = "checkpoint") -> SpikingNet:
    """The model a checkpoint describes, with its weights; raises CheckpointError on an architecture mismatch
    (parameter names or shapes, or a stored :func:`architecture_fingerprint` that differs)."""
    if ckpt.state_dict is None:
        raise CheckpointError(f"{source} holds no weights (Checkpoint.metadata()); a model needs them")
    model = create_model(ckpt.model_name, **ckpt.model_args)
    missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
    if missing or unexpected:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else "") + (
            f" {len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""
        )
        raise CheckpointError(f"{source} does not match architecture {ckpt.model_name!r}: {what.strip()}")
    if ckpt.architecture is not None and ckpt.architecture != architecture_fingerprint(
        model
    ):  # weights fit: same network around them?
        raise CheckpointError(
            f"{source} was written by another version of architecture {ckpt.model_name!r} "
            "(its layer structure differs from this installation's); retrain or use the matching "
            "gee-deploy version"
        )
    quant = ckpt.quantisation
    if quant is not None:  # an int8 fine-tuned checkpoint computes with its quantised weights, in eval as in training
        if quant.scheme != SCHEME:
            raise CheckpointError(
                f"{source} uses quantisation scheme {quant.scheme!r}; this gee-deploy knows {SCHEME!r}"
            )
        try:
            attach_quantisers(model, quant.layers)
        except GeeError as e:
            raise CheckpointError(f"{source}: {e}") from None
    return model


def load_model(path: str | os.PathLike, map_location="cpu") -> SpikingNet:
    """Eval-mode model of checkpoint ``path``; ``model.checkpoint`` keeps its :meth:`Checkpoint.metadata`."""
    ckpt = load_checkpoint(path, map_location)
    try:
        model = build_model(ckpt, str(path))
    except RuntimeError as e:  # shape mismatches from load_state_dict
        raise CheckpointError(
            f"{path} does not match architecture {ckpt.model_name!r}: {str(e).splitlines()[-1].strip()[:200]}"
        ) from None
    model.checkpoint = ckpt.metadata()
    return model.eval()


def model_origin(model: nn.Module) -> tuple[tuple[str, ...], str]:
    """(class names, dataset name) of ``model``: from the checkpoint :func:`load_model` read it from
    (:meth:`Checkpoint.class_names`), else "0".."classes-1" and "" (a model built in Python)."""
    num_classes = model.num_classes  # an int on a zoo model (SpikingNet); nn.Module types it Tensor | Module
    assert isinstance(num_classes, int), f"{type(model).__name__} is not a zoo model: num_classes is not an int"
    ckpt = getattr(model, "checkpoint", None)
    if isinstance(ckpt, Checkpoint):
        return ckpt.class_names(num_classes), ckpt.dataset_name
    return tuple(str(i) for i in range(num_classes)), ""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
