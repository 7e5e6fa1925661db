"""A minimal ONNX graph builder: unique names, deduplicated constants, nodes in order."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, overload

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder", "tensor_info", "set_metadata"]


def tensor_info(name: str, dims: list, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A value info; string dims are symbolic (the batch axis)."""
    return helper.make_tensor_value_info(name, elem_type, dims)


class GraphBuilder:
    """Collects nodes and initializers of one graph; ``op`` returns the name(s) of the node's output(s)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self._renames: dict[str, str] = {}

    def rename(self, name: str, hint: str) -> str:
        """Give the tensor ``name`` a fresh name made from ``hint`` in the model (:meth:`model` applies it), so
        that ops written before and after keep reading it by ``name``; returns the new name. An initializer
        keeps its name."""
        if any(t.name == name for t in self.initializers):
            return name
        if name not in self._renames:
            self._renames[name] = self.fresh(hint)
        return self._renames[name]

    def fresh(self, hint: str) -> str:
        base = hint.replace("/", ".")
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def const(self, value, hint: str = "const", dtype=np.float32, scalar: bool = False) -> str:
        """An initializer holding ``value`` cast to ``dtype`` (float32 by default), at least 1-D unless ``scalar``
        (a 0-D tensor: what QuantizeLinear / DequantizeLinear read as a per-tensor scale or zero point); equal
        constants are shared."""
        array = np.asarray(value, dtype=dtype) if scalar else np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (array.dtype.str, array.shape, array.tobytes())
        if array.size <= 16 and key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if array.size <= 16:
            self._consts[key] = name
        return name

    # An ``outputs`` that is an int equal to 1 still returns one name; the list overload is for counts > 1.
    @overload
    def op(  # type: ignore[overload-overlap]
        self,
        op_type: str,
        inputs: list[str],
        hint: str | None = None,
        outputs: Literal[1] = 1,
        out_names: list[str] | None = None,
        node_name: bool = True,
        **attrs: Any,
    ) -> str: ...

    @overload
    def op(
        self,
        op_type: str,
        inputs: list[str],
        hint: str | None = None,
        *,
        outputs: int,
        out_names: list[str] | None = None,
        node_name: bool = True,
        **attrs: Any,
    ) -> list[str]: ...

    def op(
        self,
        op_type: str,
        inputs: list[str],
        hint: str | None = None,
        outputs: int = 1,
        out_names: list[str] | None = None,
        node_name: bool = True,
        **attrs: Any,
    ) -> str | list[str]:
        """Append one node; ``node_name`` False leaves the (optional) node name out, to save bytes."""
        hint = hint or op_type.lower()
        names = out_names or [self.fresh(hint if outputs == 1 else f"{hint}.{j}") for j in range(outputs)]
        for n in out_names or ():
            self._used.add(n)
        name = self.fresh(f"n.{hint}") if node_name else None
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def live(self, outputs: list[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """The nodes that contribute to ``outputs`` and the initializers they read, in the order written.

        A writer may compute a weight it then does not use (the int8 form of a layer the chooser kept float32);
        those nodes and their stored inputs are left out of the file.
        """
        needed, nodes = set(outputs), []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                nodes.append(node)
                needed.update(i for i in node.input if i)
        return nodes[::-1], [t for t in self.initializers if t.name in needed]

    def _renamed(self, node: onnx.NodeProto) -> onnx.NodeProto:
        out = onnx.NodeProto()
        out.CopyFrom(node)
        for field in (out.input, out.output):
            for i, name in enumerate(field):
                field[i] = self._renames.get(name, name)
        return out

    def model(
        self,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        opset: int,
        metadata: Mapping[str, object],
        doc: str = "",
    ) -> onnx.ModelProto:
        """The model of the live nodes (:meth:`live`) at ONNX ``opset``; a node of another domain (onnxruntime's
        ``com.microsoft`` contrib operators) adds that domain's version 1 to the opset imports."""
        nodes, initializers = self.live([o.name for o in outputs])
        if self._renames:
            nodes = [self._renamed(n) for n in nodes]
        graph = helper.make_graph(nodes, "gee_deploy", inputs, outputs, initializers)
        opsets = [helper.make_opsetid("", opset)]
        opsets += [helper.make_opsetid(d, 1) for d in sorted({n.domain for n in nodes} - {"", "ai.onnx"})]
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="gee-deploy",
            doc_string=doc,
            ir_version=helper.find_min_ir_version_for(opsets[:1]),
        )
        set_metadata(model, metadata)
        return model


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, object]) -> None:
    """Replace ``model``'s metadata_props with ``metadata`` (string values; anything else as JSON)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
