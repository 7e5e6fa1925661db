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
* global / 2x2 average pooling as ``AvgPool2d``, flatten as ``Flatten`` over dims -3..-1 (NIR dims exclude the
  batch; negative dims read the same in importers that forget it, docs/nir.md);
* residual adds as two edges into one node (NIR sums a node's inputs);
* the graph input is the raw image in [0, 1], like every other artefact's, fed at every step (direct
  encoding); the input normalisation (x - mean) / std is the graph's first node :data:`NORMALISE`, a 1 x 1
  ``Conv2d`` with weight diag(1 / std) and bias -mean / std per channel (NIR's ``Scale`` has no bias and neither
  snntorch's nor SpikingJelly's importer maps it; folding into the stem conv is wrong at its zero-padded
  borders: docs/nir.md, "Input normalisation");
* the stem conv + BN, computed once by the PyTorch model, runs at every step in NIR (same values, T times the
  work); the output is the classifier's per-step value, whose mean over the T steps is the logits.

Max pooling (CIFARNet, VGG, the ResNet-34 stem) has no NIR primitive: export stops with one line naming the
module instead of writing an approximation.

:class:`NIRWriter` is the core model walk (:mod:`gee_deploy.walk`, shared with the ONNX writer and the PyTorch
reference: dataflow, spike sources, the layer table, the spiking layers) with NIR emitters: this module only says
which NIR node each step becomes.
"""

from __future__ import annotations

import json

import nir
import numpy as np
from torch import nn

from ..errors import UnsupportedModuleError
from ..export.errors import ExportError
from ..export.folding import dense_kernel, fold_layer
from ..export.weights import WeightOps
from ..kinds import ExportVariant, LayerKind
from ..neurons import LIF
from ..spec import INPUT_NAME, LOGITS, LayerSpec, ModelSpec
from ..walk import ModelWalk, Value, pool_geometry
from ..zoo.base import ConvPool, SpikingNet

__all__ = ["DT", "NIR_METADATA", "NORMALISE", "NIRWriter", "nir_threshold", "normalisation_node", "write_nir"]

DT = 1e-4  # seconds per step: the default dt of SpikingJelly's NIR importer and exporter and of snntorch's exporter

# keys of the NIR-specific part of the graph metadata (the gee.* part is the model spec's)
NIR_METADATA = {
    "dt": "nir.dt",  # seconds per step, str(float)
    "feed": "nir.input",  # what the input node expects
    "normalisation": "nir.input_normalisation",  # JSON {"node", "mean", "std"}: the graph's normalisation node
    # files written before the normalisation was a node: the Input node takes (x - mean) / std, per channel
    "mean": "nir.input_mean",  # JSON list (read only: an earlier version's key)
    "std": "nir.input_std",  # JSON list (read only: an earlier version's key)
    "output": "nir.output",  # what the output node gives
    "threshold": "nir.threshold_convention",
}
NORMALISE = "input_norm"  # the node that normalises the raw input


def normalisation_node(mean: np.ndarray, std: np.ndarray, size: int) -> nir.Conv2d:
    """(x - mean) / std per channel as a 1 x 1 ``nir.Conv2d`` on [C, size, size]: weight diag(1 / std)
    [C, C, 1, 1], bias -mean / std [C], both computed in float64 and rounded to float32 once.

    The float32 result x * (1 / std) + (-mean / std) may differ from (x - mean) / std by a rounding (about
    1e-7 on inputs of order 1); docs/nir.md has what that does to spikes and logits.
    """
    mean, std = (np.asarray(v, np.float64).reshape(-1) for v in (mean, std))
    weight = np.zeros((len(mean), len(mean), 1, 1))
    weight[np.arange(len(mean)), np.arange(len(mean)), 0, 0] = 1.0 / std
    return nir.Conv2d(
        input_shape=(size, size),
        weight=weight.astype(np.float32),
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=(-mean / std).astype(np.float32),
    )


def nir_threshold(v_threshold: float) -> float:
    """The NIR ``v_threshold`` (fires on v > it) equal to ours (fires on v >= ``v_threshold``) in float32.

    For float32 v there is no float32 strictly between the two, so v > nextafter(v_th, -inf) <=> v >= v_th.
    """
    return float(np.nextafter(np.float32(v_threshold), np.float32(-np.inf)))


Sources = tuple[str, ...]  # the NIR node names whose outputs sum to a value


def _sources(x: Value[Sources]) -> Sources:
    """The node names of ``x``: every emitter of :class:`NIRWriter` returns them (the base walk's None is for a
    walk that writes nothing)."""
    assert x.name is not None
    return x.name


class NIRWriter(ModelWalk[Sources]):
    """The model walk writing NIR nodes into ``nodes`` / ``edges``.

    A value's ``name`` is the tuple of NIR node names whose outputs sum to it (NIR adds a node's inputs), so a
    residual add is only the union of its operands' sources, and repeating a static value over the steps is
    nothing at all (NIR runs every node at every step).
    """

    variant = ExportVariant.DENSE

    def __init__(self, model: SpikingNet):
        super().__init__(model)
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []

    def node(self, name: str, node: nir.NIRNode, x: Value[Sources]) -> Sources:
        if name in self.nodes:
            raise ExportError(f"two NIR nodes would be named {name!r}")
        self.nodes[name] = node
        self.edges += [(src, name) for src in _sources(x)]
        return (name,)

    def emit_input(self) -> Sources:
        model = self.model
        c, s = model.in_channels, model.image_size
        self.nodes[INPUT_NAME] = nir.Input(input_type=np.array([c, s, s]))
        self.nodes[NORMALISE] = normalisation_node(model.mean.numpy(), model.std.numpy(), s)
        self.edges.append((INPUT_NAME, NORMALISE))
        return (NORMALISE,)

    def emit_weight(
        self,
        name: str,
        m: nn.Module,
        bn: nn.Module | None,
        x: Value[Sources],
        out_shape: tuple,
        pooled: ConvPool | None,
        dense_macs: int,
        calls: int,
    ) -> tuple[Sources, LayerSpec]:
        ops = WeightOps()  # numpy only: NIR has no constant computation, it stores the folded weights
        f = fold_layer(m, bn, pooled=pooled is not None, ops=ops, hint=name)
        bias = f.bias.value.astype(np.float32)
        # a ConvPool: conv + 2x2 average pool as one stride-2 conv; the genetic product in float64 (numpy, no
        # session to wait for it), rounded once
        kernel, stride = dense_kernel(ops, f, name, product=np.float64)
        weight = kernel.value
        if f.kind == LayerKind.CONV:
            node = nir.Conv2d(
                input_shape=tuple(x.shape[1:]),
                weight=weight,
                stride=stride,
                padding=f.padding,
                dilation=1,
                groups=1,
                bias=bias,
            )
        else:
            node = nir.Affine(weight=weight, bias=bias)
        _, layer = super().emit_weight(name, m, bn, x, out_shape, pooled, dense_macs, calls)
        return self.node(name, node, x), layer

    def emit_layer(self, name: str, m: nn.Module, x: Value[Sources]) -> Sources:
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return _sources(x)
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            raise UnsupportedModuleError(
                f"{name} ({m!r}) max-pools spikes and NIR has no max-pooling primitive; "
                f"{getattr(self.model, 'model_name', type(self.model).__name__)} cannot be exported to NIR "
                "(use --format onnx, or an architecture with average pooling such as smallnet or resnet18/19)"
            )
        if (
            isinstance(m, nn.AvgPool2d)
            and m.divisor_override is None
            and not m.ceil_mode
            and (m.count_include_pad or pool_geometry(m)[2] == 0)
        ):
            k, s, p, _ = pool_geometry(m)
            return self.node(
                name, nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([s, s]), padding=np.array([p, p])), x
            )
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            h, w = x.shape[1:]
            return self.node(
                name, nir.AvgPool2d(kernel_size=np.array([h, w]), stride=np.array([h, w]), padding=np.array([0, 0])), x
            )
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            # NIR shapes exclude the batch: torch dims 1..-1 are NIR dims 0..-1. Written as negative dims, which
            # mean the same with or without a batch axis: snntorch 1.0's importer passes NIR's dims to
            # torch.nn.Flatten unchanged (0 would fold the batch in), SpikingJelly's shifts only dims >= 0
            return self.node(name, nir.Flatten(input_type=np.array(x.shape), start_dim=-len(x.shape), end_dim=-1), x)
        raise UnsupportedModuleError(f"cannot export {name} ({m!r}) to NIR: no NIR primitive for it")

    def emit_add(self, a: Value[Sources], b: Value[Sources]) -> Sources:
        return _sources(a) + _sources(b)

    def emit_repeat(self, x: Value[Sources]) -> Sources:
        return _sources(x)

    def emit_lif(self, name: str, m: LIF, x: Value[Sources]) -> Sources:
        # neuron parameters in float64: tau = 2 * DT exactly, so dt / tau is exactly 1 / m.tau for any reader
        full = lambda v: np.full(x.shape, v, dtype=np.float64)  # noqa: E731
        return self.node(
            name,
            nir.LIF(
                tau=full(m.tau * DT),
                r=full(1.0),
                v_leak=full(m.v_reset),
                v_threshold=full(nir_threshold(m.v_threshold)),
                v_reset=full(m.v_reset),
            ),
            x,
        )


def write_nir(
    model: SpikingNet, *, class_names: tuple[str, ...] = (), dataset: str = "", checkpoint_sha256: str = ""
) -> tuple[nir.NIRGraph, ModelSpec]:
    """The ``nir.NIRGraph`` of eval-mode SpikingNet ``model`` and its :class:`~gee_deploy.spec.ModelSpec`.

    The graph's metadata holds the spec's ``gee.*`` keys and the NIR keys of :data:`NIR_METADATA`.

    Args:
        model: a zoo model (``stem``, ``body``, ``mean``, ``std``, ``timesteps``, ``num_classes``).
        class_names, dataset, checkpoint_sha256: recorded in the spec.

    Raises:
        UnsupportedModuleError: a module with no NIR primitive (max pooling of spikes), named in one line.
        ExportError: the graph fails NIR's own type check.
    """
    w = NIRWriter(model.eval())
    y = w.walk()
    w.nodes[LOGITS] = nir.Output(output_type=np.array([model.num_classes]))
    w.edges += [(src, LOGITS) for src in _sources(y)]
    spec = w.spec(class_names=class_names, dataset=dataset, checkpoint_sha256=checkpoint_sha256)
    meta = {
        **spec.to_metadata(),
        NIR_METADATA["dt"]: repr(DT),
        NIR_METADATA["feed"]: f"the raw image (pixels in [0, 1]), fed unchanged at each of the T steps; node "
        f"{NORMALISE!r} normalises it per channel as (x - mean) / std",
        NIR_METADATA["normalisation"]: json.dumps(
            {"node": NORMALISE, "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
        ),
        NIR_METADATA["output"]: "the classifier's value at each step; logits = its mean over the T steps",
        NIR_METADATA["threshold"]: "NIR fires on v > v_threshold, the model on v >= its threshold; v_threshold "
        "is the largest float32 below it, which makes the two identical in float32",
    }
    try:
        graph = nir.NIRGraph(nodes=w.nodes, edges=w.edges, metadata=meta, type_check=True)
    except (ValueError, AssertionError, NotImplementedError) as e:
        raise ExportError(f"the written NIR graph fails NIR's type check: {str(e).splitlines()[0][:300]}") from None
    return graph, spec
