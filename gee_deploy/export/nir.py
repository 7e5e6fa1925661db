"""Write a SpikingNet as a NIR graph (Neuromorphic Intermediate Representation, PyPI ``nir``).

NIR describes one step of a network in continuous time; a simulator or chip runs it step by step. What we write
(docs/export.md, "NIR", has the reasoning and the user-facing story):

* the folded dense network: every conv / linear with its BatchNorm folded in (:func:`.folding.fold_layer`,
  float64, cast to float32 once), as ``Conv2d`` / ``Affine``; a :class:`~gee_deploy.zoo.base.ConvPool` as the
  one (k+1) x (k+1) stride-2 conv the model runs;
* every LIF as ``nir.LIF`` with ``dt`` = :data:`DT` seconds: tau = 2 dt, r = 1, v_leak = v_reset = 0, so NIR's
  forward-Euler step :math:`v_t = v_{t-1} + \\frac{dt}{\\tau}(v_{leak} - v_{t-1} + r I_t)` is our
  :math:`H_t = V_{t-1} + (X_t - V_{t-1}) / \\tau` (input decay included); v_threshold is the largest float32
  below our threshold, because NIR fires on v > v_th and we fire on v >= v_th (identical for float32 membranes);
* global / 2x2 average pooling as ``AvgPool2d``, flatten as ``Flatten`` (NIR dims exclude the batch);
* residual adds as two edges into one node (NIR sums a node's inputs);
* the graph input is the normalised image (x - mean) / std, fed at every step (direct encoding; NIR has no
  constant node, so the normalisation cannot fold into the zero-padded stem conv exactly and stays outside);
  the stem conv + BN, computed once by the PyTorch model, runs at every step in NIR (same values, T times the
  work); the output is the classifier's per-step value, whose mean over the T steps is the logits.

Max pooling (CIFARNet, VGG, the ResNet-34 stem) has no NIR primitive: export stops with one line naming the
module instead of writing an approximation.

The model is walked by the ONNX writer's traversal (:class:`.writer._Writer`: torch.fx over the zoo model's
forward, the same leaves, static vs per-step values, spike sources, a torch sample for shapes); this module only
overrides what each visited layer becomes.
"""
from __future__ import annotations

import json

import nir
import numpy as np
import torch
from torch import nn

from ..neurons import LIF, SPIKE_PRESERVING, lif_reference
from ..spec import INPUT_NAME, LOGITS, LayerSpec, ModelSpec
from .errors import ExportError, UnsupportedModuleError
from .folding import dense_macs, fold_layer
from .writer import LayerRecord, _pool_geometry, _Value, _Writer
from ..zoo.base import ConvPool, fuse_average_pool

__all__ = ["DT", "NIR_METADATA", "nir_threshold", "write_nir"]

DT = 1e-4  # seconds per step: the default dt of SpikingJelly's NIR importer and exporter and of snntorch's exporter

# keys of the NIR-specific part of the graph metadata (the gee.* part is the model spec's)
NIR_METADATA = {
    "dt": "nir.dt",  # seconds per step, str(float)
    "input": "nir.input",  # what the input node expects
    "mean": "nir.input_mean",  # JSON list, per channel
    "std": "nir.input_std",  # JSON list, per channel
    "output": "nir.output",  # what the output node gives
    "threshold": "nir.threshold_convention",
}


def nir_threshold(v_threshold: float) -> float:
    """The NIR ``v_threshold`` (fires on v > it) equal to ours (fires on v >= ``v_threshold``) in float32.

    For float32 v there is no float32 strictly between the two, so v > nextafter(v_th, -inf) <=> v >= v_th.
    """
    return float(np.nextafter(np.float32(v_threshold), np.float32(-np.inf)))


class _NIRWriter(_Writer):
    """The ONNX writer's traversal with every visited layer written as NIR nodes.

    A value's ``name`` is the tuple of NIR node names whose outputs sum to it (NIR adds a node's inputs), so a
    residual add is only the union of its operands' sources.
    """

    def __init__(self, model: nn.Module):
        super().__init__(model, choose=lambda *_: "dense", streaming=False)
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []

    def node(self, name: str, node: nir.NIRNode, x: _Value) -> tuple[str, ...]:
        if name in self.nodes:
            raise ExportError(f"two NIR nodes would be named {name!r}")
        self.nodes[name] = node
        self.edges += [(src, name) for src in x.name]
        return (name,)

    def weight(self, name: str, m: nn.Module, bn: nn.Module | None, x: _Value,
               pooled: ConvPool | None = None) -> _Value:
        f = fold_layer(m, bn, pooled=pooled is not None)
        with torch.no_grad():
            sample = (pooled if pooled is not None else m)(x.sample)
            sample = bn(sample) if bn is not None else sample
        out_shape = tuple(sample.shape[1:])
        bias = f.bias.astype(np.float32)
        if f.kind == "conv":
            weight, stride = f.weight, f.stride
            if f.pooled:  # conv + 2x2 average pool as the one stride-2 conv ConvPool runs
                weight, stride = fuse_average_pool(torch.from_numpy(weight)).numpy(), 2
            node = nir.Conv2d(input_shape=tuple(x.shape[1:]), weight=weight.astype(np.float32), stride=stride,
                              padding=f.padding, dilation=1, groups=1, bias=bias)
            out_pixels = int(np.prod(out_shape[1:]))
        else:
            if len(x.shape) != 1:
                raise UnsupportedModuleError(f"{name}: Linear on a {len(x.shape) + 1}-d input is not supported")
            node = nir.Affine(weight=f.weight.astype(np.float32), bias=bias)
            out_pixels = 1
        macs = dense_macs(f, out_pixels)
        self.info.layers.append(LayerRecord(
            name, f.kind, "dense", int(macs), x.spikes_from is not None, x.spikes_from, int(macs),
            1 if x.static else self.model.timesteps, "dense", int(macs), None))
        return _Value(self.node(name, node, x), sample, x.static)

    def layer(self, name: str, m: nn.Module, x: _Value) -> _Value:
        with torch.no_grad():
            sample = m(x.sample)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            y = x.name
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            raise UnsupportedModuleError(
                f"{name} ({m!r}) max-pools spikes and NIR has no max-pooling primitive; "
                f"{getattr(self.model, 'model_name', type(self.model).__name__)} cannot be exported to NIR "
                "(use --format onnx, or an architecture with average pooling such as smallnet or resnet18/19)")
        elif isinstance(m, nn.AvgPool2d) and m.divisor_override is None and not m.ceil_mode \
                and (m.count_include_pad or _pool_geometry(m)[2] == 0):
            k, s, p, _ = _pool_geometry(m)
            y = self.node(name, nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([s, s]),
                                              padding=np.array([p, p])), x)
        elif isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            h, w = x.shape[1:]
            y = self.node(name, nir.AvgPool2d(kernel_size=np.array([h, w]), stride=np.array([h, w]),
                                              padding=np.array([0, 0])), x)
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            # NIR shapes exclude the batch: torch dims 1..-1 are NIR dims 0..-1
            y = self.node(name, nir.Flatten(input_type={"input": np.array(x.shape)}, start_dim=0, end_dim=-1), x)
        else:
            raise UnsupportedModuleError(f"cannot export {name} ({m!r}) to NIR: no NIR primitive for it")
        keeps = isinstance(m, SPIKE_PRESERVING)
        return _Value(y, sample, x.static, x.spikes_from if keeps else None)

    def add(self, a: _Value, b: _Value) -> _Value:
        a, b = (self.per_step(a), self.per_step(b)) if a.static != b.static else (a, b)
        return _Value(a.name + b.name, a.sample + b.sample, a.static)

    def per_step(self, x: _Value) -> _Value:
        """NIR runs every node at every step: repeating a static value over T only changes the torch sample."""
        if not x.static:
            return x
        return _Value(x.name, x.sample.repeat(self.steps, *[1] * len(x.shape)), False, x.spikes_from)

    def lif(self, name: str, m: LIF, x: _Value) -> _Value:
        shape = x.shape
        # neuron parameters in float64: tau = 2 * DT exactly, so dt / tau is exactly 1 / m.tau for any reader
        full = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731
        node = nir.LIF(tau=full(m.tau * DT), r=full(1.0), v_leak=full(m.v_reset),
                       v_threshold=full(nir_threshold(m.v_threshold)), v_reset=full(m.v_reset))
        with torch.no_grad():
            seq = x.sample.expand(self.steps, *shape) if x.static else x.sample
            sample = lif_reference(seq.unsqueeze(1), m.tau, m.v_threshold, m.v_reset).squeeze(1)
        self.info.spiking_layers.append(name)
        self.info.neurons_per_layer.append(int(np.prod(shape)))
        self.info.state_shapes.append(list(shape))
        return _Value(self.node(name, node, x), sample, False, name)


def write_nir(model: nn.Module, metadata: dict[str, str]):
    """The ``nir.NIRGraph`` of eval-mode SpikingNet ``model`` and the writer's :class:`.writer.GraphInfo`.

    Args:
        model: a zoo model (``stem``, ``body``, ``mean``, ``std``, ``timesteps``, ``num_classes``).
        metadata: the checkpoint's ``gee.*`` keys (values: strings, or lists/dicts written as JSON); the walk adds
            the spiking layers and weight layers, and the NIR keys of :data:`NIR_METADATA` are added.

    Raises:
        UnsupportedModuleError: a module with no NIR primitive (max pooling of spikes), named in one line.
        ExportError: the graph fails NIR's own type check.
    """
    w = _NIRWriter(model.eval())
    c, s = model.in_channels, model.image_size
    w.nodes[INPUT_NAME] = nir.Input(input_type={"input": np.array([c, s, s])})
    x = _Value((INPUT_NAME,), torch.rand(1, c, s, s, dtype=torch.float32), True)
    with torch.no_grad():
        x.sample = (x.sample - model.mean) / model.std
    x = w.module("stem", model.stem, x)
    y = w.run_traced(model.body, "body", x)
    if not w.info.spiking_layers:
        raise UnsupportedModuleError(f"{model.model_name} has no LIF layer: nothing spikes")
    w.nodes[LOGITS] = nir.Output(output_type={"output": np.array([model.num_classes])})
    w.edges += [(src, LOGITS) for src in y.name]
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    walked = ModelSpec(timesteps=model.timesteps, input_shape=(c, s, s), class_names=(),
                       spiking_layers=tuple(w.info.spiking_layers), neurons_per_layer=tuple(w.info.neurons_per_layer),
                       layers=tuple(LayerSpec.from_dict(layer.metadata()) for layer in w.info.layers)).to_metadata()
    meta.update({k: v for k, v in walked.items() if k not in meta})  # what only the walk knows
    meta.update({
        NIR_METADATA["dt"]: repr(DT),
        NIR_METADATA["input"]: f"the image normalised per channel as (x - {NIR_METADATA['mean']}) / "
                               f"{NIR_METADATA['std']}, fed unchanged at each of the T steps",
        NIR_METADATA["mean"]: json.dumps(model.mean.flatten().tolist()),
        NIR_METADATA["std"]: json.dumps(model.std.flatten().tolist()),
        NIR_METADATA["output"]: "the classifier's value at each step; logits = its mean over the T steps",
        NIR_METADATA["threshold"]: "NIR fires on v > v_threshold, the model on v >= its threshold; v_threshold is "
                                   "the largest float32 below it, which makes the two identical in float32"})
    try:
        graph = nir.NIRGraph(nodes=w.nodes, edges=w.edges, metadata=meta, type_check=True)
    except (ValueError, AssertionError, NotImplementedError) as e:
        raise ExportError(f"the written NIR graph fails NIR's type check: {str(e).splitlines()[0][:300]}") from None
    return graph, w.info
