"""One walk of a zoo model in dataflow order: what the ONNX writer, the NIR writer and the PyTorch reference share.

The model's own ``forward`` code is traced with torch.fx, LIF / SeqToBatch / weight layers kept as leaves, so
any architecture built from the zoo's blocks (residual adds included) is walked from its real dataflow. Each
value is held in one of two layouts:

* static ``[N, ...]``: the same at every timestep (the normalised image and the stem conv + BN, computed once:
  direct encoding repeats the image);
* per-step ``[T*N, ...]``: T folded into the batch, t-major, as ``SeqToBatch`` does.

Every value also carries one sample run through the torch modules, which gives the static shapes the MAC
counts need with the model's own shape logic, and the name of the LIF whose spikes it holds, if any: spikes
are followed by data flow (a ResNet shortcut reads the block input, not the LIF that ran last; modules in
:data:`~gee_deploy.neurons.SPIKE_PRESERVING` keep spikes binary, average pooling makes them analog).

:class:`ModelWalk` alone describes the model as the PyTorch reference runs it (:func:`describe`: a
:class:`~gee_deploy.spec.ModelSpec` with variant "eager"). Writers subclass it and override the ``emit_*``
hooks to produce their graph; whatever they override, the walk, the layer table and the spiking layers are
this module's.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Generic, TypeGuard, TypeVar

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .batchnorm import BATCHNORMS
from .errors import UnsupportedModuleError
from .genetic import GeneticConv2d, GeneticLinear
from .kinds import ExportVariant, Form, LayerKind, Precision, Storage
from .neurons import LIF, SPIKE_PRESERVING, SeqToBatch, lif_reference
from .spec import LayerSpec, ModelSpec
from .zoo.base import ConvPool, SpikingNet

__all__ = [
    "Value",
    "ModelWalk",
    "describe",
    "is_weight_layer",
    "weight_macs",
    "pool_geometry",
    "CONV_TYPES",
    "LINEAR_TYPES",
]

CONV_TYPES = (nn.Conv2d, GeneticConv2d)
LINEAR_TYPES = (nn.Linear, GeneticLinear)
WeightLayer = nn.Conv2d | GeneticConv2d | nn.Linear | GeneticLinear
V = TypeVar("V")  # what a writer names a value by: an ONNX tensor name, the NIR node names, ...


def is_weight_layer(m: nn.Module) -> TypeGuard[WeightLayer]:
    return isinstance(m, CONV_TYPES + LINEAR_TYPES)


def weight_macs(m: WeightLayer | ConvPool, out_shape: tuple[int, ...]) -> int:
    """MACs of weight layer ``m`` for one item of its batch axis, given its per-item output shape.

    A conv costs Cin/groups x kh x kw per output element; a ConvPool describes the fused (k+1) x (k+1) stride-2
    conv it runs; a linear layer costs in x out.
    """
    if isinstance(m, LINEAR_TYPES):  # a conv's output is [C, H, W]: 1-d only for linear layers
        return int(m.in_features * m.out_features)
    k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
    return int(np.prod(out_shape)) * (m.in_channels // getattr(m, "groups", 1)) * k[0] * k[1]


def pool_geometry(m: nn.Module) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a square pooling module.

    Raises:
        UnsupportedModuleError: the pooling window is not square.
    """

    def single(v):
        v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if len(set(v)) != 1:
            raise UnsupportedModuleError(f"{m!r}: only square pooling is supported")
        return v[0]

    return (
        single(m.kernel_size),
        single(m.stride if m.stride is not None else m.kernel_size),
        single(m.padding),
        single(getattr(m, "dilation", 1)),
    )


@dataclass
class Value(Generic[V]):
    """One value of the walk.

    Attributes:
        name: its name in the graph being written (None in a describe-only walk).
        sample: one sample through the torch modules: static [1, ...], per-step [steps, ...].
        static: the same at every timestep ([N, ...] layout) or per-step ([T*N, ...]).
        spikes_from: the LIF whose binary spikes this value holds, or None (analog).
    """

    name: V | None
    sample: torch.Tensor
    static: bool
    spikes_from: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.sample.shape[1:])


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (LIF, SeqToBatch, GeneticConv2d, GeneticLinear)) or super().is_leaf_module(m, qualname)


class ModelWalk(Generic[V]):
    """Walks eval-mode zoo model ``model`` (``stem``, ``body``, ``mean``, ``std``, ``timesteps``, ...).

    Args:
        model: a :class:`~gee_deploy.zoo.base.SpikingNet`.
        streaming: one timestep per call (membranes carried between calls) instead of T unrolled.

    After :meth:`walk`: ``layers`` (one :class:`LayerSpec` per weight layer, in run order), ``spiking_layers``,
    ``neurons_per_layer`` and ``state_shapes`` (per-sample membrane shape of each LIF).

    Raises:
        UnsupportedModuleError: the forward cannot be traced, or holds an operation other than modules and
            two-operand adds, or there is no LIF.
    """

    variant = ExportVariant.EAGER

    def __init__(self, model: SpikingNet, streaming: bool = False):
        self.model = model
        self.streaming = streaming
        self.steps = 1 if streaming else model.timesteps
        self.layers: list[LayerSpec] = []
        self.spiking_layers: list[str] = []
        self.neurons_per_layer: list[int] = []
        self.state_shapes: list[list[int]] = []

    def walk(self) -> Value[V]:
        """Walk input -> stem -> body; returns the body's output (per-step logits, or static for T = 1)."""
        model = self.model
        c, s = model.in_channels, model.image_size
        with torch.no_grad():
            image = torch.rand(1, c, s, s, dtype=torch.float32)
            sample = model.input_codes(image) if model.input_codes is not None else (image - model.mean) / model.std
        x = Value(self.emit_input(), sample, True)
        x = self.module("stem", model.stem, x)
        y = self.run_traced(model.body, "body", x)
        if not self.spiking_layers:
            raise UnsupportedModuleError(
                f"{getattr(model, 'model_name', type(model).__name__)} has no LIF layer: nothing spikes"
            )
        return y

    # -- containers --------------------------------------------------------------------------------------

    def run_traced(self, root: nn.Module, prefix: str, x: Value[V]) -> Value[V]:
        """Walk ``root``'s forward as traced by fx (leaves: LIF, SeqToBatch, weight layers, torch.nn)."""
        try:
            graph = _Tracer().trace(root)
        except Exception as e:
            raise UnsupportedModuleError(f"cannot trace {prefix or 'model'}: {e}") from None
        env: dict[str, Value[V]] = {}
        for node in graph.nodes:
            if node.op == "placeholder":
                env[node.name] = x
            elif node.op == "call_module":
                name = f"{prefix}.{node.target}" if prefix else node.target
                env[node.name] = self.module(name, root.get_submodule(node.target), env[node.args[0].name])
            elif node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2:
                env[node.name] = self.add(*(env[a.name] for a in node.args))
            elif node.op == "output":
                return env[node.args[0].name]
            else:
                raise UnsupportedModuleError(f"cannot export {node.op} {node.target} in {prefix or 'model'}")
        raise UnsupportedModuleError(f"{prefix} has no output")

    def module(self, name: str, m: nn.Module, x: Value[V]) -> Value[V]:
        if isinstance(m, LIF):
            return self.lif(name, m, x)
        if isinstance(m, nn.Sequential):  # SeqToBatch included: its layers act on the folded batch
            return self.sequence(name, list(m.named_children()), x)
        if list(m.children()) and not is_weight_layer(m):
            return self.run_traced(m, name, x)
        return self.sequence(name, [("", m)], x)

    def sequence(self, prefix: str, children: list[tuple[str, nn.Module]], x: Value[V]) -> Value[V]:
        """Children in order; a weight layer takes the BatchNorm right after it along (it folds into it)."""
        i = 0
        while i < len(children):
            local, m = children[i]
            name = f"{prefix}.{local}" if local else prefix
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            if isinstance(m, ConvPool) or is_weight_layer(m):
                bn = nxt if isinstance(nxt, BATCHNORMS) else None
                if isinstance(m, ConvPool):  # its conv, named as such, with the pool written in
                    x = self.weight(f"{name}.0", m.conv, bn, x, pooled=m)
                else:
                    x = self.weight(name, m, bn, x)
                i += 2 if bn is not None else 1
            elif isinstance(m, LIF) or list(m.children()):
                x, i = self.module(name, m, x), i + 1
            else:
                x, i = self.layer(name, m, x), i + 1
        return x

    # -- layers ------------------------------------------------------------------------------------------

    def weight(
        self, name: str, m: WeightLayer, bn: nn.Module | None, x: Value[V], pooled: ConvPool | None = None
    ) -> Value[V]:
        """Weight layer ``m`` (inside ConvPool ``pooled``, if given) with the BatchNorm ``bn`` after it."""
        with torch.no_grad():
            sample = (pooled if pooled is not None else m)(x.sample)
            sample = bn(sample) if bn is not None else sample
        out_shape = tuple(sample.shape[1:])
        if isinstance(m, LINEAR_TYPES) and len(x.shape) != 1:
            raise UnsupportedModuleError(f"{name}: Linear on a {len(x.shape) + 1}-d input is not supported")
        dense = weight_macs(pooled if pooled is not None else m, out_shape)
        calls = 1 if x.static else self.steps
        y, layer = self.emit_weight(name, m, bn, x, out_shape, pooled, dense, calls)
        self.layers.append(layer)
        return Value(y, sample, x.static)

    def layer(self, name: str, m: nn.Module, x: Value[V]) -> Value[V]:
        """A stateless non-weight layer (BatchNorm on its own, pooling, flatten, identity)."""
        with torch.no_grad():
            sample = m(x.sample)
        keeps = isinstance(m, SPIKE_PRESERVING)
        return Value(self.emit_layer(name, m, x), sample, x.static, x.spikes_from if keeps else None)

    def add(self, a: Value[V], b: Value[V]) -> Value[V]:
        """A residual add; a static operand is repeated over the steps first."""
        a, b = (self.per_step(a), self.per_step(b)) if a.static != b.static else (a, b)
        return Value(self.emit_add(a, b), a.sample + b.sample, a.static)

    def per_step(self, x: Value[V]) -> Value[V]:
        """A static value repeated over the steps: [N, ...] -> [T*N, ...] (t-major, as SeqToBatch folds)."""
        if not x.static:
            return x
        return Value(self.emit_repeat(x), x.sample.repeat(self.steps, *[1] * len(x.shape)), False, x.spikes_from)

    def lif(self, name: str, m: LIF, x: Value[V]) -> Value[V]:
        """A LIF layer: per-step spikes of the (possibly static) input; recorded as a spiking layer."""
        y = self.emit_lif(name, m, x)
        with torch.no_grad():
            seq = x.sample.expand(self.steps, *x.shape) if x.static else x.sample
            sample = lif_reference(seq.unsqueeze(1), m.tau, m.v_threshold, m.v_reset).squeeze(1)
        self.spiking_layers.append(name)
        self.neurons_per_layer.append(int(np.prod(x.shape)))
        self.state_shapes.append(list(x.shape))
        return Value(y, sample, False, name)

    def spec(
        self,
        *,
        class_names: tuple[str, ...] = (),
        dataset: str = "",
        checkpoint_sha256: str = "",
        variant: ExportVariant | None = None,
        storage: Storage = Storage.FOLDED,
    ) -> ModelSpec:
        """The :class:`ModelSpec` of what :meth:`walk` found (call it after the walk)."""
        model = self.model
        return ModelSpec(
            timesteps=model.timesteps,
            input_shape=(model.in_channels, model.image_size, model.image_size),
            class_names=tuple(class_names) or tuple(str(i) for i in range(model.num_classes)),
            spiking_layers=tuple(self.spiking_layers),
            neurons_per_layer=tuple(self.neurons_per_layer),
            layers=tuple(self.layers),
            variant=ExportVariant(variant or self.variant),
            streaming=self.streaming,
            model_name=getattr(model, "model_name", type(model).__name__),
            model_args={k: list(v) if isinstance(v, tuple) else v for k, v in getattr(model, "model_args", {}).items()},
            dataset=dataset,
            checkpoint_sha256=checkpoint_sha256,
            storage=storage,
        )

    # -- hooks: what a writer emits (the base walk emits nothing) --------------------------------------------

    def emit_input(self) -> V | None:
        """The normalised input [N, C, H, W]."""
        return None

    def emit_weight(
        self,
        name: str,
        m: nn.Module,
        bn: nn.Module | None,
        x: Value[V],
        out_shape: tuple,
        pooled: ConvPool | None,
        dense_macs: int,
        calls: int,
    ) -> tuple[V | None, LayerSpec]:
        """Write weight layer ``m`` (+ ``bn``); returns its output's name and how it runs (dense here; int8 where
        the layer computes with int8 weights, a quantised model's)."""
        kind = LayerKind.CONV if isinstance(m, CONV_TYPES) else LayerKind.LINEAR
        quantised = getattr(pooled if pooled is not None else m, "quantiser", None) is not None
        return None, LayerSpec(
            name=name,
            kind=kind,
            variant=self.variant,
            macs=dense_macs,
            input_is_spikes=x.spikes_from is not None,
            spiking_input_layer=x.spikes_from,
            spike_macs=dense_macs,
            calls=calls,
            form=Form.DENSE,
            dense_macs=dense_macs,
            precision=Precision.INT8 if quantised else Precision.FP32,
        )

    def emit_layer(self, name: str, m: nn.Module, x: Value[V]) -> V | None:
        return None

    def emit_add(self, a: Value[V], b: Value[V]) -> V | None:
        return None

    def emit_repeat(self, x: Value[V]) -> V | None:
        return None

    def emit_lif(self, name: str, m: LIF, x: Value[V]) -> V | None:
        return None


def describe(
    model: SpikingNet, *, class_names: tuple[str, ...] = (), dataset: str = "", checkpoint_sha256: str = ""
) -> ModelSpec:
    """The :class:`ModelSpec` of eval-mode ``model`` as PyTorch runs it (variant "eager": every layer dense)."""
    w: ModelWalk[None] = ModelWalk(model)
    w.walk()
    return w.spec(class_names=class_names, dataset=dataset, checkpoint_sha256=checkpoint_sha256)
