"""onnxruntime CPU latency of dense / factorised / auto exports, next to their MAC counts.

    python benchmarks/export_latency.py runs/fmnist/best.pt            # a trained checkpoint
    python benchmarks/export_latency.py --model smallnet --genes 8 32  # untrained weights: latency only

Latency does not depend on the weight values, so untrained models at other g are fine for this table
(their accuracy means nothing and is not reported). Prints a Markdown table; ``run`` returns the rows.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gee_deploy.checkpoint import load_model
from gee_deploy.export import build_onnx
from gee_deploy.export.validate import onnx_session
from gee_deploy.zoo import create_model

VARIANTS = ("dense", "factorised", "auto", "auto-profile")


def time_session(session, x: np.ndarray, warmup: int = 5, iters: int = 50, max_seconds: float = 20.0) -> dict:
    """Warm up, then time ``iters`` runs (stopping early after ``max_seconds``); ms p50 / p90 and samples/s."""
    for _ in range(warmup):
        session.run(None, {"input": x})
    times, start = [], time.perf_counter()
    while len(times) < iters and (time.perf_counter() - start < max_seconds or len(times) < 5):
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "samples_per_s": float(len(x) / np.median(times)), "iters": len(times)}


def run(model: torch.nn.Module, label: str, batches=(1, 64), threads: int = 1, variants=VARIANTS) -> list[dict]:
    rows = []
    for variant in variants:
        proto, info = build_onnx(model, "auto" if variant.startswith("auto") else variant,
                                 profile=variant == "auto-profile")
        macs = sum(l.macs * l.calls for l in info.layers)
        session = onnx_session(proto.SerializeToString(), threads=threads)
        chosen = "".join("F" if l.variant == "factorised" else "D" for l in info.layers)
        for batch in batches:
            x = np.random.default_rng(0).random((batch, model.in_channels, model.image_size, model.image_size),
                                                dtype=np.float32)
            rows.append({"model": label, "variant": variant, "layers": chosen, "batch": batch, "macs": macs,
                         **time_session(session, x)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | variant | layers (D/F) | MMACs/sample | batch | p50 ms | p90 ms | samples/s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['layers']} | {r['macs'] / 1e6:.1f} | {r['batch']} | "
              f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['samples_per_s']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="*", help="checkpoints to export and time")
    p.add_argument("--model", default="smallnet", help="architecture for --genes (untrained weights)")
    p.add_argument("--genes", type=int, nargs="*", default=[], help="g values to time with untrained weights")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.checkpoints:
        model = load_model(path)
        rows += run(model, f"{model.model_name} g={model.genes} (trained)", args.batches, args.threads)
    for g in args.genes:
        torch.manual_seed(0)
        model = create_model(args.model, genes=g, timesteps=args.timesteps).eval()
        rows += run(model, f"{args.model} g={g} (untrained)", args.batches, args.threads)
    print(markdown(rows))


if __name__ == "__main__":
    main()
