"""NeuroBench's efficiency metrics (``neurobench`` 2.3.0, NeuroBench/neurobench) of a deployed model, computed by
our code from what the runtime's own graph produced; docs/neurobench.md gives each definition with its source.

NeuroBench measures a PyTorch module with forward hooks. We follow its definitions, names and units, but count
from the runtime: the spikes ``spike_counts`` reports, and, per weight layer, the input the graph fed it
(onnxruntime: the ONNX graph's own tensors, added as outputs of a second session over the same file; PyTorch: a
forward pre-hook on the module that runs). NeuroBench itself is not imported here: the tests run it on the
PyTorch models and compare (tests/test_neurobench.py).

* ``Footprint`` / ``ParameterCount``: bytes of the parameters and buffers / elements of the parameters of the
  model as stored (a checkpoint's module: E, G, BatchNorm; an ONNX file: its initializers; a NIR file: its
  nodes' float arrays), with the file's bytes beside them (``file_bytes``).
* ``ConnectionSparsity``: zero weights / all weights of the Linear and Conv layers, over the weights that run
  (a genetic layer's W = s E_in G E_out^T; a conv + pool, the fused kernel), rounded to 4 decimals as NeuroBench
  rounds it.
* ``ActivationSparsity``: 1 - nonzero / all outputs of the spiking layers, over layers, steps and samples.
* ``SynapticOperations``: per sample, ``Effective_ACs`` / ``Effective_MACs``: for each call of a weight layer,
  the output sum of the layer with nonzero weights set to 1 on its input with nonzero values set to 1 (bias
  left out), as ACs when every input value is in {-1, 0, 1} and as MACs otherwise; ``Dense``: the same with
  every weight and input set to 1 (padding stays 0). The output sum equals sum_i [x_i != 0] fan-out(i), with
  fan-out(i) the (output, tap) pairs input i reaches through a nonzero weight, which is how we count it.
* ``MembraneUpdates``: NeuroBench's rule (every neuron at the first step, then each membrane value that
  changed from one step to the next) over the LIF membranes of the PyTorch reference (no graph outputs its
  membranes; its hook reads snnTorch's ``.mem`` only, so NeuroBench itself reports 0 for other neurons).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..spec import INPUT_NAME, ModelSpec

__all__ = [
    "NEUROBENCH_VERSION",
    "Connection",
    "OpCounter",
    "activation_sparsity",
    "connection_sparsity",
    "membrane_updates",
    "module_footprint",
    "probe",
    "neurobench_block",
    "borrow_counts",
    "neurobench_results",
]

NEUROBENCH_VERSION = "2.3.0"  # the release whose definitions (neurobench/metrics/) these follow
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")  # the ONNX nodes a dense fp32 weight layer is written as


@dataclass
class Connection:
    """One Linear or Conv layer as NeuroBench counts it: the weights that run and the conv geometry.

    Attributes:
        name: the layer's name in the spec (:class:`~gee_deploy.spec.LayerSpec`).
        weight: [Cout, Cin, kh, kw] (conv) or [out, in] (linear), float.
        stride: (sh, sw) of a conv.
        pads: (top, left, bottom, right) zero padding of a conv.
    """

    name: str
    weight: np.ndarray
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    _fanouts: dict = field(default_factory=dict, repr=False)

    def fanout(self, in_shape: tuple[int, ...], all_ones: bool = False) -> np.ndarray:
        """Ops each input value of one item costs, shape ``in_shape`` (int64): the (output, tap) pairs it reaches
        through a nonzero weight (through any weight with ``all_ones``), the adjoint of the layer applied to ones.

        Raises:
            ValueError: ``in_shape`` does not fit the weight.
        """
        key = (tuple(in_shape), all_ones)
        if key not in self._fanouts:
            self._fanouts[key] = self._adjoint(tuple(in_shape), all_ones)
        return self._fanouts[key]

    def _adjoint(self, in_shape: tuple[int, ...], all_ones: bool) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        w = torch.from_numpy(np.ones(self.weight.shape) if all_ones else (self.weight != 0).astype(np.float64))
        if self.weight.ndim == 2:
            if int(np.prod(in_shape)) != w.shape[1]:
                raise ValueError(f"{self.name}: input {in_shape} does not fit a {tuple(w.shape)} weight")
            return w.sum(0).round().long().numpy().reshape(in_shape)
        c, h, wd = in_shape
        top, left, bottom, right = self.pads
        ph, pw = h + top + bottom, wd + left + right
        kh, kw = w.shape[2:]
        if c != w.shape[1] or ph < kh or pw < kw:
            raise ValueError(f"{self.name}: input {in_shape} does not fit a {tuple(w.shape)} weight")
        oh, ow = (ph - kh) // self.stride[0] + 1, (pw - kw) // self.stride[1] + 1
        ones = torch.ones(1, w.shape[0], oh, ow, dtype=torch.float64)
        padded = F.conv_transpose2d(
            ones,
            w,
            stride=self.stride,
            output_padding=(ph - ((oh - 1) * self.stride[0] + kh), pw - ((ow - 1) * self.stride[1] + kw)),
        )
        return padded[0, :, top : top + h, left : left + wd].round().long().numpy()


class OpCounter:
    """NeuroBench's ``SynapticOperations``, accumulated over calls of the weight layers (ints until the end).

    Args:
        connections: the weight layers, by name.
    """

    def __init__(self, connections: dict[str, Connection]):
        self.connections = connections
        self.layers: dict[str, dict] = {name: {"AC": 0, "MAC": 0, "Dense": 0} for name in connections}

    def add(self, name: str, x: np.ndarray) -> None:
        """One call of layer ``name`` on ``x`` [items, *input shape] (items: samples, or steps x samples)."""
        conn, row = self.connections[name], self.layers[name]
        x = np.asarray(x)
        spiking = bool(np.isin(x, (-1, 0, 1)).all())
        nonzero = np.count_nonzero(x, axis=0)
        row["AC" if spiking else "MAC"] += int((nonzero * conn.fanout(x.shape[1:])).sum())
        row["Dense"] += int(conn.fanout(x.shape[1:], all_ones=True).sum()) * len(x)

    def result(self, samples: int) -> dict:
        """``{"Effective_MACs", "Effective_ACs", "Dense"}`` per sample, as NeuroBench's ``compute`` returns them."""
        total = {k: sum(r[k] for r in self.layers.values()) for k in ("MAC", "AC", "Dense")}
        return {
            "Effective_MACs": total["MAC"] / samples,
            "Effective_ACs": total["AC"] / samples,
            "Dense": total["Dense"] / samples,
        }


def activation_sparsity(spike_counts: np.ndarray, neurons: tuple[int, ...], timesteps: int) -> float:
    """1 - spikes / (samples x T x neurons) over every spiking layer, from ``spike_counts`` [N, L] (spikes are 0/1:
    their count is the count of nonzero outputs NeuroBench's ``ActivationSparsity`` takes)."""
    counts = np.asarray(spike_counts, dtype=np.float64)
    total = len(counts) * timesteps * int(np.sum(neurons))
    return float((total - counts.sum()) / total) if total else 0.0


def connection_sparsity(connections: dict[str, Connection]) -> dict:
    """Zeros / all weights over ``connections``: NeuroBench's ``ConnectionSparsity`` (rounded to 4 decimals as it
    rounds) and the two counts."""
    zeros = sum(int(np.count_nonzero(c.weight == 0)) for c in connections.values())
    total = sum(int(c.weight.size) for c in connections.values())
    return {"ConnectionSparsity": round(zeros / total, 4) if total else None, "zero_weights": zeros, "weights": total}


def membrane_updates(v_seq: np.ndarray) -> int:
    """NeuroBench's ``MembraneUpdates`` count of one spiking layer over ``v_seq`` [T, N, ...], the membrane after
    each step: all N x neurons values at the first step, then those that changed from the step before."""
    v_seq = np.asarray(v_seq)
    return int(v_seq[0].size + np.count_nonzero(v_seq[1:] != v_seq[:-1]))


def module_footprint(model) -> dict:
    """NeuroBench's ``Footprint`` (bytes of parameters and buffers) and ``ParameterCount`` of a torch module."""
    params = list(model.parameters())
    size = sum(p.numel() * p.element_size() for p in params) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    return {"Footprint": int(size), "ParameterCount": int(sum(p.numel() for p in params))}


def _onnx_footprint(path: Path) -> dict:
    """An ONNX file's initializers: their bytes (``Footprint``) and elements (``ParameterCount``); the file makes
    no parameter / buffer distinction, so both count every initializer."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    size = count = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        count += n
        size += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return {"Footprint": size, "ParameterCount": count}


def _nir_footprint(graph) -> dict:
    """A NIR graph's floating-point node arrays (weights, biases and per-neuron parameters such as tau and v_th;
    integer geometry such as strides left out): their bytes (``Footprint``) and elements (``ParameterCount``)."""
    arrays = [
        v
        for node in graph.nodes.values()
        for v in vars(node).values()
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)
    ]
    return {"Footprint": int(sum(a.nbytes for a in arrays)), "ParameterCount": int(sum(a.size for a in arrays))}


# -- probes: each runtime's own counts ---------------------------------------------------------------------------


@dataclass
class Measured:
    """What a probe read from one runtime over the images: op counts per layer, the weights that ran, membrane
    updates (None where the runtime exposes no membranes), the samples, the footprint of what it loaded."""

    ops: OpCounter
    samples: int
    footprint: dict
    membrane_updates: float | None = None  # per sample
    unmeasured: tuple[str, ...] = ()  # spec layers the runtime's graph gave no input for (borrowed, see below)


def probe(runtime, images: np.ndarray, batch_size: int = 64) -> Measured | None:
    """Run ``runtime``'s own graph over ``images`` [N, C, H, W] once more, reading every weight layer's input and
    weights: a :class:`Measured`, or None for a runtime whose graph shows no intermediate values (a TensorRT
    plan, the NIR executor): its counts come from :func:`borrow_counts`."""
    from ..serving.runtimes import OrtRuntime

    if runtime.name == "torch":
        return _probe_torch(runtime, images, batch_size)
    if isinstance(runtime, OrtRuntime):
        return _probe_onnx(runtime, images, batch_size)
    return None


def _probe_torch(runtime, images: np.ndarray, batch_size: int) -> Measured:
    import torch

    from ..neurons import LIF, TENSOR_OPS, charge, fire, reset
    from ..walk import ModelWalk

    modules: dict[str, tuple] = {}  # layer name -> (the module that runs it, the weight layer)

    class _Layers(ModelWalk):
        def emit_weight(self, name, m, bn, x, out_shape, pooled, dense_macs, calls):
            modules[name] = (pooled if pooled is not None else m, m)
            return super().emit_weight(name, m, bn, x, out_shape, pooled, dense_macs, calls)

    model = runtime.model
    with torch.no_grad():
        _Layers(model).walk()
        connections = {name: _torch_connection(name, run, m) for name, (run, m) in modules.items()}
    ops, updates = OpCounter(connections), [0]

    def count(name):  # a weight layer's input: [items, C, H, W] or [items, features] (T folded into items)
        return lambda module, args: ops.add(name, args[0].detach().numpy())

    def membranes(module, args):
        v, vs = None, []
        for xt in args[0]:
            h = charge(TENSOR_OPS, v, xt, module.tau, module.v_reset)
            v = reset(TENSOR_OPS, h, fire(TENSOR_OPS, h, module.v_threshold), module.v_threshold, module.v_reset)
            vs.append(v)
        updates[0] += membrane_updates(torch.stack(vs).numpy())

    hooks = [run.register_forward_pre_hook(count(name)) for name, (run, _) in modules.items()]
    hooks += [m.register_forward_pre_hook(membranes) for m in model.modules() if isinstance(m, LIF)]
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                model(torch.from_numpy(images[i : i + batch_size]))
    finally:
        for h in hooks:
            h.remove()
    return Measured(ops, len(images), module_footprint(model), updates[0] / max(len(images), 1))


def _torch_connection(name: str, run, m) -> Connection:
    """The weights module ``run`` computes with (a ConvPool's fused kernel, a genetic layer's W), as a Connection."""
    w = run.running_weight() if hasattr(run, "running_weight") else m.weight
    w = w.detach().float().numpy()
    if w.ndim == 2:
        return Connection(name, w)
    stride = run.stride if isinstance(run.stride, tuple) else (run.stride,) * 2
    pad = run.padding if isinstance(run.padding, tuple) else (run.padding,) * 2
    return Connection(name, w, tuple(stride), (pad[0], pad[1], pad[0], pad[1]))


def _probe_onnx(runtime, images: np.ndarray, batch_size: int) -> Measured:
    """The same ONNX file with every dense fp32 weight layer's input and weight added as outputs."""
    import onnx
    from onnx import helper

    from ..ort_session import create_session

    model = onnx.load(str(runtime.path))
    nodes = {n.name: n for n in model.graph.node}
    found = {}
    for layer in runtime.spec.layers:
        node = nodes.get(f"n.{layer.name}")
        if (
            node is not None
            and node.op_type in WEIGHT_OPS
            and layer.precision == "fp32"
            and layer.form == "dense"
            and all(_plain(a) for a in node.attribute)
        ):
            found[layer.name] = node
    extra = list(dict.fromkeys(t for n in found.values() for t in n.input[:2]))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in extra if t not in known)
    session = create_session(model.SerializeToString(), runtime.name, runtime.threads)
    ops = None
    for i in range(0, len(images), batch_size):
        values = dict(zip(extra, session.run(extra, {INPUT_NAME: images[i : i + batch_size]})))
        if ops is None:
            ops = OpCounter({name: _onnx_connection(name, node, values[node.input[1]]) for name, node in found.items()})
        for name, node in found.items():
            ops.add(name, values[node.input[0]])
    unmeasured = tuple(layer.name for layer in runtime.spec.layers if layer.name not in found)
    return Measured(ops or OpCounter({}), len(images), _onnx_footprint(runtime.path), None, unmeasured)


def _plain(attr) -> bool:
    """A Conv / Gemm attribute :class:`Connection` covers: no groups, dilation or automatic padding (Gemm's alpha
    and beta scale values, not which are nonzero)."""
    if attr.name in ("group", "dilations"):
        return all(v == 1 for v in (attr.ints or [attr.i]))
    return attr.name != "auto_pad" or attr.s in (b"", b"NOTSET")


def _onnx_connection(name: str, node, weight: np.ndarray) -> Connection:
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":
        stride = tuple(attrs["strides"].ints) if "strides" in attrs else (1, 1)
        pads = tuple(attrs["pads"].ints) if "pads" in attrs else (0, 0, 0, 0)
        return Connection(name, weight, stride, (pads[0], pads[1], pads[2], pads[3]))
    trans_b = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i == 1
    return Connection(name, weight if trans_b else weight.T)


# -- the report block ------------------------------------------------------------------------------------------


def neurobench_block(
    runtime, spike_counts: np.ndarray, accuracy: float | None, eq17_sops: float, measured: Measured | None
) -> dict:
    """One runtime's NeuroBench metrics for report.json (see the module docstring and docs/neurobench.md).

    Args:
        runtime: the runtime (``spec``, ``path``).
        spike_counts: its ``spike_counts`` over the evaluated samples, [N, L].
        accuracy: its top-1 accuracy (NeuroBench's ``ClassificationAccuracy``), None without labels.
        eq17_sops: eq. 17's SOPs per sample (firing rate x T x MACs), shown beside ``Effective_ACs``.
        measured: what :func:`probe` read from it (None: counts to be borrowed with :func:`borrow_counts`).
    """
    spec: ModelSpec = runtime.spec
    block = {
        "version": NEUROBENCH_VERSION,
        "file_bytes": _file_bytes(runtime.path),
        "Footprint": None,
        "ParameterCount": None,
        "ClassificationAccuracy": accuracy,
        "ActivationSparsity": activation_sparsity(spike_counts, spec.neurons_per_layer, spec.timesteps),
        "eq17_sops": eq17_sops,
        "spikes_per_layer": np.asarray(spike_counts, np.float64).sum(0).tolist(),
        "samples": len(spike_counts),
        "counted_from": runtime.name,
    }
    if measured is None and hasattr(runtime, "graph"):  # the NIR executor: the file's arrays as stored
        block.update(_nir_footprint(runtime.graph))
    if measured is not None:
        block.update(measured.footprint)
        block.update(_counts(measured))
        block["MembraneUpdates"] = measured.membrane_updates
        block["unmeasured_layers"] = list(measured.unmeasured)
    return block


def _counts(measured: Measured) -> dict:
    ops = measured.ops
    return {
        **connection_sparsity(ops.connections),
        "SynapticOperations": ops.result(measured.samples),
        "per_layer": {name: {k: v / measured.samples for k, v in row.items()} for name, row in ops.layers.items()},
    }


def _file_bytes(path: Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else os.path.getsize(path)


def borrow_counts(blocks: list[dict], specs: list[ModelSpec]) -> None:
    """Fill what a runtime could not measure itself from a runtime of the same model (same layer names) that could:
    a layer that reads one spiking layer's spikes takes the lender's ops per spike of that layer times this
    runtime's own spike count of it (exact when the spikes are the same, which parity checks); any other layer
    (the stem, a layer after average pooling) and the connection sparsity take the lender's figures, and
    ``MembraneUpdates`` the PyTorch reference's. ``borrowed_from`` names the lender."""
    _borrow_ops(blocks, specs)
    for block, spec in zip(blocks, specs):
        reference = next(
            (
                b
                for b, s in zip(blocks, specs)
                if b.get("MembraneUpdates") is not None and s.spiking_layers == spec.spiking_layers
            ),
            None,
        )
        if block.get("MembraneUpdates") is None and reference is not None:
            block["MembraneUpdates"] = reference["MembraneUpdates"]
            block["membrane_updates_from"] = reference["counted_from"]


def _borrow_ops(blocks: list[dict], specs: list[ModelSpec]) -> None:
    for block, spec in zip(blocks, specs):
        names = tuple(layer.name for layer in spec.layers)
        measured = "per_layer" in block
        missing = set(block["unmeasured_layers"]) if measured else set(names)
        if not missing:
            continue
        lender = next(
            (
                b
                for b, s in zip(blocks, specs)
                if b is not block
                and "per_layer" in b
                and tuple(layer.name for layer in s.layers) == names
                and not b["unmeasured_layers"]
            ),
            None,
        )
        if lender is None:
            block.setdefault("note", "no runtime of this model showed its layers' inputs: effective ops unknown")
            continue
        own = dict(zip(spec.spiking_layers, block["spikes_per_layer"]))
        theirs = dict(zip(spec.spiking_layers, lender["spikes_per_layer"]))
        per_layer = dict(block.get("per_layer", {}))
        for layer in spec.layers:
            if layer.name not in missing:
                continue
            row = dict(lender["per_layer"][layer.name])
            src = layer.spiking_input_layer if layer.input_is_spikes else None
            if src is not None and theirs[src]:
                scale = (own[src] / block["samples"]) / (theirs[src] / lender["samples"])
                row = {**row, "AC": row["AC"] * scale, "MAC": row["MAC"] * scale}
            per_layer[layer.name] = row
        block["per_layer"] = per_layer
        block["SynapticOperations"] = {
            "Effective_MACs": sum(r["MAC"] for r in per_layer.values()),
            "Effective_ACs": sum(r["AC"] for r in per_layer.values()),
            "Dense": sum(r["Dense"] for r in per_layer.values()),
        }
        for key in ("ConnectionSparsity", "zero_weights", "weights"):  # the weights it could not read: the lender's
            block[key] = lender[key]
        block["borrowed_from"] = lender["counted_from"]
        block["borrowed_layers"] = sorted(missing)


def neurobench_results(block: dict) -> dict:
    """One runtime's results in the layout ``neurobench.benchmarks.Benchmark.save_benchmark_results`` writes (the
    dict ``Benchmark.run`` returns: static metrics, then workload metrics, by class name)."""
    keys = (
        "Footprint",
        "ConnectionSparsity",
        "ParameterCount",
        "ClassificationAccuracy",
        "ActivationSparsity",
        "SynapticOperations",
        "MembraneUpdates",
    )
    return {k: block.get(k) for k in keys}
