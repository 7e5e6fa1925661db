"""Import a NIR graph written by any framework as a T-unrolled ONNX graph with our graph contract.

NIR (neuroir.org) describes one step of a network in continuous time. The import walks the graph's nodes in
dataflow order and writes each as ONNX ops with :class:`~gee_deploy.export.graph.GraphBuilder`; the result has
the inputs, outputs, metadata and :class:`~gee_deploy.spec.ModelSpec` our own exports have, so int8, bench,
serve, energy and robustness read it unchanged. docs/nir.md has the user-facing story and the per-framework
conventions.

* Time: each neuron ODE is integrated with forward Euler over one step ``dt`` (from the file's metadata, or
  ``--dt``), op for op as the spec-only executor (:mod:`gee_deploy.nir.executor`) computes it, so the two agree bit
  for bit on the neurons: LIF :math:`v_t = v_{t-1} + \\frac{dt}{\\tau}((v_{leak} - v_{t-1}) + R I_t)`, IF
  :math:`v_t = v_{t-1} + (dt R) I_t`, LI (no firing, output v), CubaLIF (the synaptic current first, then the
  membrane with the current of the same step). Spikes: :math:`z_t = [v_t > v_{th}]` (NIR) or ``>=``
  (``threshold_rule="ge"``), then :math:`v_t = v_{reset}` where it fired. Every neuron starts at rest.
* Layouts as :mod:`gee_deploy.walk`: a value is static ``[N, ...]`` (the same at every step: the image under
  direct encoding, and everything computed from it before the first neuron, computed once) or per-step
  ``[T*N, ...]`` (t-major). A node with several inputs sums them (NIR's rule).
* Input: ``static`` takes ``[N, *shape]`` and feeds it at every step; ``sequence`` takes ``[N, T, *shape]``.
  ``streaming`` writes one step instead: ``[N, *shape]`` (the image or this step's frame) with every neuron's
  state as graph I/O (``v_in.<key>`` / ``v_out.<key>``, zeros at the start), what ``gee-deploy serve`` keeps per
  sequence.
  ``shape`` is the Input node's type. Output: ``logits`` = the output node's value averaged over the T steps,
  ``spike_counts`` = spikes per spiking node (LIF, IF, CubaLIF) per sample, summed over neurons and steps.
* int8 (``variant="int8"``): every Affine / Linear / Conv2d that reads a spiking node's spikes directly (or
  through Flatten) gets int8 weights per output channel (:mod:`.int8`), as our own int8 exports do.

Anything else (Delay, Conv1d, Threshold, I, CubaLI, nested subgraphs, cycles from recurrent layers) is refused
in one line naming the node and the supported node types.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import nir
import numpy as np
import onnx
import torch

from ..errors import ModelFileError, UnsupportedModuleError
from ..export.errors import ExportError, UnknownOptionError
from ..export.folding import FoldedLayer, emit_dense, to_tap_major
from ..export.graph import GraphBuilder, tensor_info
from ..export.int8 import Int8Layer, emit_int8
from ..export.steps import concat_steps, repeat_steps, spikes_and_count, step_slices, uint8_spikes, write_outputs
from ..export.weights import Tensor
from ..export.writer import GraphOps
from ..kinds import ExportVariant, Form, LayerKind, Precision, StepInput
from ..quantisation import quantise_weight
from ..spec import BATCH_DIM, INPUT_NAME, LOGITS, SPIKE_COUNTS, LayerSpec, ModelSpec, state_names
from .executor import SPIKING_NODES, THRESHOLD_RULES, euler_factor

__all__ = [
    "SUPPORTED_NODES",
    "INPUT_MODES",
    "NIRImport",
    "FileFacts",
    "file_facts",
    "import_graph",
    "graph_dt",
    "topological_order",
]

SUPPORTED_NODES = (
    nir.Input,
    nir.Output,
    nir.Affine,
    nir.Linear,
    nir.Scale,
    nir.Conv2d,
    nir.Flatten,
    nir.AvgPool2d,
    nir.SumPool2d,
    nir.LIF,
    nir.IF,
    nir.LI,
    nir.CubaLIF,
)
NEURON_NODES = (nir.LIF, nir.IF, nir.LI, nir.CubaLIF)
INPUT_MODES = ("static", "sequence")
DT_KEYS = ("nir.dt", "dt")  # where a file's metadata may hold dt: our own export's key, then the plain one


def _supported() -> str:
    return ", ".join(t.__name__ for t in SUPPORTED_NODES)


@dataclass(frozen=True)
class NIRImport:
    """How a NIR graph becomes an unrolled ONNX graph.

    Attributes:
        timesteps: T, the steps unrolled in the graph.
        dt: the Euler step, in the units of the file's time constants (seconds for every framework we know).
        input_mode: "static" (one input repeated over the T steps) or "sequence" ([N, T, ...] per-step inputs).
        threshold_rule: "gt" (NIR: fire on v > v_th) or "ge" (fire on v >= v_th).
        variant: "dense" or "int8".
        input_mean, input_std: per channel (the input shape's first axis): the graph takes raw inputs and feeds
            (x - mean) / std to the Input node, as a file written by an earlier ``gee-deploy export --format nir``
            states (its Input node takes normalised images); None: the input as it is.
        normalisation_node: the node of a file written by ``gee-deploy export --format nir`` that normalises the
            raw input (a 1 x 1 Conv2d): written as the same convolution, but as the input's normalisation, not a
            layer of the spec (our own exports do not count it either); None: none.
        streaming: one timestep per call (docs/streaming.md): the input is one step's ``[N, *shape]`` (the image,
            or with ``input_mode="sequence"`` one frame), and every neuron's membrane (a CubaLIF's synaptic
            current too) is a graph input ``v_in.<key>`` and output ``v_out.<key>``, zeros at the start.
    """

    timesteps: int
    dt: float
    input_mode: str = "static"
    threshold_rule: str = "gt"
    variant: str = "dense"
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    normalisation_node: str | None = None
    streaming: bool = False

    def check(self) -> None:
        """:class:`UnknownOptionError` (one line) for a value outside its range."""
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise UnknownOptionError(f"--timesteps must be a positive integer, got {self.timesteps}")
        if not np.isfinite(self.dt) or self.dt <= 0:
            raise UnknownOptionError(f"--dt must be a positive number of seconds, got {self.dt}")
        for value, choices, what in (
            (self.input_mode, INPUT_MODES, "--input"),
            (self.threshold_rule, THRESHOLD_RULES, "--threshold-rule"),
            (self.variant, ("dense", "int8"), "--variant"),
        ):
            if value not in choices:
                raise UnknownOptionError(
                    f"{what} {value!r} does not apply to a NIR graph; choose one of: {', '.join(choices)}"
                )


def graph_dt(graph: nir.NIRGraph) -> float | None:
    """dt as the file's metadata states it (``nir.dt`` or ``dt``), or None."""
    for key in DT_KEYS:
        value = (graph.metadata or {}).get(key)
        if value is not None:
            try:
                return float(value.decode() if isinstance(value, bytes) else value)
            except (TypeError, ValueError):
                raise ModelFileError(f"the file's metadata {key}={value!r} is not a number") from None
    return None


@dataclass(frozen=True)
class FileFacts:
    """What a NIR file written by ``gee-deploy export --format nir`` states beyond its nodes (its ``gee.*`` model
    spec and ``nir.input_*`` keys; nothing for other frameworks' files): T, the class names, the dataset, and
    either the node that normalises the raw input (current files) or the per-channel normalisation the Input node
    expects (files written before the normalisation was a node)."""

    timesteps: int | None = None
    class_names: tuple[str, ...] = ()
    dataset: str = ""
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    normalisation_node: str | None = None


def file_facts(graph: nir.NIRGraph, source: str) -> FileFacts:
    """:class:`FileFacts` of ``graph``; empty without our metadata.

    Raises:
        ModelFileError: our metadata is there but incomplete or malformed.
    """
    from .validate import nir_inputs, normalisation_node

    if ModelSpec.key("timesteps") not in (graph.metadata or {}):  # not written by gee-deploy
        return FileFacts()
    spec, _, mean, std = nir_inputs(graph, source)
    facts = FileFacts(spec.timesteps, tuple(spec.class_names), spec.dataset)
    if mean is None or std is None:  # nir_inputs gives both or neither
        return replace(facts, normalisation_node=normalisation_node(graph, source))
    return replace(facts, input_mean=tuple(mean.flatten().tolist()), input_std=tuple(std.flatten().tolist()))


def topological_order(graph: nir.NIRGraph, source: str) -> tuple[list[str], dict[str, list[str]]]:
    """Node names in dataflow order and each node's predecessors; refuses what the import cannot run.

    Raises:
        UnsupportedModuleError: a node type outside :data:`SUPPORTED_NODES` or a nested subgraph (named), or a
            cycle (a recurrent connection).
        ModelFileError: not exactly one Input and one Output node, or an edge to a missing node.
    """
    for name, node in graph.nodes.items():
        if not isinstance(node, SUPPORTED_NODES):
            what = (
                "a nested NIR subgraph (recurrent layers are written so)"
                if isinstance(node, nir.NIRGraph)
                else f"a NIR {type(node).__name__} node"
            )
            raise UnsupportedModuleError(
                f"{source}: node {name!r} is {what}, which the import does not support; "
                f"supported node types: {_supported()}"
            )
    for kind in (nir.Input, nir.Output):
        found = [n for n, node in graph.nodes.items() if isinstance(node, kind)]
        if len(found) != 1:
            raise ModelFileError(f"{source} has {len(found)} {kind.__name__} nodes; the import needs exactly one")
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        if src not in graph.nodes or dst not in graph.nodes:
            raise ModelFileError(f"{source}: edge {src!r} -> {dst!r} names a node the graph does not have")
        preds[dst].append(src)
    indegree = {name: len(p) for name, p in preds.items()}
    succs: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        succs[src].append(dst)
    ready = [name for name in graph.nodes if indegree[name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for nxt in succs[name]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(graph.nodes):
        on_cycle = sorted(n for n in graph.nodes if indegree[n] > 0)
        raise UnsupportedModuleError(
            f"{source}: node {on_cycle[0]!r} is on a cycle (a recurrent connection), "
            f"which the import does not support; it imports feed-forward graphs of "
            f"{_supported()}"
        )
    for name in order:
        if not preds[name] and not isinstance(graph.nodes[name], nir.Input):
            raise ModelFileError(f"{source}: node {name!r} has no input edge")
    return order, preds


def _shape(value) -> tuple[int, ...] | None:
    """A NIR type (an array, or a dict with one array) as a shape, or None when it says nothing."""
    if isinstance(value, dict):
        value = next(iter(value.values()), None) if len(value) == 1 else None
    if value is None:
        return None
    a = np.asarray(value).reshape(-1)
    if a.size == 0 or a.dtype == object or not np.all(a > 0):
        return None
    return tuple(int(v) for v in a)


def _pair(value, what: str, name: str) -> tuple[int, int]:
    v = np.asarray(value).reshape(-1)
    if v.size not in (1, 2):
        raise ModelFileError(f"node {name!r}: {what} {value!r} is not one or two integers")
    return int(v[0]), int(v[-1])


def _all(a, value: float) -> bool:
    return bool(np.all(np.asarray(a) == value))


@dataclass
class _Value:
    """One value of the import: its ONNX tensor, its per-sample shape, its layout, whose spikes it holds."""

    name: str
    shape: tuple[int, ...]
    static: bool
    spikes_from: str | None = None


class _Importer:
    """Writes the nodes of ``graph`` in dataflow order into one :class:`GraphBuilder`."""

    def __init__(self, graph: nir.NIRGraph, opts: NIRImport, source: str):
        self.graph, self.opts, self.source = graph, opts, source
        self.g = GraphBuilder()
        for reserved in (INPUT_NAME, LOGITS, SPIKE_COUNTS):  # a node may be named so: it gets another tensor name
            self.g.fresh(reserved)
        self.steps = 1 if opts.streaming else opts.timesteps
        self.states: list[tuple[str, tuple[int, ...]]] = []  # streaming: (state key, per-sample shape)
        self.layers: list[LayerSpec] = []
        self.spiking: list[str] = []
        self.neurons: list[int] = []
        self.counts: list[str] = []
        self._uint8: dict[str, str] = {}

    def error(self, name: str, what: str) -> ModelFileError:
        return ModelFileError(f"{self.source}: node {name!r} {what}")

    # -- layouts ---------------------------------------------------------------------------------------------

    def per_step(self, x: _Value) -> _Value:
        if not x.static:
            return x
        return _Value(repeat_steps(self.g, x.name, len(x.shape), self.steps), x.shape, False, x.spikes_from)

    # -- the walk --------------------------------------------------------------------------------------------

    def run(self) -> tuple[_Value, tuple[int, ...]]:
        order, preds = topological_order(self.graph, self.source)
        values: dict[str, _Value] = {}
        out = None
        for name in order:
            node = self.graph.nodes[name]
            if isinstance(node, nir.Input):
                values[name] = self.input(name, node)
                continue
            xs = [values[p] for p in preds[name]]
            x = xs[0] if len(xs) == 1 else self.sum(name, xs)
            if isinstance(node, nir.Output):
                out = x
                continue
            values[name] = self.node(name, node, x)
        assert out is not None  # topological_order found exactly one Output node, and it is in the order
        if not self.spiking:
            raise UnsupportedModuleError(f"{self.source} has no spiking node (LIF, IF or CubaLIF): nothing spikes")
        if len(out.shape) != 1:
            raise ModelFileError(
                f"{self.source}: the output node receives [{', '.join(map(str, out.shape))}] per "
                "sample; the import needs a vector (the class scores)"
            )
        return out, values[next(n for n in order if isinstance(self.graph.nodes[n], nir.Input))].shape

    def input(self, name: str, node: nir.Input) -> _Value:
        shape = _shape(node.input_type)
        if shape is None:
            raise self.error(
                name,
                "(the Input) declares no shape; the import needs the input's shape (export "
                "the model with an example input of the real size)",
            )
        x = INPUT_NAME
        if self.opts.input_mean is not None:  # (x - mean) / std per channel, as our own graphs normalise
            if len(self.opts.input_mean) != shape[0]:
                raise self.error(
                    name,
                    f"(the Input) has {shape[0]} channels but the file's normalisation {len(self.opts.input_mean)}",
                )
            per_channel = (shape[0],) + (1,) * (len(shape) - 1)
            mean, std = (
                np.asarray(v, np.float32).reshape(per_channel) for v in (self.opts.input_mean, self.opts.input_std)
            )
            x = self.g.op(
                "Div",
                [self.g.op("Sub", [x, self.g.const(mean, "input_mean")], "centred"), self.g.const(std, "input_std")],
                "normalised",
            )
        if self.opts.input_mode == "static" or self.opts.streaming:  # streaming: one step's image or frame
            return _Value(x, shape, self.opts.input_mode == "static")
        x = self.g.op("Transpose", [x], "steps_first", perm=[1, 0] + list(range(2, len(shape) + 2)))
        x = self.g.op("Reshape", [x, self.g.const([-1, *shape], "folded_shape", np.int64)], "folded")
        return _Value(x, shape, False)

    def sum(self, name: str, xs: list[_Value]) -> _Value:
        if len({x.shape for x in xs}) != 1:
            raise self.error(name, f"sums inputs of different shapes {[list(x.shape) for x in xs]}")
        if len({x.static for x in xs}) != 1:
            xs = [self.per_step(x) for x in xs]
        y = xs[0].name
        for x in xs[1:]:
            y = self.g.op("Add", [y, x.name], f"{name}.sum")
        return _Value(y, xs[0].shape, xs[0].static)

    def node(self, name: str, node: nir.NIRNode, x: _Value) -> _Value:
        declared = _shape(getattr(node, "input_type", None))
        if (
            not isinstance(node, NEURON_NODES + (nir.Scale,))
            and declared is not None
            and declared != x.shape
            and not (isinstance(node, nir.Conv2d) and declared == x.shape[1:])
        ):
            raise self.error(
                name, f"declares input [{', '.join(map(str, declared))}] but receives [{', '.join(map(str, x.shape))}]"
            )
        if isinstance(node, (nir.Affine, nir.Linear)):
            return self.affine(name, node, x)
        if isinstance(node, nir.Conv2d):
            return self.conv(name, node, x)
        if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            return self.pool(name, node, x)
        if isinstance(node, nir.Flatten):
            return self.flatten(name, node, x)
        if isinstance(node, nir.Scale):
            scale = self.param(name, "scale", node.scale, x.shape)
            return _Value(self.g.op("Mul", [x.name, self.g.const(scale, f"{name}.scale")], name), x.shape, x.static)
        return self.neuron(name, node, x)

    def param(self, name: str, what: str, value, shape: tuple[int, ...]) -> np.ndarray:
        """A neuron / scale parameter as float64, checked to broadcast against the per-sample ``shape``."""
        a = np.asarray(value, np.float64)
        try:
            np.broadcast_shapes(a.shape, shape)
        except ValueError:
            raise self.error(
                name,
                f"has {what} of shape {list(a.shape)}, which does not broadcast to its input "
                f"[{', '.join(map(str, shape))}]",
            ) from None
        if np.broadcast_shapes(a.shape, shape) != shape:
            raise self.error(name, f"has {what} of shape {list(a.shape)}, larger than its input {list(shape)}")
        return a

    # -- weight layers ---------------------------------------------------------------------------------------

    def weight_layer(
        self,
        name: str,
        kind: LayerKind,
        x: _Value,
        weight: np.ndarray,
        bias: np.ndarray,
        out_shape: tuple,
        macs: int,
        dense,
        int8_geometry: tuple | None,
    ) -> _Value:
        """Write one Affine / Conv2d: int8 when asked and it reads spikes (and its geometry allows), else ``dense``."""
        calls = 1 if x.static else self.steps
        if self.opts.variant == "int8" and x.spikes_from is not None and int8_geometry is not None:
            q, s = quantise_weight(torch.from_numpy(weight.astype(np.float32)))
            k, stride, pad = int8_geometry
            layer = Int8Layer(
                kind,
                Tensor(np.ascontiguousarray(q.numpy().transpose(2, 3, 1, 0) if q.dim() == 4 else q.numpy().T)),
                Tensor(s.numpy().astype(np.float32)),
                Tensor(bias.astype(np.float32)),
                k,
                stride,
                pad,
            )
            spikes = uint8_spikes(self.g, self._uint8, x.name, x.name, x.spikes_from)  # 0/1 spikes as uint8: exact
            y = emit_int8(self.g, spikes, layer, x.shape, name)
            spec = LayerSpec(
                name=name,
                kind=kind,
                variant=ExportVariant.DENSE,
                macs=macs,
                input_is_spikes=True,
                spiking_input_layer=x.spikes_from,
                spike_macs=macs,
                calls=calls,
                form=Form.DENSE,
                dense_macs=macs,
                precision=Precision.INT8,
                weight_scales=tuple(layer.scale.value.tolist()),
            )
        else:
            y = dense()
            spec = LayerSpec(
                name=name,
                kind=kind,
                variant=ExportVariant.DENSE,
                macs=macs,
                input_is_spikes=x.spikes_from is not None,
                spiking_input_layer=x.spikes_from,
                spike_macs=macs,
                calls=calls,
                form=Form.DENSE,
                dense_macs=macs,
            )
        self.layers.append(spec)
        return _Value(y, out_shape, x.static)

    def affine(self, name: str, node, x: _Value) -> _Value:
        w = np.asarray(node.weight, np.float64)
        if w.ndim != 2 or x.shape != (w.shape[1],):
            raise self.error(
                name,
                f"has weight {list(w.shape)} but receives [{', '.join(map(str, x.shape))}] (the "
                "import runs Affine / Linear on vectors: flatten first)",
            )
        bias = np.asarray(node.bias, np.float64) if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
        folded = FoldedLayer(
            LayerKind.LINEAR, Tensor(bias.reshape(-1)), Tensor(np.ones(w.shape[0])), weight=Tensor(to_tap_major(w))
        )
        return self.weight_layer(
            name,
            LayerKind.LINEAR,
            x,
            w,
            bias.reshape(-1),
            (w.shape[0],),
            int(w.size),
            lambda: emit_dense(self.g, x.name, folded, name),
            (1, 1, 0),
        )

    def conv(self, name: str, node: nir.Conv2d, x: _Value) -> _Value:
        w = np.asarray(node.weight, np.float64)
        groups = int(node.groups)
        if len(x.shape) != 3 or w.ndim != 4 or x.shape[0] != w.shape[1] * groups:
            raise self.error(
                name, f"has weight {list(w.shape)} (groups {groups}) but receives [{', '.join(map(str, x.shape))}]"
            )
        (sh, sw), (dh, dw) = _pair(node.stride, "stride", name), _pair(node.dilation, "dilation", name)
        kh, kw = w.shape[2:]
        if isinstance(node.padding, str):
            if node.padding not in ("same", "valid"):
                raise self.error(name, f"has padding {node.padding!r}")
            total = (dh * (kh - 1), dw * (kw - 1)) if node.padding == "same" else (0, 0)
            pads = [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2]
        else:
            ph, pw = _pair(node.padding, "padding", name)
            pads = [ph, pw, ph, pw]
        h, wd = x.shape[1:]
        ho = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
        wo = (wd + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise self.error(name, f"leaves no output of its [{', '.join(map(str, x.shape))}] input")
        out_shape = (w.shape[0], ho, wo)
        bias = np.asarray(node.bias, np.float64).reshape(-1) if node.bias is not None else np.zeros(w.shape[0])
        macs = int(np.prod(out_shape)) * w.shape[1] * kh * kw
        square = kh == kw and sh == sw and dh == dw == 1 and groups == 1 and len(set(pads)) == 1
        folded = FoldedLayer(
            LayerKind.CONV, Tensor(bias), Tensor(np.ones(w.shape[0])), kh, sh, pads[0], weight=Tensor(to_tap_major(w))
        )

        def dense() -> str:
            if square:
                return emit_dense(self.g, x.name, folded, name)
            return self.g.op(
                "Conv",
                [x.name, self.g.const(w, f"{name}.weight"), self.g.const(bias, f"{name}.bias")],
                name,
                pads=pads,
                strides=[sh, sw],
                dilations=[dh, dw],
                group=groups,
            )

        if name == self.opts.normalisation_node:  # the input's normalisation, not a layer of the network
            return _Value(dense(), out_shape, x.static)
        return self.weight_layer(
            name, LayerKind.CONV, x, w, bias, out_shape, macs, dense, (kh, sh, pads[0]) if square else None
        )

    # -- stateless layers ------------------------------------------------------------------------------------

    def pool(self, name: str, node, x: _Value) -> _Value:
        if len(x.shape) != 3:
            raise self.error(name, f"pools a [{', '.join(map(str, x.shape))}] input; it needs [C, H, W]")
        (kh, kw), (sh, sw) = _pair(node.kernel_size, "kernel_size", name), _pair(node.stride, "stride", name)
        ph, pw = _pair(node.padding, "padding", name)
        c, h, w = x.shape
        out_shape = (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        pads, strides = [ph, pw, ph, pw], [sh, sw]
        if isinstance(node, nir.AvgPool2d):
            y = self.g.op(
                "AveragePool", [x.name], name, kernel_shape=[kh, kw], count_include_pad=1, pads=pads, strides=strides
            )
        else:  # a sum over the window: a depthwise conv with ones
            ones = self.g.const(np.ones((c, 1, kh, kw)), f"{name}.ones")
            y = self.g.op("Conv", [x.name, ones], name, group=c, pads=pads, strides=strides)
        return _Value(y, out_shape, x.static)

    def flatten(self, name: str, node: nir.Flatten, x: _Value) -> _Value:
        n = len(x.shape)
        start, end = int(node.start_dim) % n, int(node.end_dim) % n  # NIR dims exclude the batch
        if start > end:
            raise self.error(name, f"flattens dims {node.start_dim}..{node.end_dim} of a {n}-d input")
        shape = x.shape[:start] + (int(np.prod(x.shape[start : end + 1])),) + x.shape[end + 1 :]
        y = self.g.op("Reshape", [x.name, self.g.const([-1, *shape], f"{name}.shape", np.int64)], name)
        return _Value(y, shape, x.static, x.spikes_from)

    # -- neurons ---------------------------------------------------------------------------------------------

    def const(self, name: str, what: str, a: np.ndarray) -> str:
        return self.g.const(a.astype(np.float32), f"{name}.{what}")

    def neuron(self, name: str, node, x: _Value) -> _Value:
        """The recurrence of one neuron node over the T steps, the same float ops as :mod:`gee_deploy.nir.executor`.

        Not :func:`gee_deploy.neurons.charge`: that is SpikingJelly's order for one scalar tau with the leak to
        v_reset; a NIR neuron leaks to v_leak (which may differ from v_reset) with per-neuron parameters, and the
        graph must compute the spec executor's floats, op for op, to validate exactly against it.
        """
        g, dt, shape = self.g, self.opts.dt, x.shape
        p = lambda what: self.param(name, what, getattr(node, what), shape)  # noqa: E731
        cuba = isinstance(node, nir.CubaLIF)
        leak: tuple[np.ndarray, np.ndarray] | None  # (alpha = dt / tau, v_leak); None: an IF, which does not leak
        if isinstance(node, nir.IF):
            leak, r = None, (dt * p("r")).astype(np.float32)
        else:
            tau = self.param(name, "tau", node.tau_mem if cuba else node.tau, shape)
            alpha, r, v_leak = euler_factor(dt, tau), p("r").astype(np.float32), p("v_leak").astype(np.float32)
            leak = (alpha, v_leak)
        spiking = isinstance(node, SPIKING_NODES)
        v_th = p("v_threshold").astype(np.float32) if spiking else None
        v_reset = p("v_reset").astype(np.float32) if spiking else np.zeros((), np.float32)
        if self.opts.streaming and not _all(v_reset, 0.0):
            raise UnsupportedModuleError(
                f"{self.source}: node {name!r} rests at v_reset != 0; a streaming graph's "
                "membranes start from zeros (Triton's zero initial state): import it "
                "without --streaming"
            )

        def mul(a: str, c: np.ndarray, what: str) -> str:  # x * 1 is x
            return a if _all(c, 1.0) else g.op("Mul", [self.const(name, what, c), a], f"{name}.{what}x")

        # the input current r * I (CubaLIF: the synaptic current first)
        xs = step_slices(g, x.name, x.static, self.steps, name)
        if cuba:
            a_syn, w_in = euler_factor(dt, p("tau_syn")), p("w_in").astype(np.float32)
            syn, currents = self.state_in(f"{name}.i", shape), []
            for xt in xs:
                drive = mul(xt, w_in, "w_in")
                # i + a ((0 - i) + w x), with i = 0 at rest: a ((0 - 0) + w x) = a (w x) exactly
                inner = drive if syn is None else g.op("Sub", [drive, syn], f"{name}.di")
                syn = (
                    mul(inner, a_syn, "alpha_syn")
                    if syn is None
                    else g.op("Add", [syn, mul(inner, a_syn, "alpha_syn")], f"{name}.i")
                )
                currents.append(syn)
            xs = currents
            if self.opts.streaming:
                assert syn is not None  # xs holds at least one step (opts.check: T >= 1)
                self.state_out(f"{name}.i", syn)
        static_drive = x.static and not cuba
        drive_once = mul(xs[0], r, "r") if static_drive else None
        v, outs = self.state_in(name, shape), []
        for t, xt in enumerate(xs):
            drive = drive_once if drive_once is not None else mul(xt, r, "r")
            # v + alpha ((v_leak - v) + drive); at rest v = v_reset (a constant)
            v_prev = v if v is not None else self.const(name, "v_reset", v_reset)
            if leak is None:  # IF: v + drive
                v = drive if v is None and _all(v_reset, 0.0) else g.op("Add", [v_prev, drive], f"{name}.v")
            else:
                alpha, v_leak = leak
                if _all(v_leak, 0.0):  # (0 - v) + d is d - v exactly
                    inner = drive if v is None and _all(v_reset, 0.0) else g.op("Sub", [drive, v_prev], f"{name}.d")
                else:
                    inner = g.op(
                        "Add",
                        [g.op("Sub", [self.const(name, "v_leak", v_leak), v_prev], f"{name}.leak"), drive],
                        f"{name}.d",
                    )
                step = mul(inner, alpha, "alpha")
                v = step if v is None and _all(v_reset, 0.0) else g.op("Add", [v_prev, step], f"{name}.v")
            if v_th is None:  # not spiking
                outs.append(v)
                continue
            fired = g.op(
                "GreaterOrEqual" if self.opts.threshold_rule == "ge" else "Greater",
                [v, self.const(name, "v_threshold", v_th)],
                f"{name}.fire",
            )
            outs.append(fired)
            if t < len(xs) - 1 or self.opts.streaming:
                v = self.reset(name, v, fired, v_th, v_reset)
        if self.opts.streaming:
            assert v is not None  # xs holds at least one step (opts.check: T >= 1)
            self.state_out(name, v)
        if not spiking:
            return _Value(concat_steps(g, outs, f"{name}.v_steps"), shape, False)
        neurons = int(np.prod(shape))
        _, spikes, count = spikes_and_count(g, outs, tuple(shape), name)
        self.counts.append(count)
        self.spiking.append(name)
        self.neurons.append(neurons)
        return _Value(spikes, shape, False, name)

    def state_in(self, key: str, shape: tuple[int, ...]) -> str | None:
        """Streaming: the graph input ``v_in.<key>`` holding a state after the previous step; else None (at rest)."""
        if not self.opts.streaming:
            return None
        self.states.append((key, shape))
        return state_names(key)[0]

    def state_out(self, key: str, value: str) -> None:
        """Streaming: ``value`` (the state after this step) as the graph output ``v_out.<key>``."""
        self.g.op("Identity", [value], out_names=[state_names(key)[1]])

    def reset(self, name: str, v: str, fired: str, v_th: np.ndarray, v_reset: np.ndarray) -> str:
        """v_reset where it fired, else v. To 0 with one threshold: our own graphs' v - ThresholdedRelu(v)
        (:class:`~gee_deploy.export.writer.GraphOps`; keeps exactly the v that fired, :func:`gee_deploy.neurons.reset`
        has why it beats Where), for a float32 v > th written as the same v >= nextafter(th, +inf)."""
        if _all(v_reset, 0.0) and np.unique(v_th).size == 1:
            th = np.float32(np.unique(v_th)[0])
            at_least = th if self.opts.threshold_rule == "ge" else np.nextafter(th, np.float32(np.inf))
            return GraphOps(self.g, name).zero_where_fired(v, fired, float(at_least), "v")
        return self.g.op("Where", [fired, self.const(name, "v_reset", v_reset), v], f"{name}.v")


def import_graph(
    graph: nir.NIRGraph,
    opts: NIRImport,
    opset: int,
    *,
    source: str = "NIR graph",
    file_sha256: str = "",
    class_names: tuple[str, ...] = (),
    dataset: str = "",
) -> tuple[onnx.ModelProto, ModelSpec]:
    """The checked ONNX graph of NIR ``graph`` unrolled over ``opts.timesteps`` steps, and its spec.

    Graph I/O: input ``input`` float32 [N, *shape] (static) or [N, T, *shape] (sequence), ``shape`` the Input
    node's type; outputs ``logits`` [N, classes] and ``spike_counts`` [N, L], L spiking nodes in dataflow order.
    The spec's ``model_args`` hold dt, the threshold rule, the input mode and any input normalisation, which a
    reference run needs (:func:`gee_deploy.nir.executor.run_spec`).

    Raises:
        UnsupportedModuleError: a node type, subgraph or cycle the import does not run (named, with the
            supported node types).
        ModelFileError: missing shapes, edges to missing nodes, inconsistent shapes (the node is named).
        ExportError: the written graph fails onnx.checker.
    """
    opts.check()
    w = _Importer(graph, opts, source)
    out, in_shape = w.run()
    g, k = w.g, out.shape[0]
    write_outputs(g, out.name, out.static, w.steps, k, w.counts)
    input_shape = in_shape if opts.input_mode == "static" or opts.streaming else (opts.timesteps, *in_shape)
    spec = ModelSpec(
        timesteps=opts.timesteps,
        input_shape=input_shape,
        class_names=tuple(class_names) or tuple(str(i) for i in range(k)),
        spiking_layers=tuple(w.spiking),
        neurons_per_layer=tuple(w.neurons),
        layers=tuple(w.layers),
        variant=ExportVariant(opts.variant),
        model_name=f"nir:{source.rsplit('/', 1)[-1]}",
        model_args={
            "dt": opts.dt,
            "threshold_rule": opts.threshold_rule,
            "input": opts.input_mode,
            **(
                {"input_mean": list(opts.input_mean), "input_std": list(opts.input_std)}
                if opts.input_mean is not None and opts.input_std is not None
                else {}
            ),
        },
        checkpoint_sha256=file_sha256,
        dataset=dataset,
        streaming=opts.streaming,
        step_input=StepInput.STATIC if opts.input_mode == "static" else StepInput.FRAMES,
        state_layers=tuple(key for key, _ in w.states),
    )
    inputs = [tensor_info(INPUT_NAME, [BATCH_DIM, *input_shape])]
    outputs = [tensor_info(LOGITS, [BATCH_DIM, k]), tensor_info(SPIKE_COUNTS, [BATCH_DIM, len(w.counts)])]
    for key, shape in w.states:
        v_in, v_out = state_names(key)
        inputs.append(tensor_info(v_in, [BATCH_DIM, *shape]))
        outputs.append(tensor_info(v_out, [BATCH_DIM, *shape]))
    proto = g.model(inputs, outputs, opset, spec.to_metadata())
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the written graph fails onnx.checker: {str(e).splitlines()[0][:300]}") from None
    return proto, spec
