"""How close the deployed graphs run to this CPU's limit (docs/design.md, "Measuring deployment speed").

    python benchmarks/deploy_speed.py --checkpoint runs/fmnist/best.pt --baseline old-dense=old_dense.onnx
    python benchmarks/deploy_speed.py --models smallnet resnet19-small --threads 1 0 --batches 1 64

One run prints, per model, variant, thread count and batch: latency (p50 of interleaved blocks), effective
dense throughput 2 x dense MACs per sample x batch / time in GFLOP/s, its fraction of the sgemm peak measured
in the same run (torch 2048 x 2048 matmul, same thread count), the ratio to PyTorch eager on the same batch,
and onnxruntime's per-op time split (profiler, top ops, % of kernel time).

Models: ``--checkpoint`` (a trained checkpoint: the fmnist recipe's), and untrained zoo models at 32 x 32:
``smallnet`` (28 x 28), ``resnet19-small`` (ResNet-19's layout at a quarter of its width: 32-128 channels,
FC64) and ``cifarnet-16`` (CIFARNet at 16 x 16: its fixed widths make 32 x 32 five GMACs per sample).
Latency does not depend on the weight values, so untrained weights are fine for speed. ``--baseline
NAME=FILE.onnx`` adds a graph written by another version (the previous commit's dense export) for the
checkpoint's rows. ``--threads 0`` means all cores.

Times: with one thread, the calling thread's CPU time (onnxruntime and torch then run in the caller's
thread; CPU time ignores what other processes took on a shared machine); with more, the wall clock.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import numpy as np
import torch

from gee_deploy.checkpoint import load_model
from gee_deploy.export import build_onnx
from gee_deploy.evaluation.bench import profile_ops
from gee_deploy.ort_session import create_session
from gee_deploy.spec import INPUT_NAME
from gee_deploy.walk import describe
from gee_deploy.zoo import create_model
from gee_deploy.zoo.resnet import ResNet

VARIANTS = {"dense": ("dense", False), "int8": ("int8", False), "auto+int8": ("auto", True)}


def zoo_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "resnet19-small":
        m = ResNet((3, 3, 2), (32, 64, 128), 32, False, (64,), genes=32, timesteps=4, num_classes=10, in_channels=3,
                   image_size=32, mean=None, std=None)
        m.model_name = "resnet19-small"
        return m.eval()
    if name == "cifarnet-16":
        return create_model("cifarnet", genes=32, image_size=16).eval()
    return create_model(name).eval()


def sgemm_peak(threads: int) -> float:
    """GFLOP/s of torch's 2048 x 2048 float32 matmul with ``threads`` threads (best of 5)."""
    torch.set_num_threads(threads)
    x = torch.randn(2048, 2048)
    x @ x
    clock = time.thread_time if threads == 1 else time.perf_counter
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        x @ x
        best = min(best, clock() - t0)
    return 2 * 2048 ** 3 / best / 1e9


def timed(fns: dict, threads: int, rounds: int, min_block_s: float = 0.3) -> dict[str, float]:
    """p50 seconds of each callable, run in interleaved blocks of equal length (shared-machine noise hits all)."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    iters = {}
    for k, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        iters[k] = max(2, min(50, int(min_block_s / max(time.perf_counter() - t0, 1e-6))))
    times = defaultdict(list)
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(iters[k]):
                t0 = clock()
                fn()
                times[k].append(clock() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def op_split(model_bytes: bytes, x: np.ndarray, threads: int, runs: int = 5) -> dict[str, float]:
    """Share of onnxruntime's kernel time per op type (profiler), after 2 warm-up runs."""
    return {r["op"]: r["share"] for r in profile_ops(model_bytes, x, threads or None, iters=runs)}


def run(models: dict[str, torch.nn.Module], variants=tuple(VARIANTS), baselines: dict[str, tuple[str, bytes]] = {},
        threads=(1, 0), batches=(1, 64), rounds: int = 5) -> list[dict]:
    """Rows: model, variant, threads, batch, p50_ms, eff_gflops, of_peak, vs_eager, ops (share per op type)."""
    rows = []
    peaks = {th: sgemm_peak(th or os.cpu_count()) for th in threads}
    for label, model in models.items():
        dense_macs = describe(model).dense_macs_per_sample
        graphs = {v: build_onnx(model, *VARIANTS[v][:1], allow_int8=VARIANTS[v][1])[0].SerializeToString()
                  for v in variants}
        graphs.update({name: data for name, (owner, data) in baselines.items() if owner == label})
        for th in threads:
            n_threads = th or os.cpu_count()
            sessions = {v: create_session(g, threads=n_threads) for v, g in graphs.items()}
            for batch in batches:
                x = np.random.default_rng(0).random((batch, model.in_channels, model.image_size, model.image_size),
                                                     dtype=np.float32)
                xt = torch.from_numpy(x)
                torch.set_num_threads(n_threads)

                def eager():
                    with torch.no_grad():
                        model(xt)

                fns = {"eager": eager, **{v: (lambda s=s: s.run(None, {INPUT_NAME: x})) for v, s in sessions.items()}}
                t = timed(fns, n_threads, rounds)
                for v in ["eager", *graphs]:
                    gflops = 2 * dense_macs * batch / t[v] / 1e9
                    rows.append({"model": label, "variant": v, "threads": n_threads, "batch": batch,
                                 "p50_ms": t[v] * 1e3, "eff_gflops": gflops, "of_peak": gflops / peaks[th],
                                 "vs_eager": t["eager"] / t[v], "sgemm_gflops": peaks[th],
                                 "ops": {} if v == "eager" else op_split(graphs[v], x, n_threads, 5 if batch >= 16 else 40)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | variant | threads | batch | p50 ms | eff. GFLOP/s | of sgemm peak | vs eager | "
             "profiler: op time split |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ops = ", ".join(f"{k} {v:.0%}" for k, v in list(r["ops"].items())[:6])
        lines.append(f"| {r['model']} | {r['variant']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.2f} | "
                     f"{r['eff_gflops']:.1f} | {r['of_peak']:.0%} of {r['sgemm_gflops']:.0f} | "
                     f"{r['vs_eager']:.2f}x | {ops} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a trained checkpoint (the fmnist recipe's best.pt)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=FILE.onnx",
                   help="another graph of the checkpoint's model to time beside ours (repeatable)")
    p.add_argument("--models", nargs="*", default=["resnet19-small", "cifarnet-16"],
                   help="untrained zoo models: smallnet, resnet19-small, cifarnet-16, or any registered name")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0 = all cores")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    models = {}
    if a.checkpoint:
        models[os.path.basename(os.path.dirname(os.path.abspath(a.checkpoint))) or "checkpoint"] = load_model(a.checkpoint)
    models.update({name: zoo_model(name) for name in a.models})
    first = next(iter(models)) if models else ""
    baselines = {}
    for spec in a.baseline:
        name, _, path = spec.partition("=")
        with open(path, "rb") as f:
            baselines[name] = (first, f.read())
    rows = run(models, a.variants, baselines, a.threads, a.batches, a.rounds)
    print(markdown(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
