"""Write a SpikingNet as an ONNX graph with the T timesteps unrolled (or one step, for streaming).

The model's own ``forward`` code is traced with torch.fx, LIF / SeqToBatch / weight layers kept as leaves,
so any architecture built from the zoo's blocks (residual adds included) is written from its real dataflow.
Each value is held in one of two layouts:

* static ``[N, ...]``: the same at every timestep (the normalised image and the stem conv + BN, computed
  once: direct encoding repeats the image, DESIGN section 4);
* per-step ``[T*N, ...]``: T folded into the batch, t-major, as ``SeqToBatch`` does, so every stateless layer
  is one op for all T steps. A LIF splits it into T slices, runs the recurrence as elementwise ops and
  concatenates the spikes back.

Alongside the graph, every module also runs in torch on one sample, which gives the static shapes the
MAC counts and the shift slices need, with the model's own shape logic.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.fx as fx
from onnx import TensorProto
from torch import nn

from ..genetic import GeneticConv2d, GeneticLinear
from ..neurons import LIF, SPIKE_PRESERVING, SeqToBatch, lif_reference
from ..zoo.base import ConvPool
from .configs import BATCH_DIM, INPUT_NAME, OUTPUT_NAMES
from .errors import UnsupportedModuleError
from .factorised import FactorisedCost, emit_factorised, factorised_cost
from .folding import FoldedLayer, batchnorm_affine, dense_macs, emit_dense, fold_layer, is_weight_layer
from .graph import GraphBuilder, tensor_info

__all__ = ["LayerRecord", "GraphInfo", "Chooser", "write_graph"]



@dataclass
class LayerRecord:
    """One weight layer as exported; the first six fields (and the costs) go into ``gee.layers``."""

    name: str
    kind: str
    variant: str
    macs: int
    input_is_spikes: bool
    spiking_input_layer: str | None
    spike_macs: int  # MACs of the op that reads the layer input (AC when it reads spikes)
    calls: int  # times it runs per sample per graph call: 1 for static layers (the stem), else T
    form: str  # "dense", "pointwise-first", "shift-first" or "linear"
    dense_macs: int
    factorised_macs: int | None

    def metadata(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "kind", "variant", "macs", "input_is_spikes",
                                               "spiking_input_layer", "spike_macs", "calls", "form",
                                               "dense_macs", "factorised_macs")}


@dataclass
class GraphInfo:
    """What the writer learned: layers, spiking layers (in spike_counts column order) and state shapes."""

    layers: list[LayerRecord] = field(default_factory=list)
    spiking_layers: list[str] = field(default_factory=list)
    neurons_per_layer: list[int] = field(default_factory=list)
    state_shapes: list[list[int]] = field(default_factory=list)


# (layer name, folded layer, per-sample input shape, output shape, factorised cost) -> "dense" | "factorised"
Chooser = Callable[[str, FoldedLayer, tuple, tuple, FactorisedCost], str]


@dataclass
class _Value:
    name: str
    sample: torch.Tensor  # one sample through the torch modules: static [1, ...], per-step [steps, ...]
    static: bool
    spikes_from: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.sample.shape[1:])


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (LIF, SeqToBatch, GeneticConv2d, GeneticLinear)) or super().is_leaf_module(m, qualname)


class _Writer:
    def __init__(self, model: nn.Module, choose: Chooser, streaming: bool):
        self.model = model
        self.choose = choose
        self.streaming = streaming
        self.steps = 1 if streaming else model.timesteps
        self.g = GraphBuilder()
        self.info = GraphInfo()
        self.counts: list[str] = []
        self.state_io: list[tuple[str, str]] = []

    # -- containers --------------------------------------------------------------------------------------

    def run_traced(self, root: nn.Module, prefix: str, x: _Value) -> _Value:
        """Write ``root``'s forward as traced by fx (leaves: LIF, SeqToBatch, weight layers, torch.nn)."""
        try:
            graph = _Tracer().trace(root)
        except Exception as e:
            raise UnsupportedModuleError(f"cannot trace {prefix or 'model'} for export: {e}") from None
        env: dict[str, _Value] = {}
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

    def module(self, name: str, m: nn.Module, x: _Value) -> _Value:
        if isinstance(m, LIF):
            return self.lif(name, m, x)
        if isinstance(m, nn.Sequential):  # SeqToBatch included: its layers act on the folded batch
            return self.sequence(name, list(m.named_children()), x)
        if list(m.children()) and not is_weight_layer(m):
            return self.run_traced(m, name, x)
        return self.sequence(name, [("", m)], x)

    def sequence(self, prefix: str, children: list[tuple[str, nn.Module]], x: _Value) -> _Value:
        i = 0
        while i < len(children):
            local, m = children[i]
            name = f"{prefix}.{local}" if local else prefix
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            if isinstance(m, ConvPool) or is_weight_layer(m):
                bn = nxt if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)) else None
                if isinstance(m, ConvPool):  # its conv, named as such, with the pool written in
                    x = self.weight(f"{name}.0", m[0], bn, x, pooled=m)
                else:
                    x = self.weight(name, m, bn, x)
                i += 2 if bn is not None else 1
            elif isinstance(m, LIF) or list(m.children()):
                x, i = self.module(name, m, x), i + 1
            else:
                x, i = self.layer(name, m, x), i + 1
        return x

    # -- layers ------------------------------------------------------------------------------------------

    def weight(self, name: str, m: nn.Module, bn: nn.Module | None, x: _Value,
               pooled: ConvPool | None = None) -> _Value:
        """Weight layer ``m`` (inside ConvPool ``pooled``, if given) with the BatchNorm ``bn`` folded in."""
        f = fold_layer(m, bn, pooled=pooled is not None)
        with torch.no_grad():
            sample = (pooled if pooled is not None else m)(x.sample)
            sample = bn(sample) if bn is not None else sample
        out_shape = tuple(sample.shape[1:])
        out_pixels = int(np.prod(out_shape[1:])) if f.kind == "conv" else 1
        if f.kind == "linear" and len(x.shape) != 1:
            raise UnsupportedModuleError(f"{name}: Linear on a {len(x.shape) + 1}-d input is not supported")
        dense = dense_macs(f, out_pixels)
        fact = factorised_cost(f, x.shape, out_shape) if f.genetic else None
        variant = self.choose(name, f, x.shape, out_shape, fact) if fact is not None else "dense"
        if variant == "factorised":
            y = emit_factorised(self.g, x.name, f, fact, out_shape, name)
            macs, spike_macs, form = fact.macs, fact.spike_macs, fact.form
        else:
            y = emit_dense(self.g, x.name, f, name)
            macs, spike_macs, form = dense, dense, "dense"
        self.info.layers.append(LayerRecord(
            name, f.kind, variant, int(macs), x.spikes_from is not None, x.spikes_from, int(spike_macs),
            1 if x.static or self.streaming else self.model.timesteps, form, int(dense),
            None if fact is None else int(fact.macs)))
        return _Value(y, sample, x.static)

    def layer(self, name: str, m: nn.Module, x: _Value) -> _Value:
        """A stateless non-weight layer."""
        g = self.g
        with torch.no_grad():
            sample = m(x.sample)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            y = x.name
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale, shift = batchnorm_affine(m, m.num_features)
            dims = (-1,) + (1,) * (len(x.shape) - 1)
            y = g.op("Mul", [x.name, g.const(scale.reshape(dims), f"{name}.scale")], name)
            y = g.op("Add", [y, g.const(shift.reshape(dims), f"{name}.shift")], name)
        elif isinstance(m, nn.MaxPool2d) and not m.return_indices and _pool_geometry(m)[3] == 1:
            k, s, p, _ = _pool_geometry(m)
            y = g.op("MaxPool", [x.name], name, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4,
                     ceil_mode=int(m.ceil_mode))
        elif isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
            k, s, p, _ = _pool_geometry(m)
            y = g.op("AveragePool", [x.name], name, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4,
                     ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))
        elif isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            y = g.op("GlobalAveragePool", [x.name], name)
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            y = g.op("Flatten", [x.name], name, axis=1)
        else:
            raise UnsupportedModuleError(f"cannot export {name} ({m!r}): no ONNX translation for it")
        keeps = isinstance(m, SPIKE_PRESERVING)
        return _Value(y, sample, x.static, x.spikes_from if keeps else None)

    def add(self, a: _Value, b: _Value) -> _Value:
        a, b = (self.per_step(a), self.per_step(b)) if a.static != b.static else (a, b)
        return _Value(self.g.op("Add", [a.name, b.name], "add"), a.sample + b.sample, a.static)

    def per_step(self, x: _Value) -> _Value:
        """A static value repeated over the steps: [N, ...] -> [T*N, ...] (t-major, as SeqToBatch folds)."""
        if not x.static:
            return x
        reps = self.g.const([self.steps] + [1] * len(x.shape), "reps", np.int64)
        return _Value(self.g.op("Tile", [x.name, reps], "repeat"), x.sample.repeat(self.steps, *[1] * len(x.shape)),
                      False, x.spikes_from)

    # -- neurons -----------------------------------------------------------------------------------------

    def lif(self, name: str, m: LIF, x: _Value) -> _Value:
        """LIF as elementwise ops, written in the same float order as :func:`neurons.lif_reference`."""
        g, steps = self.g, self.steps
        if x.static:
            xs = [x.name] * steps
        else:
            xs = [x.name] if steps == 1 else g.op("Split", [x.name], f"{name}.x", outputs=steps, axis=0,
                                                   num_outputs=steps)
        tau, v_th, v_reset = (g.const(v, f"{name}.const") for v in (m.tau, m.v_threshold, m.v_reset))
        v = None  # None: still at v_reset (the start of a sequence)
        if self.streaming:
            v = f"v_in.{name}"
            self.state_io.append((v, f"v_out.{name}"))
        spikes = []
        for t, xt in enumerate(xs):
            if v is None:
                h = g.op("Div", [xt, tau], f"{name}.h")  # v - v_reset == 0 at t = 0
                h = g.op("Add", [v_reset, h], f"{name}.h") if m.v_reset != 0 else h
            else:
                d = g.op("Sub", [v, v_reset], f"{name}.d") if m.v_reset != 0 else v  # v - 0 is v exactly
                h = g.op("Add", [v, g.op("Div", [g.op("Sub", [xt, d], f"{name}.d"), tau], f"{name}.d")],
                         f"{name}.h")
            fire = g.op("GreaterOrEqual", [h, v_th], f"{name}.fire")
            spikes.append(g.op("Cast", [fire], f"{name}.s", to=TensorProto.FLOAT))
            if t < steps - 1 or self.streaming:
                # hard reset: h (1 - s) + v_reset s with s in {0, 1} is exactly Where(s, v_reset, h)
                out = [f"v_out.{name}"] if self.streaming and t == steps - 1 else None
                v = g.op("Where", [fire, v_reset, h], f"{name}.v", out_names=out)
        total = g.op("Sum", spikes, f"{name}.total") if steps > 1 else spikes[0]
        flat = g.op("Flatten", [total], f"{name}.flat", axis=1)
        self.counts.append(g.op("ReduceSum", [flat, g.const([1], "axis1", np.int64)], f"{name}.count",
                                keepdims=1))  # [N, 1]
        y = g.op("Concat", spikes, f"{name}.spikes", axis=0) if steps > 1 else spikes[0]
        with torch.no_grad():
            seq = x.sample.expand(self.steps, *x.shape) if x.static else x.sample
            sample = lif_reference(seq.unsqueeze(1), m.tau, m.v_threshold, m.v_reset).squeeze(1)
        self.info.spiking_layers.append(name)
        self.info.neurons_per_layer.append(int(np.prod(x.shape)))
        self.info.state_shapes.append(list(x.shape))
        return _Value(y, sample, False, name)


def _pool_geometry(m: nn.Module) -> tuple[int, int, int, int]:
    def single(v):
        v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if len(set(v)) != 1:
            raise UnsupportedModuleError(f"{m!r}: only square pooling is supported")
        return v[0]
    return (single(m.kernel_size), single(m.stride if m.stride is not None else m.kernel_size),
            single(m.padding), single(getattr(m, "dilation", 1)))


def write_graph(model: nn.Module, choose: Chooser, opset: int, metadata: dict, streaming: bool = False):
    """The ONNX ModelProto of eval-mode SpikingNet ``model`` and its :class:`GraphInfo`.

    Args:
        model: a zoo model (``stem``, ``body``, ``mean``, ``std``, ``timesteps``, ``num_classes``).
        choose: picks "dense" or "factorised" for each genetic layer.
        opset: ONNX opset (>= 18).
        metadata: ``metadata_props`` to add (values: strings, or lists/dicts written as JSON).
        streaming: one timestep per call with the membrane potentials as graph inputs and outputs.
    """
    w = _Writer(model, choose, streaming)
    g = w.g
    c, s = model.in_channels, model.image_size
    x = g.op("Div", [g.op("Sub", [INPUT_NAME, g.const(model.mean.numpy(), "mean")], "normalise"),
                     g.const(model.std.numpy(), "std")], "normalised")
    x = _Value(x, torch.rand(1, c, s, s, dtype=torch.float32), True)
    with torch.no_grad():
        x.sample = (x.sample - model.mean) / model.std
    x = w.module("stem", model.stem, x)
    y = w.run_traced(model.body, "body", x)
    if not w.counts:
        raise UnsupportedModuleError(f"{model.model_name} has no LIF layer: nothing spikes")
    logits, counts = OUTPUT_NAMES
    if y.static or w.steps == 1:
        g.op("Identity", [y.name], out_names=[logits])
    else:
        y = g.op("Reshape", [y.name, g.const([w.steps, -1, model.num_classes], "steps_shape", np.int64)],
                 "per_step_logits")
        g.op("ReduceMean", [y, g.const([0], "axis0", np.int64)], out_names=[logits], keepdims=0)
    g.op("Concat", w.counts, out_names=[counts], axis=1)
    n = BATCH_DIM
    inputs = [tensor_info(INPUT_NAME, [n, c, s, s])]
    outputs = [tensor_info(logits, [n, model.num_classes]), tensor_info(counts, [n, len(w.counts)])]
    for (v_in, v_out), shape in zip(w.state_io, w.info.state_shapes):
        inputs.append(tensor_info(v_in, [n] + shape))
        outputs.append(tensor_info(v_out, [n] + shape))
    meta = {**metadata, "gee.spiking_layers": w.info.spiking_layers,
            "gee.neurons_per_layer": w.info.neurons_per_layer,
            "gee.layers": [layer.metadata() for layer in w.info.layers]}
    if streaming:
        meta["gee.state_inputs"] = [v_in for v_in, _ in w.state_io]
        meta["gee.state_outputs"] = [v_out for _, v_out in w.state_io]
    return g.model(inputs, outputs, opset, meta), w.info
