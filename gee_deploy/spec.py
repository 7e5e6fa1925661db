"""The deployment contract: one typed description of a deployed model, shared by export and serving.

A :class:`ModelSpec` says what a graph takes and returns and what it costs: the input's name, shape and dtype,
the output names, T, the class names, the spiking (LIF) layers in ``spike_counts`` column order with their
neurons per sample, and one :class:`LayerSpec` per weight layer (MACs, calls per sample, which LIF's spikes it
reads, form and variant). The exporter builds it in the one walk of the model that also writes the graph
(:mod:`gee_deploy.walk`); the PyTorch reference builds the same description from the same walk.

It travels as ONNX ``metadata_props`` (string values; lists and dicts as JSON; ``gee.format`` the layout's
version, :data:`SPEC_FORMAT`) and, for artefacts that hold no
metadata (TensorRT plans, Triton repositories), as a JSON sidecar with the same keys
(:func:`sidecar_path`). Everything downstream (energy, runtimes, bench, server, tests) reads it through
:meth:`ModelSpec.from_metadata`, :meth:`ModelSpec.from_onnx` or :meth:`ModelSpec.from_artefact`. Names, keys
and their encodings are spelled here and nowhere else, as optimum's ``OnnxConfig`` does for its exporters.

Graph I/O:

* input ``input``: float32 [N, C, H, W], pixels in [0, 1], N a dynamic axis named ``batch``; normalisation
  happens inside the graph.
* outputs ``logits``: float32 [N, classes], the mean over the T timesteps of the classifier, and
  ``spike_counts``: float32 [N, L], the spikes each of the L spiking layers emitted for each sample, summed
  over its neurons and the T steps (firing rate = count / (neurons x T)).
* streaming graphs (one timestep per call) add inputs ``v_in.<lif>`` and outputs ``v_out.<lif>`` [N, ...]:
  membrane potentials, zeros at the start of a sequence, fed back on the next call. Their ``input_shape`` is
  one step's input and ``step_input`` says what it is: the same image at every step ("static") or one frame
  per step ("frames"); ``logits`` and ``spike_counts`` are that step's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import ModelFileError, reason
from .io import format_version
from .kinds import ExportVariant, Form, LayerKind, Precision, StepInput, Storage

__all__ = [
    "INPUT_NAME",
    "LOGITS",
    "SPIKE_COUNTS",
    "OUTPUT_NAMES",
    "BATCH_DIM",
    "SPEC_FORMAT",
    "LayerSpec",
    "ModelSpec",
    "sidecar_path",
    "state_names",
]

INPUT_NAME = "input"
LOGITS = "logits"
SPIKE_COUNTS = "spike_counts"
OUTPUT_NAMES = (LOGITS, SPIKE_COUNTS)
BATCH_DIM = "batch"
SPEC_FORMAT = "1"  # the version of the metadata layout (:func:`_stored_fields` reads it)
_PREFIX = "gee."


def state_names(lif: str) -> tuple[str, str]:
    """Streaming graphs: the (input, output) names of LIF layer ``lif``'s membrane potential."""
    return f"v_in.{lif}", f"v_out.{lif}"


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """One weight layer (conv or linear) as it runs in the deployed graph, per sample; built by keyword.

    Attributes:
        name: module path in the model (a ConvPool is named by its conv, ``...0``).
        kind: "conv" or "linear".
        variant: "dense" or "factorised" (how the exporter wrote it); "eager" for the PyTorch reference.
        macs: multiply-accumulates per call (all ops of the layer).
        input_is_spikes: the layer reads binary spikes (accumulates only: eq. 17's AC term).
        spiking_input_layer: the LIF whose spikes it reads (its firing rate scales the SOPs), or None.
        spike_macs: MACs of the op that reads the layer input; in a factorised layer only the first op reads
            spikes, the later ones work on analog values.
        calls: runs per sample per graph call: 1 for the stem (computed once on the analog image), T for
            body layers (1 in a streaming graph).
        form: "dense", "pointwise-first", "shift-first" or "linear".
        dense_macs: MACs per call of the dense form.
        factorised_macs: MACs per call of the factorised form (None for non-genetic layers).
        precision: "fp32", or "int8": the layer reads its spikes as uint8 0/1 (exact), multiplies them by int8
            weights, symmetric per output channel, accumulates in int32, and its output is
            float32(acc) * weight_scales[o] + bias[o] (:mod:`gee_deploy.quantisation`; docs/design.md, "Int8 layers").
        weight_scales: int8 layers only: the float32 scale of each output channel as the graph applies it, each
            written as the shortest decimal that reads back as that float32 (half the metadata of a float64 repr)
            (the weight's per-channel scale times the folded BatchNorm's), [Cout]; None for fp32 layers.

    The field order is the order of the keys in the metadata's JSON: keep it.
    """

    name: str
    kind: LayerKind
    variant: ExportVariant
    macs: int
    input_is_spikes: bool
    spiking_input_layer: str | None
    spike_macs: int
    calls: int
    form: Form = Form.DENSE
    dense_macs: int = 0
    factorised_macs: int | None = None
    precision: Precision = Precision.FP32
    weight_scales: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.weight_scales is not None:  # each as the shortest decimal of its float32: compact metadata
            object.__setattr__(self, "weight_scales", tuple(float(str(np.float32(v))) for v in self.weight_scales))

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["weight_scales"] is not None:
            d["weight_scales"] = list(d["weight_scales"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LayerSpec:
        """The layer in :meth:`as_dict`'s form; ValueError on a kind, variant, form or precision it does not know."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key, kind in (("kind", LayerKind), ("variant", ExportVariant), ("form", Form), ("precision", Precision)):
            if key in d:
                d[key] = kind(d[key])
        return cls(**d)


@dataclass(frozen=True)
class ModelSpec:
    """What a deployed model takes, returns and costs (the module docstring has the graph contract).

    Attributes:
        timesteps: T.
        input_shape: [C, H, W] of one sample (a NIR import may give another rank: [T, ...] per-step, [features]).
        class_names: one per logit column.
        spiking_layers: LIF module names, in ``spike_counts`` column order.
        neurons_per_layer: neurons per sample of each spiking layer (same order).
        layers: the weight layers in the order they run.
        variant: requested export variant (dense / factorised / auto), "eager" for the PyTorch model.
        streaming: one timestep per call, membranes as extra inputs/outputs; ``input_shape`` is then one step's.
        step_input: streaming graphs: what one step's input is, the image fed at every step (``static``) or
            one frame per step (``frames``).
        state_layers: streaming graphs: the keys of the membrane tensors (``v_in.<key>`` / ``v_out.<key>``) when
            they are not one per spiking layer (a NIR import: non-spiking LI nodes hold a membrane too, a CubaLIF
            also its synaptic current ``<node>.i``); empty: one per spiking layer.
        model_name, model_args, dataset: what the checkpoint says it is.
        checkpoint_sha256: sha256 of the checkpoint file it came from ("" when unknown).
        storage: what the file holds: "folded" (the weights as initializers) or "genetic" (the genetic
            parameters, E once per population, G once, the scales
            and BatchNorm parameters, and an initializer-only subgraph that computes the weights from them;
            docs/export.md, "Storage").
    """

    timesteps: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    spiking_layers: tuple[str, ...]
    neurons_per_layer: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    variant: ExportVariant = ExportVariant.DENSE
    streaming: bool = False
    model_name: str = ""
    model_args: dict = field(default_factory=dict)
    dataset: str = ""
    checkpoint_sha256: str = ""
    storage: Storage = Storage.FOLDED
    step_input: StepInput = StepInput.STATIC
    state_layers: tuple[str, ...] = ()

    input_name = INPUT_NAME
    input_dtype = "float32"
    output_names = OUTPUT_NAMES

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def state_inputs(self) -> list[str]:
        return [state_names(l)[0] for l in self.state_layers or self.spiking_layers] if self.streaming else []

    @property
    def state_outputs(self) -> list[str]:
        return [state_names(l)[1] for l in self.state_layers or self.spiking_layers] if self.streaming else []

    @property
    def macs_per_sample(self) -> int:
        """One inference of one sample: sum over layers of MACs x calls."""
        return sum(l.macs * l.calls for l in self.layers)

    @property
    def dense_macs_per_sample(self) -> int:
        """The same network with every layer dense."""
        return sum(l.dense_macs * l.calls for l in self.layers)

    @staticmethod
    def key(field_name: str) -> str:
        """The metadata key of one of the spec's fields (e.g. ``"timesteps"`` -> ``"gee.timesteps"``)."""
        if field_name not in {f.name for f in fields(ModelSpec)} | {"format", "state_inputs", "state_outputs"}:
            raise KeyError(f"ModelSpec has no field {field_name!r}")
        return _PREFIX + field_name

    # -- encoding ---------------------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        """The ``gee.*`` key/value pairs (strings; lists and dicts as JSON) of ONNX metadata_props and sidecars."""
        meta = {
            "format": SPEC_FORMAT,
            "timesteps": str(self.timesteps),
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "variant": self.variant,
            "checkpoint_sha256": self.checkpoint_sha256,
            "model_name": self.model_name,
            "model_args": self.model_args,
            "dataset": self.dataset,
            "streaming": "true" if self.streaming else "false",
            "spiking_layers": list(self.spiking_layers),
            "neurons_per_layer": list(self.neurons_per_layer),
            "layers": [l.as_dict() for l in self.layers],
        }
        if self.storage != Storage.FOLDED:  # absent means folded (:func:`_stored_fields`)
            meta["storage"] = self.storage
        if self.streaming:
            meta["state_inputs"], meta["state_outputs"] = self.state_inputs, self.state_outputs
            meta["step_input"] = self.step_input
            if self.state_layers:
                meta["state_layers"] = list(self.state_layers)
        return {_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str) -> ModelSpec:
        """The spec in ``gee.*`` key/value pairs (:func:`_stored_fields` reads their layout).

        Raises:
            ModelFileError: naming ``source``, when the metadata is absent, malformed or of a newer format.
        """
        stored = _stored_fields(meta, source)

        def js(key: str):
            return json.loads(stored[key])

        try:
            return cls(
                timesteps=int(stored["timesteps"]),
                input_shape=tuple(int(v) for v in js("input_shape")),
                class_names=tuple(str(c) for c in js("class_names")),
                spiking_layers=tuple(js("spiking_layers")),
                neurons_per_layer=tuple(int(v) for v in js("neurons_per_layer")),
                layers=tuple(LayerSpec.from_dict(l) for l in js("layers")),
                variant=ExportVariant(stored["variant"]),
                streaming=stored["streaming"] == "true",
                model_name=stored["model_name"],
                model_args=js("model_args") or {},
                dataset=stored["dataset"],
                checkpoint_sha256=stored["checkpoint_sha256"],
                storage=Storage(stored["storage"]),
                step_input=StepInput(stored.get("step_input", StepInput.STATIC)),
                state_layers=tuple(str(k) for k in json.loads(stored.get("state_layers", "[]"))),
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise ModelFileError(f"{source} has malformed gee-deploy metadata: {e}") from None

    @classmethod
    def from_onnx(cls, path: str | os.PathLike) -> ModelSpec:
        """The spec in an ONNX file's metadata_props (the graph is read, not run)."""
        import onnx

        if not Path(path).is_file():
            raise ModelFileError(f"{path} not found")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf DecodeError, OSError
            raise ModelFileError(f"{path} is not a readable ONNX file (truncated or corrupt?): {reason(e)}") from None
        return cls.from_metadata({p.key: p.value for p in model.metadata_props}, str(path))

    @classmethod
    def from_sidecar(cls, path: str | os.PathLike) -> ModelSpec:
        """The spec in a JSON sidecar written by :meth:`write_sidecar`."""
        p = Path(path)
        try:
            meta = json.loads(p.read_text())
        except OSError as e:
            raise ModelFileError(f"cannot read {p}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{p} is not JSON: {e}") from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{p} is not a gee-deploy model spec (expected a JSON object)")
        return cls.from_metadata(meta, str(p))

    @classmethod
    def from_artefact(cls, path: str | os.PathLike) -> ModelSpec:
        """The spec of any exported artefact: an ONNX file's metadata, else the sidecar beside it."""
        p = Path(path)
        if p.suffix.lower() == ".onnx":
            return cls.from_onnx(p)
        side = sidecar_path(p)
        if side.is_file():
            return cls.from_sidecar(side)
        raise ModelFileError(f"no model spec for {p}: expected {side} (written by `gee-deploy export`)")

    def write_sidecar(self, artefact: str | os.PathLike) -> Path:
        """Write the spec beside ``artefact`` (atomically); returns the sidecar's path."""
        from .io import atomic_path

        side = sidecar_path(artefact)
        with atomic_path(side) as tmp:
            tmp.write_text(json.dumps(self.to_metadata(), indent=1) + "\n")
        return side


_STORED = (
    "format",
    "timesteps",
    "input_shape",
    "class_names",
    "variant",
    "checkpoint_sha256",
    "model_name",
    "model_args",
    "dataset",
    "streaming",
    "spiking_layers",
    "neurons_per_layer",
    "layers",
)
_OPTIONAL = ("storage", "step_input", "state_layers")  # absent: folded; static; one membrane per spiking layer


def _stored_fields(meta: Mapping[str, str], source: str) -> dict[str, str]:
    """The ``gee.*`` values of ``meta`` by field name, every field of this version's layout present: the one
    reader of the metadata layouts files hold.

    Format "1" is the only one (every file gee-deploy has written, tests/data's b36eec0 export included): the
    keys :meth:`ModelSpec.to_metadata` writes; ``gee.storage`` absent means "folded" (files written before
    storage was a choice, and folded files still); ``gee.state_inputs``/``gee.state_outputs`` only in streaming
    graphs (derived, not read).

    Raises:
        ModelFileError: a key missing, the format not a version number, or a version newer than this one reads.
    """
    missing = [_PREFIX + k for k in _STORED if _PREFIX + k not in meta]
    if missing:
        raise ModelFileError(
            f"{source} lacks gee-deploy metadata ({', '.join(missing)}); export it with `gee-deploy export`"
        )
    version = format_version(meta[_PREFIX + "format"])
    if version is None or version < 1:
        raise ModelFileError(f"{source} has malformed gee-deploy metadata: format {meta[_PREFIX + 'format']!r}")
    if version > int(SPEC_FORMAT):
        raise ModelFileError(
            f"{source} has gee-deploy metadata format {version}, written by a newer gee-deploy; "
            f"this version reads format {SPEC_FORMAT}: upgrade gee-deploy to serve it"
        )
    return {
        "storage": Storage.FOLDED.value,
        **{k: meta[_PREFIX + k] for k in (*_STORED, *_OPTIONAL) if _PREFIX + k in meta},
    }


def sidecar_path(artefact: str | os.PathLike) -> Path:
    """Where the spec of ``artefact`` lives when the artefact holds no metadata: ``<file>.json`` beside a file,
    ``<dir>/spec.json`` inside a directory (a Triton model directory)."""
    p = Path(artefact)
    return p / "spec.json" if p.is_dir() else p.with_name(p.name + ".json")
