"""What the shipped file costs: bytes per variant x storage, session creation, latency, and genetic-vs-folded parity.

    python benchmarks/artefact_size.py                                   # every zoo model's sizes; latency of three
    python benchmarks/artefact_size.py --models resnet19 vgg16 --latency-models resnet19 vgg16 --repeats 15

For every zoo model at g = 150 (smallnet at g = 32), untrained (sizes and speed do not depend on the weight
values), at its default input size and T: the genetic and dense-twin parameter bytes (float32), then for each
variant (dense, factorised, auto, int8) and storage (genetic, folded) the ONNX file's size. For the
``--latency-models``: onnxruntime session creation (median of ``--sessions``) and p50 latency at batch 1 and 8,
one intra-op thread, every session of a model measured interleaved in one process (round-robin, so load from
other processes hits them alike); and whether the genetic and folded files give identical outputs
(``max |diff|`` over logits and spike counts on random inputs; 0 = bit for bit) and whether the graph
onnxruntime runs after its optimisations (``optimized_model_filepath``, production's level) is the same for
both: same nodes and same weights, byte for byte, so the same speed.

Times are the calling thread's CPU time: with one intra-op thread onnxruntime runs in the caller's thread, and
CPU time ignores what other processes took on a shared machine. Prints a Markdown table (and ``--json``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch

from gee_deploy.export import build_onnx
from gee_deploy.kinds import Storage
from gee_deploy.ort_session import create_session
from gee_deploy.spec import INPUT_NAME
from gee_deploy.zoo import create_model, list_models

from _timing import call_seconds, cpu_name, median_seconds, write_json

VARIANTS = ("dense", "factorised", "auto", "int8")
STORAGES = tuple(s.value for s in Storage)


def genes_of(name: str) -> int:
    return 32 if name == "smallnet" else 150


def parameter_bytes(name: str, genes: int | None) -> int:
    torch.manual_seed(0)
    return 4 * sum(p.numel() for p in create_model(name, genes=genes).parameters())


def running_graph(data: bytes) -> list:
    """The graph onnxruntime runs after its optimisations (production's level, one thread), as a list of nodes
    (op, attributes, inputs) with every tensor named by what it is: a weight by its bytes, dtype and shape, an
    intermediate by the node and output that make it (names of folded initializers differ by storage)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    names = {}
    for t in model.graph.initializer:
        value = onnx.numpy_helper.to_array(t)
        names[t.name] = ("weight", value.dtype.str, value.shape, hashlib.sha256(value.tobytes()).hexdigest())
    nodes = []
    for i, n in enumerate(model.graph.node):
        nodes.append((n.op_type, str(n.attribute), [names.get(x, x) for x in n.input]))
        names.update({o: ("node", i, j) for j, o in enumerate(n.output)})
    return nodes


def measure(name: str, latency: bool, repeats: int, sessions: int, batches: tuple[int, ...]) -> list[dict]:
    genes = genes_of(name)
    torch.manual_seed(0)
    model = create_model(name, genes=genes).eval()
    files = {}
    rows = []
    for variant in VARIANTS:
        for storage in STORAGES:
            proto, spec = build_onnx(model, variant, storage=storage)
            data = proto.SerializeToString()
            files[variant, storage] = data
            rows.append({"model": name, "genes": genes, "variant": variant, "storage": storage, "bytes": len(data),
                         "forms": sorted({l.form for l in spec.layers})})
    if not latency:
        return rows
    shape = (model.in_channels, model.image_size, model.image_size)
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *shape), dtype=np.float32) for b in batches}
    live = {}
    for row in rows:
        data = files[row["variant"], row["storage"]]
        row["session_s"] = median_seconds(lambda: create_session(data, threads=1), sessions)
        live[row["variant"], row["storage"]] = create_session(data, threads=1)
    for variant in VARIANTS:  # the graph onnxruntime runs: the same for both storages?
        same = running_graph(files[variant, "genetic"]) == running_graph(files[variant, "folded"])
        for row in rows:
            if row["variant"] == variant:
                row["same_running_graph"] = same
    for variant in VARIANTS:  # genetic against folded, same inputs
        outs = [live[variant, s].run(None, {INPUT_NAME: inputs[batches[-1]]}) for s in STORAGES]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(*outs))
        for row in rows:
            if row["variant"] == variant:
                row["genetic_vs_folded_max_diff"] = diff
    for b in batches:
        feed = {INPUT_NAME: inputs[b]}
        times = {key: [] for key in live}
        for session in live.values():
            session.run(None, feed)  # warm-up
        keys = list(live)
        for r in range(repeats):  # round-robin, rotated, so slow phases of a shared machine hit every session
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                times[key].append(call_seconds(lambda: live[key].run(None, feed)))
        for row in rows:
            row[f"p50_ms_b{b}"] = 1e3 * float(np.median(times[row["variant"], row["storage"]]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    p.add_argument("--latency-models", nargs="*", default=["smallnet", "resnet19", "vgg16"], choices=list_models())
    p.add_argument("--repeats", type=int, default=10, help="timed runs per session and batch")
    p.add_argument("--sessions", type=int, default=3, help="session creations timed per file")
    p.add_argument("--json", help="also write the rows to this JSON file")
    a = p.parse_args()
    if a.repeats < 1 or a.sessions < 1:
        p.error("--repeats and --sessions must be >= 1")
    torch.set_num_threads(1)
    print(f"CPU: {cpu_name()}; onnxruntime one intra-op thread; times are the calling thread's CPU time\n")
    print("| model | g | genetic params | dense twin | variant | genetic file | folded file | genetic / params "
          "| session genetic / folded (s) | p50 b1 genetic / folded (ms) | p50 b8 genetic / folded (ms) "
          "| max diff | same running graph |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    every = []
    for name in a.models:
        batches = (1, 64) if name == "smallnet" else (1, 8)
        rows = measure(name, name in a.latency_models, a.repeats, a.sessions, batches)
        gen_bytes, dense_bytes = parameter_bytes(name, genes_of(name)), parameter_bytes(name, None)
        for variant in VARIANTS:
            g, f = (next(r for r in rows if r["variant"] == variant and r["storage"] == s) for s in STORAGES)
            timing = ["", "", ""]
            if "session_s" in g:
                timing = [f"{g['session_s']:.3f} / {f['session_s']:.3f} ({g['session_s'] / f['session_s']:.1f}x)"] + \
                         [f"{g[f'p50_ms_b{b}']:.1f} / {f[f'p50_ms_b{b}']:.1f} (b{b})" for b in batches]
            diff = f"{g['genetic_vs_folded_max_diff']:.1g}" if "genetic_vs_folded_max_diff" in g else ""
            same = {True: "yes", False: "no"}.get(g.get("same_running_graph"), "")
            print(f"| {name} | {g['genes']} | {gen_bytes / 2**20:.2f} MiB | {dense_bytes / 2**20:.2f} MiB | {variant} "
                  f"| {g['bytes'] / 2**20:.2f} MiB | {f['bytes'] / 2**20:.2f} MiB | {g['bytes'] / gen_bytes:.3f} "
                  f"| {' | '.join(timing)} | {diff} | {same} |", flush=True)
            for r in (g, f):
                r.update(genetic_param_bytes=gen_bytes, dense_param_bytes=dense_bytes)
        every += rows
    if a.json:
        write_json(a.json, {"cpu": cpu_name(), "rows": every})


if __name__ == "__main__":
    main()
