"""Which standard-ONNX op sequence runs the unrolled LIF fastest, and which keeps its spikes bit-identical.

    python benchmarks/lif_forms.py                       # untrained SmallNet g=40, T=4, batch 64 and 1, 1 thread
    python benchmarks/lif_forms.py --checkpoint runs/fmnist/best.pt --threads 1 2

Two measurements (docs/design.md, "Measuring deployment speed", records what they decided):

1. **Exactness.** Each form's recurrence, run by onnxruntime on the same inputs as a torch formulation, must
   give bit-identical membranes (hence spikes). The inputs are the SmallNet LIF inputs of real images (the
   checkpoint's or, untrained, random ones), T x 2^20 random values spread around the threshold, and 2^20
   adversarial pairs whose x_1 + v_0 lies within a few ulps of 2 (where the forms' roundings differ).
2. **Op costs** (``--ops``): each candidate op alone on one LIF step's tensor [64, 32, 14, 14].
3. **Speed.** A whole SmallNet-shaped graph (the dense export's own Conv/Gemm weights, chained with each
   LIF form) timed with onnxruntime, and its per-op time split from onnxruntime's profiler.

Forms (tau = 2, v_th = 1, v_reset = 0, the project's LIF) combine four choices (:class:`Form`):

* charge: ``div`` h = v + (x - v) / tau (the ONNX writer's form before the leaner LIF, and spikingjelly's
  training kernel); ``mul`` the
  same with * 0.5 (bit-identical to div: 1/tau is a power of two); ``avg`` h = (x + v) * 0.5 (one rounding
  where div has two: NOT bit-identical to div); ``pre`` 1/tau folded into the producing conv's weights and
  bias (exact: scaling by a power of two), h = x' + 0.5 v (bit-identical to avg); ``pow2`` per-step conv
  weights scaled by 2^(t-1), state u_t = 2^t h_t, threshold 2^t, no scaling op at all (bit-identical to avg).
* reset: ``where`` Where(fire, 0, h) (the writer before); ``less`` h * Cast(h < th); ``trelu`` h - ThresholdedRelu(h)
  with alpha = the float below th (ThresholdedRelu passes h > alpha, i.e. h >= th). All exact.
* spikes: ``float`` one Cast per step, Sum + Flatten + ReduceSum for the counts, float Concat (the writer before);
  ``bool`` the fire maps concatenated as bool (1 byte), one Cast, one ReduceSum for the counts; ``clip``
  (trelu only) spikes = Clip(ThresholdedRelu(h), 0, th), no comparison op.
* per_step: the conv after the LIF runs once per step on batch N (no Split, no Concat) instead of once on T*N.

``run`` returns the rows; the script prints Markdown tables. Timings on a shared machine: read the ratios.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from gee_deploy.checkpoint import load_model
from gee_deploy.export import build_onnx
from gee_deploy.ort_session import create_session
from gee_deploy.zoo import create_model

from _timing import best_block, clock, interleaved, kernel_ms

TAU, V_TH = 2.0, 1.0


# -- torch formulations ------------------------------------------------------------------------------------

def torch_lif(x_seq: torch.Tensor, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(spikes [T, ...] bool, last membrane h_{T-1}) of the LIF recurrence written as ``form`` in torch."""
    v = torch.zeros_like(x_seq[0])
    spikes = []
    for t in range(x_seq.shape[0]):
        h = v + (x_seq[t] - v) / TAU if form == "sub-div" else (x_seq[t] + v) * 0.5
        s = h >= V_TH
        v = torch.where(s, torch.zeros_like(h), h)
        spikes.append(s)
    return torch.stack(spikes), h


# -- graph pieces ------------------------------------------------------------------------------------------

class _G:
    """A tiny node list builder (this script stays independent of the project's writer)."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, dtype=np.float32):
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, outputs=1, out=None, **attrs):
        names = out or [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names


@dataclass(frozen=True)
class Form:
    """One way to write the LIF: charge, reset, spike output, and whether the next conv runs per step."""

    charge: str  # div: v + (x - v) / tau | mul: v + (x - v) * 0.5 | avg: (x + v) * 0.5
    #             pre: x' + v * 0.5 (x' = x / 2 from the conv) | pow2: u_t = z_t + r (2^t-scaled state)
    reset: str  # where: Where(f, 0, h) | less: h * Cast(h < th) | trelu: h - ThresholdedRelu(h)
    spikes: str  # float: T Casts, Sum for counts, float Concat | bool: bool Concat, one Cast, one ReduceSum
    #             clip (trelu reset only): s = Clip(y, 0, th) of the ThresholdedRelu output y, floats per step
    per_step: bool = False  # the next conv runs once per step (no Split / Concat)

    @property
    def scale(self) -> str:
        return {"pre": "half", "pow2": "pow2"}.get(self.charge, "none")


FORMS = {
    "base": Form("div", "where", "float"),
    "mul": Form("mul", "where", "float"),
    "mul-less": Form("mul", "less", "float"),
    "mul-trelu": Form("mul", "trelu", "float"),
    "mul-trelu-bool": Form("mul", "trelu", "bool"),
    "avg-trelu-bool": Form("avg", "trelu", "bool"),
    "pre-where-bool": Form("pre", "where", "bool"),
    "pre-less-bool": Form("pre", "less", "bool"),
    "pre-trelu-bool": Form("pre", "trelu", "bool"),
    "pre-less-steps": Form("pre", "less", "float", True),
    "pre-trelu-steps": Form("pre", "trelu", "float", True),
    "pre-trelu-clip-steps": Form("pre", "trelu", "clip", True),
    "pow2-less-steps": Form("pow2", "less", "float", True),
}


def lif(g: _G, form: Form, xs: list[str], steps: int) -> tuple[list[str] | str, str]:
    """Write one LIF; ``xs``: T step inputs (pre / pow2 forms: already scaled by the producer).

    Returns (spikes: one [T*N, ...] float name, or T per-step float names for per-step forms;
    count: [N, 1] spikes per sample).
    """
    half, zero = g.const(0.5), g.const(0.0)
    v = None
    fires, spikes = [], []
    for t in range(steps):
        x = xs[t]
        th_value = 2.0 ** t * V_TH if form.charge == "pow2" else V_TH
        th = g.const(th_value)
        if form.charge in ("div", "mul"):
            scale = (lambda a: g.op("Div", [a, g.const(TAU)])) if form.charge == "div" else \
                (lambda a: g.op("Mul", [a, half]))
            h = scale(x) if v is None else g.op("Add", [v, scale(g.op("Sub", [x, v]))])
        elif form.charge == "avg":
            h = g.op("Mul", [x if v is None else g.op("Add", [x, v]), half])
        elif form.charge == "pre":
            h = x if v is None else g.op("Add", [x, g.op("Mul", [v, half])])
        else:  # pow2: v is already 2^(t-1) v_{t-1}
            h = x if v is None else g.op("Add", [x, v])
        alpha = float(np.nextafter(np.float32(th_value), np.float32(0)))
        if form.spikes == "clip":  # y = h where h >= th else 0; Clip(y, 0, th) is th * spike, exactly
            y = g.op("ThresholdedRelu", [h], alpha=alpha)
            spikes.append(g.op("Clip", [y, zero, th]))
            if t < steps - 1:
                v = g.op("Sub", [h, y])
            continue
        fire = g.op("GreaterOrEqual", [h, th])
        fires.append(fire)
        if form.spikes == "float":
            spikes.append(g.op("Cast", [fire], to=TensorProto.FLOAT))
        if t < steps - 1:
            if form.reset == "where":
                v = g.op("Where", [fire, zero, h])
            elif form.reset == "less":  # h * 1 = h, h * 0 = +0 (h >= th > 0 where it fired): exact
                v = g.op("Mul", [h, g.op("Cast", [g.op("Less", [h, th])], to=TensorProto.FLOAT)])
            else:  # y = h where h > prev(th), i.e. h >= th, else 0; h - y is h or +0 exactly
                v = g.op("Sub", [h, g.op("ThresholdedRelu", [h], alpha=alpha)])
    axis1 = g.const([1], np.int64)
    if form.spikes == "bool":
        y = g.op("Cast", [g.op("Concat", fires, axis=0)], to=TensorProto.FLOAT)  # [T*N, ...]
        per_row = g.op("ReduceSum", [g.op("Flatten", [y], axis=1), axis1], keepdims=1)  # [T*N, 1]
        per_t = g.op("Reshape", [per_row, g.const([steps, -1], np.int64)])  # [T, N]
        count = g.op("ReduceSum", [per_t, g.const([0], np.int64)], keepdims=0)  # [N]
        return y, g.op("Unsqueeze", [count, axis1])
    total = g.op("Sum", spikes) if steps > 1 else spikes[0]
    count = g.op("ReduceSum", [g.op("Flatten", [total], axis=1), axis1], keepdims=1)
    if form.per_step:
        return spikes, count
    return g.op("Concat", spikes, axis=0), count


def weight_layers(proto: onnx.ModelProto) -> tuple[list[dict], dict]:
    """The Conv/Gemm nodes of a dense SmallNet-like export in order, with their float32 weights."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    layers = []
    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            layers.append({"op": n.op_type, "w": inits[n.input[1]], "b": inits[n.input[2]],
                           "attrs": {a.name: helper.get_attribute_value(a) for a in n.attribute}})
    norm = [n for n in proto.graph.node if n.op_type in ("Sub", "Div")][:2]
    return layers, {"mean": inits[norm[0].input[1]], "std": inits[norm[1].input[1]]}


def build_net(layers: list[dict], norm: dict, name: str, steps: int, in_shape: tuple) -> onnx.ModelProto:
    """A SmallNet-shaped graph: stem conv (once), then LIF -> weight layer ... -> mean over T of the logits."""
    form = FORMS[name]
    g = _G()
    x = g.op("Div", [g.op("Sub", ["input", g.const(norm["mean"])]), g.const(norm["std"])])
    counts = []

    def emit(layer, x, scale=1.0):  # scaling by a power of two is exact: the conv computes scale * conv(x)
        w, b = g.const(layer["w"] * np.float32(scale)), g.const(layer["b"] * np.float32(scale))
        if layer["op"] == "Gemm":
            return g.op("Gemm", [g.op("Flatten", [x], axis=1), w, b], **layer["attrs"])
        return g.op("Conv", [x, w, b], **layer["attrs"])

    first = {"half": 0.5, "pow2": 0.5}.get(form.scale, 1.0)
    z0 = emit(layers[0], x, first)  # static: the stem runs once
    xs = [z0] * steps if form.scale != "pow2" else \
        [z0] + [g.op("Mul", [z0, g.const(2.0 ** t)]) for t in range(1, steps)]
    for i, layer in enumerate(layers[1:]):
        spikes, count = lif(g, form, xs, steps)
        counts.append(count)
        last = i == len(layers) - 2
        if form.per_step:
            if last:
                logits = g.op("Mul", [g.op("Sum", [emit(layer, s) for s in spikes]), g.const(1.0 / steps)])
            else:
                scales = [2.0 ** (t - 1) for t in range(steps)] if form.scale == "pow2" else [first] * steps
                xs = [emit(layer, s, c) for s, c in zip(spikes, scales)]
        else:
            y = emit(layer, spikes, 1.0 if last else first)
            if last:
                y = g.op("Reshape", [y, g.const([steps, -1, layer["w"].shape[0]], np.int64)])
                logits = g.op("ReduceMean", [y, g.const([0], np.int64)], keepdims=0)
            else:
                xs = g.op("Split", [y], outputs=steps, axis=0, num_outputs=steps)
    g.op("Identity", [logits], out=["logits"])
    g.op("Concat", counts, out=["spike_counts"], axis=1)
    n_cls = layers[-1]["w"].shape[0]
    graph = helper.make_graph(
        g.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_cls]),
         helper.make_tensor_value_info("spike_counts", TensorProto.FLOAT, ["batch", len(counts)])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def lif_only(name: str, shape: tuple, steps: int) -> onnx.ModelProto:
    """One LIF as a graph: x [T*N, ...] (scaled by the caller for pre / pow2 forms) -> spikes, last membrane."""
    g = _G()
    xs = g.op("Split", ["x"], outputs=steps, axis=0, num_outputs=steps)
    y, _ = lif(g, FORMS[name], xs, steps)
    last_charge = [n for n in g.nodes if n.op_type in ("GreaterOrEqual", "ThresholdedRelu")][-1].input[0]
    if isinstance(y, list):
        y = g.op("Concat", y, axis=0)
    g.op("Identity", [y], out=["spikes"])
    g.op("Identity", [last_charge], out=["h_last"])
    graph = helper.make_graph(g.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("spikes", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("h_last", TensorProto.FLOAT, None)], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


# -- measurements --------------------------------------------------------------------------------------------

def session(proto: onnx.ModelProto, threads: int, profile_dir: str | None = None, level: str = "all"):
    """The product's onnxruntime session (:func:`gee_deploy.ort_session.create_session`) over ``proto``."""
    return create_session(proto.SerializeToString(), threads=threads, optimization=level,
                          profile_prefix=os.path.join(profile_dir, "p") if profile_dir else None)


def op_split(proto: onnx.ModelProto, x: np.ndarray, threads: int, runs: int, level: str) -> dict[str, float]:
    """Mean ms per run spent in each onnxruntime kernel type (profiler ``op_name``), over ``runs`` runs."""
    return kernel_ms(lambda prefix: create_session(proto.SerializeToString(), threads=threads, optimization=level,
                                                   profile_prefix=prefix), {"input": x}, runs)


def timed(sessions: dict, x: np.ndarray, rounds: int, iters: int, cpu: bool) -> dict[str, tuple[float, float]]:
    """(p50 ms, best block's p50 ms) of each session, interleaved block by block (shared-machine noise hits
    all alike; the best block is the least disturbed one). ``cpu``: time the calling thread's CPU time, not
    the wall clock: with one intra-op thread onnxruntime runs in the caller's thread, and CPU time does not
    count the time the scheduler gave to other processes on a shared machine."""
    runs = {k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()}
    t = interleaved(runs, rounds, iters, clock(1 if cpu else 0))
    return {k: (float(np.median(v) * 1e3), best_block(v) * 1e3) for k, v in t.items()}


def lif_inputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The input [T, N, ...] of every LIF of ``model`` on ``images``, recorded by forward pre-hooks."""
    from gee_deploy.neurons import LIF

    got = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: got.append(a[0].detach().clone()))
             for m in model.modules() if isinstance(m, LIF)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return got


def exactness(model: torch.nn.Module, images: torch.Tensor, forms=tuple(FORMS)) -> list[dict]:
    """Per form: elements whose spikes / last membrane differ between onnxruntime and two torch formulations."""
    steps = model.timesteps
    rng = np.random.default_rng(0)
    tensors = [x.numpy() for x in lif_inputs(model, images)]
    tensors.append((rng.standard_normal((steps, 1 << 20, 1, 1)) * 1.5 + 1.0).astype(np.float32))
    # adversarial: x_0 < 2 (no spike at t = 0, v_0 = x_0 / 2), then x_1 with x_1 + v_0 within a few ulps of 2,
    # where the two roundings of v + (x - v) / 2 and the one of (x + v) / 2 can land on either side of 1
    x0 = rng.uniform(0.0, 2.0, 1 << 20).astype(np.float32)
    x1 = (np.float32(2.0) - x0 / np.float32(2.0)) + rng.integers(-4, 5, x0.size) * np.float32(2.0 ** -23)
    tight = np.zeros((steps, x0.size, 1, 1), np.float32)
    tight[0, :, 0, 0], tight[1, :, 0, 0] = x0, x1.astype(np.float32)
    tensors.append(tight)
    rows = []
    for name in forms:
        form = FORMS[name]
        diff = defaultdict(int)
        n = 0
        for x in tensors:
            scale = {"half": np.full(steps, 0.5), "pow2": 2.0 ** (np.arange(steps) - 1)}.get(form.scale, np.ones(steps))
            feed = (x * scale.astype(np.float32).reshape(-1, *[1] * (x.ndim - 1))).astype(np.float32)
            feed = feed.reshape(steps * x.shape[1], *x.shape[2:])  # [T*N, ...] t-major
            spikes, h_last = session(lif_only(name, feed.shape, steps), 1).run(None, {"x": feed})
            if form.scale == "pow2":
                h_last = h_last / np.float32(2.0 ** (steps - 1))
            xt = torch.from_numpy(x)
            for ref in ("sub-div", "avg"):
                rs, rh = torch_lif(xt, ref)
                diff[f"spikes vs {ref}"] += int((spikes.reshape(rs.shape) != rs.numpy()).sum())
                diff[f"membrane vs {ref}"] += int((h_last.view(np.uint32) != rh.numpy().view(np.uint32)).sum())
            n += x.size
        rows.append({"form": name, "elements": n, **diff})
    return rows


def op_costs(shape=(64, 32, 14, 14), rounds: int = 15, iters: int = 10) -> dict[str, float]:
    """Best-block thread-CPU ms of each single elementwise op on ``shape`` (1 thread, interleaved)."""
    f, b = TensorProto.FLOAT, TensorProto.BOOL
    below_one = float(np.nextafter(np.float32(1), np.float32(0)))
    ops = {  # name: (op, inputs (name, type), output type, attributes, constant inputs)
        "Where(f, 0, h)": ("Where", [("f", b)], f, {}, {"zero": 0.0}, ["f", "zero", "h"]),
        "Mul(h, 0.5)": ("Mul", [], f, {}, {"c": 0.5}, ["h", "c"]),
        "Add(h, h2)": ("Add", [("h2", f)], f, {}, {}, ["h", "h2"]),
        "Sub(h, h2)": ("Sub", [("h2", f)], f, {}, {}, ["h", "h2"]),
        "Div(h, 2)": ("Div", [], f, {}, {"c": 2.0}, ["h", "c"]),
        "Mul(h, h2)": ("Mul", [("h2", f)], f, {}, {}, ["h", "h2"]),
        "GreaterOrEqual(h, 1)": ("GreaterOrEqual", [], b, {}, {"c": 1.0}, ["h", "c"]),
        "Less(h, 1)": ("Less", [], b, {}, {"c": 1.0}, ["h", "c"]),
        "Cast(bool -> float)": ("Cast", [("f", b)], f, {"to": f}, {}, ["f"]),
        "Cast(bool -> uint8)": ("Cast", [("f", b)], TensorProto.UINT8, {"to": TensorProto.UINT8}, {}, ["f"]),
        "ThresholdedRelu(h)": ("ThresholdedRelu", [], f, {"alpha": below_one}, {}, ["h"]),
        "Clip(h, 0, 1)": ("Clip", [], f, {}, {"lo": 0.0, "hi": 1.0}, ["h", "lo", "hi"]),
        "Sum(4 maps)": ("Sum", [("h2", f), ("h3", f), ("h4", f)], f, {}, {}, ["h", "h2", "h3", "h4"]),
    }
    rng = np.random.default_rng(0)
    data = {"h": rng.standard_normal(shape, dtype=np.float32), "f": rng.random(shape) < 0.2,
            **{k: rng.standard_normal(shape, dtype=np.float32) for k in ("h2", "h3", "h4")}}
    sessions = {}
    for name, (op, extra, out_type, attrs, consts, inputs) in ops.items():
        ins = [("h", f)] * ("h" in inputs) + extra
        graph = helper.make_graph(
            [helper.make_node(op, inputs, ["y"], **attrs)], "op",
            [helper.make_tensor_value_info(n, t, shape) for n, t in ins],
            [helper.make_tensor_value_info("y", out_type, shape)],
            [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
        sessions[name] = (session(model, 1), {n: data[n] for n, _ in ins})
    runs = {k: (lambda s=s, feed=feed: s.run(None, feed)) for k, (s, feed) in sessions.items()}
    return {k: best_block(v) * 1e3 for k, v in interleaved(runs, rounds, iters, clock(1), warmup=0).items()}


def run(model: torch.nn.Module, batches=(64, 1), threads=(1,), forms=FORMS, rounds: int = 5,
        profile_runs: int = 20) -> dict:
    """{"speed": rows of form, threads, batch, p50 ms, ratio to base, op split; "parity": rows}."""
    proto, _ = build_onnx(model.eval(), "dense")
    layers, norm = weight_layers(proto)
    in_shape = (model.in_channels, model.image_size, model.image_size)
    graphs = {f: build_net(layers, norm, f, model.timesteps, in_shape) for f in forms}
    rng = np.random.default_rng(0)
    speed, parity = [], []
    for batch in batches:
        x = rng.random((batch, *in_shape), dtype=np.float32)
        ref = session(graphs["base"], 1).run(None, {"input": x})
        for form, g in graphs.items():
            out = session(g, 1).run(None, {"input": x})
            parity.append({"form": form, "batch": batch, "max |logit diff| vs base": float(np.abs(out[0] - ref[0]).max()),
                           "spike count diff vs base": float(np.abs(out[1] - ref[1]).max())})
        for th in threads:
            sessions = {f: session(g, th) for f, g in graphs.items()}
            sessions["base (no NCHWc: EXTENDED)"] = session(graphs["base"], th, None, "extended")
            ms = timed(sessions, x, rounds, max(3, 128 // batch), cpu=th == 1)
            for form, (t, best) in ms.items():
                g = graphs[form.split(" ")[0]]
                lvl = "extended" if "EXTENDED" in form else "all"
                split = op_split(g, x, th, max(3, profile_runs if batch > 1 else 4 * profile_runs), lvl)
                speed.append({"form": form, "threads": th, "batch": batch, "p50_ms": t, "best_ms": best,
                              "vs_base": ms["base"][0] / t, "best_vs_base": ms["base"][1] / best, "ops": split,
                              "lif_ms": sum(v for k, v in split.items() if k not in ("Conv", "Gemm", "FusedConv"))})
    return {"speed": speed, "parity": parity}


def markdown(result: dict, exact: list[dict]) -> str:
    lines = ["Times: thread CPU time with 1 thread, wall clock otherwise; profiler columns are wall clock.", "",
             "| form | threads | batch | p50 ms | vs base | best block ms | vs base | profiler: non-conv ms | "
             "profiler: top ops (ms per run) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["speed"]:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["ops"].items())[:7])
        lines.append(f"| {r['form']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.2f} | {r['vs_base']:.2f}x | "
                     f"{r['best_ms']:.2f} | {r['best_vs_base']:.2f}x | {r['lif_ms']:.2f} | {top} |")
    lines += ["", "| form | batch | max abs logit diff vs base | max spike-count diff vs base |", "|---|---:|---:|---:|"]
    lines += [f"| {r['form']} | {r['batch']} | {r['max |logit diff| vs base']:.3g} | "
              f"{r['spike count diff vs base']:.3g} |" for r in result["parity"]]
    keys = [k for k in exact[0] if k not in ("form", "elements")]
    lines += ["", "| form | elements | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    lines += [f"| {r['form']} | {r['elements']} | " + " | ".join(str(r[k]) for k in keys) + " |" for r in exact]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a trained checkpoint (default: untrained smallnet g=40, T=4)")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ops", action="store_true", help="only the single-op cost table")
    a = p.parse_args()
    if a.ops:
        print("| op on [64, 32, 14, 14] | ms (thread CPU, best block) |\n|---|---:|")
        print("\n".join(f"| {k} | {v:.3f} |" for k, v in op_costs().items()))
        return
    torch.manual_seed(0)
    model = load_model(a.checkpoint) if a.checkpoint else create_model("smallnet", genes=40, timesteps=4)
    model.eval()
    if a.checkpoint:
        from gee_deploy.data import load_test_arrays

        ds = model.checkpoint.dataset_name
        images = torch.from_numpy(load_test_arrays(ds, None, 512)[0])
    else:
        images = torch.rand(256, model.in_channels, model.image_size, model.image_size)
    forms = tuple(dict.fromkeys(["base", *a.forms]))
    exact = exactness(model, images, forms)
    result = run(model, a.batches, a.threads, forms, a.rounds)
    print(markdown(result, exact))


if __name__ == "__main__":
    main()
