"""The weights a graph runs with, computed from what the file stores (docs/export.md, "Storage").

An exported graph's weights are a function of the model's stored parameters: the population encodings E, the
gene matrix G, each layer's constant ``scale``, the BatchNorm statistics and the biases (paper eq. 1-3). Every
weight the writer needs (a folded dense kernel, a factorised layer's projection and mixing matrices, int8
codes and their per-channel scales) is built here by :class:`WeightOps`, one arithmetic step at a time. Each
step is computed eagerly with numpy (its value: shapes, MAC counts, the NIR writer and ``--profile`` read it)
and, when the ops hold a graph, also written as ONNX nodes fed by the stored parameters:

* ``genetic`` storage keeps those nodes. The file holds each population's encoding once (every layer that
  reads the population slices the same initializer), G once, the scales and the BatchNorm parameters, and an
  initializer-only subgraph that computes the weights. onnxruntime folds initializer-only subgraphs when a
  session is created, so the graph that runs is the folded one.
* ``folded`` storage is the same graph after :func:`fold_constants`: the subgraph evaluated by onnxruntime's
  CPU kernels (the ones its session-time constant folding runs) and replaced by plain initializers. Both
  storages therefore run bit-identical weights.

Float order (docs/export.md, "Float order"): the float forms' products run in float32, the weight int8 codes
are taken from in float64 rounded once; either way both storages run the weights the same kernels computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..ort_session import import_onnxruntime
from .graph import GraphBuilder

__all__ = ["Tensor", "WeightOps", "fold_constants", "constant_nodes", "KEEP_UNFOLDED"]

_ONNX_TYPES = {
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.bool_): TensorProto.BOOL,
}


@dataclass(frozen=True)
class Tensor:
    """One weight tensor: its value, and the graph tensor that computes it (None outside a graph)."""

    value: np.ndarray
    name: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype


class WeightOps:
    """Arithmetic on weight tensors: numpy always; ONNX nodes too when ``graph`` is given (``genetic`` storage).

    Every method mirrors one numpy expression and one ONNX operator with the same IEEE semantics (matmul in
    float64, elementwise ops, exact casts, round half to even), so a value and its graph tensor agree.

    The subgraph's intermediate tensors are named ``w``, ``w_1``, ... and its nodes left unnamed: names are
    bytes in the file, and only the stored parameters (``stored.<name in the model>``) and the weights handed
    to the compute graph (:meth:`output`) are worth reading. ``readable`` names every intermediate by its
    ``hint`` instead (for inspecting a graph).
    """

    def __init__(self, graph: GraphBuilder | None = None, names: dict[int, str] | None = None, readable: bool = False):
        self.graph = graph
        self.names = names or {}  # id(tensor) -> the model's name for it (initializer names of stored tensors)
        self.readable = readable
        self._nodes: dict[tuple, Tensor] = {}  # (op, inputs, attributes) -> its tensor: each step written once
        self._stored: dict[int, tuple[torch.Tensor, Tensor]] = {}
        self._outputs: dict[tuple[str, str], str] = {}
        self._encodings: set[int] = set()  # keys of _stored held tap-major (:meth:`encoding`)
        self._reshaped: dict[str, Tensor] = {}  # a Reshape's output -> the tensor it reshapes

    # -- what the file stores --------------------------------------------------------------------------------

    def stored(self, t: torch.Tensor, hint: str, dtype=np.float64) -> Tensor:
        """A parameter or buffer of the model, stored as-is (float32), read as ``dtype`` (float64 by default).

        The same tensor object (a population encoding shared by several layers, eq. 3; G) is stored once, as
        ``stored.<its name in the model>`` (``hint`` when the ops were given no names). Read it as float32 to
        slice or transpose it before the (exact) cast to float64: a layout op then moves half the bytes.
        """
        if id(t) in self._encodings:
            raise ValueError(f"{hint}: stored as an encoding before, now asked for as a plain tensor")
        return self.cast(self._store(t, hint, lambda value: value), dtype, f"{hint}.f64")

    def encoding(self, t: torch.Tensor, hint: str) -> Tensor:
        """A population encoding [C, k*k, g] (eq. 3), stored tap-major as [k, k, g, C], read as float32.

        The layout the weight products read without a transpose (:func:`gee_deploy.export.folding.generated_weight`);
        stored once per population like :meth:`stored`.
        """
        if id(t) in self._stored and id(t) not in self._encodings:
            raise ValueError(f"{hint}: stored as a plain tensor before, now asked for as an encoding")
        self._encodings.add(id(t))
        c, taps, g = t.shape
        k = math.isqrt(taps)
        return self._store(t, hint, lambda value: value.reshape(c, k, k, g).transpose(1, 2, 3, 0))

    def _store(self, t: torch.Tensor, hint: str, arrange) -> Tensor:
        """``t`` as float32 in the layout ``arrange`` gives it, an initializer ``stored.<its name in the model>``
        (``hint`` when the ops were given no names), written once per tensor object."""
        key = id(t)
        if key not in self._stored:
            value = np.ascontiguousarray(arrange(t.detach().to("cpu", torch.float32).numpy()))
            name = self.graph.const(value, "stored." + self.names.get(key, hint)) if self.graph is not None else None
            self._stored[key] = (t, Tensor(value, name))  # keep t alive: its id must not be reused while cached
        return self._stored[key][1]

    def constant(self, value, hint: str, dtype=np.float64) -> Tensor:
        """A small constant that is not a model parameter (a layer's scale, a BatchNorm's eps, 1/4)."""
        array = np.asarray(value, dtype=dtype)
        return Tensor(array, self._const(array, hint, dtype) if self.graph is not None else None)

    # -- arithmetic ------------------------------------------------------------------------------------------

    def _hint(self, hint: str) -> str:
        return hint if self.readable else "w"

    @staticmethod
    def _name(t: Tensor | str | None) -> str:
        """The graph name of an input: with a graph every tensor and small constant has one."""
        name = t if isinstance(t, str) or t is None else t.name
        assert name is not None, "a tensor of WeightOps with a graph has a name"
        return name

    def _op(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        assert self.graph is not None, "graph ops need a graph"
        return self.graph.op(op, inputs, self._hint(hint), node_name=self.readable, **attrs)

    def _node(self, op: str, inputs: list[Tensor | str | None], value: np.ndarray, hint: str, **attrs) -> Tensor:
        """``value`` as computed by ``op``; the same op on the same tensors (a layer's BatchNorm scale that both
        its int8 codes and its bias need, G transposed for every layer) is one node."""
        if self.graph is None:
            return Tensor(value)
        names = [self._name(i) for i in inputs]
        key = (op, tuple(names), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in self._nodes:
            self._nodes[key] = Tensor(value, self._op(op, names, hint, **attrs))
        return self._nodes[key]

    def _const(self, value, hint: str, dtype) -> str:
        assert self.graph is not None, "graph constants need a graph"
        return self.graph.const(value, self._hint(hint), dtype)

    def _int64(self, values, hint: str) -> str | None:
        return self._const(list(values), hint, np.int64) if self.graph is not None else None

    def matmul(self, a: Tensor, b: Tensor, hint: str) -> Tensor:
        return self._node("MatMul", [a, b], np.matmul(a.value, b.value), hint)

    def mul(self, a: Tensor, b: Tensor, hint: str) -> Tensor:
        return self._node("Mul", [a, b], a.value * b.value, hint)

    def add(self, a: Tensor, b: Tensor, hint: str) -> Tensor:
        return self._node("Add", [a, b], a.value + b.value, hint)

    def neg(self, a: Tensor, hint: str) -> Tensor:
        return self._node("Neg", [a], -a.value, hint)

    def div(self, a: Tensor, b: Tensor, hint: str) -> Tensor:
        return self._node("Div", [a, b], a.value / b.value, hint)

    def sqrt(self, a: Tensor, hint: str) -> Tensor:
        return self._node("Sqrt", [a], np.sqrt(a.value), hint)

    def transpose(self, a: Tensor, perm: tuple[int, ...], hint: str) -> Tensor:
        return self._node("Transpose", [a], np.transpose(a.value, perm), hint, perm=list(perm))

    def reshape(self, a: Tensor, shape: tuple[int, ...], hint: str) -> Tensor:
        value = a.value.reshape(shape)
        if value.shape == a.shape:
            return a
        source = self._reshaped.get(a.name, a) if a.name is not None else a  # a reshape of a reshape: one step
        out = self._node("Reshape", [source, self._int64(value.shape, f"{hint}.shape")], value, hint)
        if out.name is not None:
            self._reshaped[out.name] = source
        return out

    def slice(self, a: Tensor, axis: int, start: int, stop: int, hint: str) -> Tensor:
        if (start, stop) == (0, a.shape[axis]):
            return a
        index = [slice(None)] * a.value.ndim
        index[axis] = slice(start, stop)
        return self._node(
            "Slice",
            [
                a,
                self._int64([start], f"{hint}.start"),
                self._int64([stop], f"{hint}.stop"),
                self._int64([axis], f"{hint}.axis"),
            ],
            a.value[tuple(index)],
            hint,
        )

    def pad(self, a: Tensor, before: tuple[int, ...], after: tuple[int, ...], hint: str) -> Tensor:
        """Zero padding: ``before[d]`` / ``after[d]`` elements on each side of axis d."""
        value = np.pad(a.value, list(zip(before, after)))
        return self._node("Pad", [a, self._int64(list(before) + list(after), f"{hint}.pads")], value, hint)

    def cast(self, a: Tensor, dtype, hint: str) -> Tensor:
        dtype = np.dtype(dtype)
        if a.dtype == dtype:
            return a
        return self._node("Cast", [a], a.value.astype(dtype), hint, to=_ONNX_TYPES[dtype])

    def abs_max(self, a: Tensor, hint: str) -> Tensor:
        """max |a| over every axis but the last (a weight in [..., Cin, Cout] layout): [Cout]."""
        axes = tuple(range(a.value.ndim - 1))
        value = np.abs(a.value).max(axis=axes)
        if self.graph is None:
            return Tensor(value)
        magnitude = self._op("Abs", [self._name(a)], f"{hint}.abs")
        return Tensor(
            value,
            self._op("ReduceMax", [magnitude, self._const(list(axes), f"{hint}.axes", np.int64)], hint, keepdims=0),
        )

    def where_positive(self, a: Tensor, then: Tensor, otherwise: Tensor, hint: str) -> Tensor:
        value = np.where(a.value > 0, then.value, otherwise.value).astype(then.dtype)
        if self.graph is None:
            return Tensor(value)
        positive = self._op("Greater", [self._name(a), self._const(0, f"{hint}.zero", a.dtype)], f"{hint}.positive")
        return Tensor(value, self._op("Where", [positive, self._name(then), self._name(otherwise)], hint))

    def round_clip_int8(self, a: Tensor, bound: int, hint: str) -> Tensor:
        """int8 clip(round half to even(a), -bound, bound), as ``torch.round`` then ``torch.clamp`` then a cast.

        In the graph: QuantizeLinear with scale 1 and zero point 0, defined as saturate(round half to even(x / 1))
        into [-128, 127] (ONNX operator spec; x / 1 is exact), then an int8 Clip to +-``bound``: the same codes
        with one float pass instead of three (Round, Clip, Cast).
        """
        value = np.clip(np.round(a.value), -bound, bound).astype(np.int8)
        if self.graph is None:
            return Tensor(value)
        unit = self._const(1.0, f"{hint}.unit", a.dtype)
        saturated = self._op(
            "QuantizeLinear", [self._name(a), unit, self._const(0, f"{hint}.zero", np.int8)], f"{hint}.saturated"
        )
        lo, hi = (self._const(v, f"{hint}.bound", np.int8) for v in (-bound, bound))
        return Tensor(value, self._op("Clip", [saturated, lo, hi], hint))

    # -- handing a weight to the compute graph ---------------------------------------------------------------

    def output(self, graph: GraphBuilder, a: Tensor, hint: str, dtype=np.float32) -> str:
        """The name of ``a`` as ``dtype`` in ``graph``, where a compute op reads it (a Conv's weight, a bias).

        Without a graph of its own (the folded value only) it becomes an initializer named ``hint``. In the
        genetic graph the step that computes it is named ``hint`` in the model (:meth:`GraphBuilder.rename`;
        a Cast to ``dtype`` first where its type differs), so that after :func:`fold_constants` the initializer
        has a readable name and costs no extra copy; a stored tensor handed over as it is keeps its ``stored.``
        name. The same tensor handed over twice is one tensor.
        """
        if self.graph is None or a.name is None:
            return graph.const(a.value, hint, dtype)
        key = (a.name, np.dtype(dtype).str)
        if key not in self._outputs:
            if a.dtype != np.dtype(dtype):
                self._outputs[key] = graph.op("Cast", [a.name], hint, to=_ONNX_TYPES[np.dtype(dtype)])
            else:
                graph.rename(a.name, hint)
                self._outputs[key] = a.name
        return self._outputs[key]


# -- folded storage ------------------------------------------------------------------------------------------

# Ops never folded: a DequantizeLinear of int8 weights is how a QDQ graph says "this layer is int8"
# (:func:`gee_deploy.export.int8.emit_qdq`); folded, it would become float32 weights, 4x the bytes, and TensorRT or
# OpenVINO would run the layer in float.
KEEP_UNFOLDED = frozenset({"DequantizeLinear"})


def constant_nodes(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(nodes whose inputs are all initializers or outputs of such nodes, the others), each in graph order;
    :data:`KEEP_UNFOLDED` ops are never constant."""
    known = {t.name for t in graph.initializer}
    constant, rest = [], []
    for node in graph.node:
        if node.input and node.op_type not in KEEP_UNFOLDED and all(i in known for i in node.input if i):
            constant.append(node)
            known.update(node.output)
        else:
            rest.append(node)
    return constant, rest


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its initializer-only subgraph replaced by the initializers it computes.

    The subgraph is run by onnxruntime's CPU kernels (optimisations off, so it is computed exactly as written);
    a session of the unfolded graph folds it with the same kernels at creation. A graph with nothing to fold
    comes back unchanged (a copy).
    """
    ort = import_onnxruntime()  # heavy: imported when a graph is folded, not with this module
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constant, rest = constant_nodes(graph)
    if not constant:
        return out
    needed = {i for n in rest for i in n.input} | {o.name for o in graph.output}
    frontier = [o for n in constant for o in n.output if o in needed]
    used = {i for n in constant for i in n.input}
    sub = helper.make_graph(
        constant,
        "weights",
        [],
        [helper.make_empty_tensor_value_info(o) for o in frontier],
        [t for t in graph.initializer if t.name in used],
    )
    sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(sub_model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    del sub_model.graph.output[:]
    sub_model.graph.output.extend(helper.make_tensor_value_info(o, types[o], None) for o in frontier)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(sub_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = dict(zip(frontier, session.run(frontier, {})))
    still_read = {i for n in rest for i in n.input}
    kept = [t for t in graph.initializer if t.name in still_read]
    del graph.node[:]
    graph.node.extend(rest)
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(values[o], o) for o in frontier])
    return out
