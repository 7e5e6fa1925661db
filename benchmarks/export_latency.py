"""onnxruntime CPU latency of dense / factorised / auto exports, next to their MAC counts.

    python benchmarks/export_latency.py runs/fmnist/best.pt            # a trained checkpoint
    python benchmarks/export_latency.py --model smallnet --genes 8 32  # untrained weights: latency only

Latency does not depend on the weight values, so untrained models at other g are fine for this table
(their accuracy means nothing and is not reported). Prints a Markdown table; ``run`` returns the rows.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from gee_deploy.checkpoint import load_model
from gee_deploy.export import build_onnx
from gee_deploy.kinds import ExportVariant
from gee_deploy.ort_session import create_session

from _timing import cpu_name, interleaved
from gee_deploy.zoo import create_model

VARIANTS = ("dense", "factorised", "auto", "auto-profile")


def time_sessions(sessions: dict, x: np.ndarray, rounds: int = 8, iters: int = 10, warmup: int = 3) -> dict:
    """Latency of each session on ``x``: ``rounds`` interleaved blocks of ``iters`` timed runs each.

    Interleaving the variants block by block makes load from other processes on a shared machine hit all of
    them alike; the median is over every timed run of a variant.
    """
    runs = {k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()}
    out = {}
    for k, t in interleaved(runs, rounds, iters, warmup=warmup).items():
        ms = t.ravel() * 1e3
        out[k] = {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                  "samples_per_s": float(len(x) / np.median(t))}
    return out


def run(model: torch.nn.Module, label: str, batches=(1, 64), threads: int = 1, variants=VARIANTS,
        rounds: int = 8) -> list[dict]:
    """Rows of {model, variant, layers (D/F per layer), batch, macs per sample, p50_ms, p90_ms, samples_per_s}."""
    sessions, meta = {}, {}
    for variant in variants:
        proto, info = build_onnx(model, "auto" if variant.startswith("auto") else variant,
                                 profile=variant == "auto-profile")
        sessions[variant] = create_session(proto.SerializeToString(), threads=threads)
        meta[variant] = {"layers": "".join("F" if l.variant == ExportVariant.FACTORISED else "D" for l in info.layers),
                         "macs": sum(l.macs * l.calls for l in info.layers)}
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).random((batch, model.in_channels, model.image_size, model.image_size),
                                            dtype=np.float32)
        iters = max(2, 40 // batch)
        for variant, stats in time_sessions(sessions, x, rounds, iters).items():
            rows.append({"model": label, "variant": variant, "batch": batch, **meta[variant], **stats})
    return rows


def markdown(rows: list[dict]) -> str:
    """Rows as a Markdown table, with each variant's p50 relative to the better of dense and factorised."""
    best = {}
    for r in rows:
        if r["variant"] in ("dense", "factorised"):
            key = (r["model"], r["batch"])
            best[key] = min(best.get(key, float("inf")), r["p50_ms"])
    lines = ["| model | variant | layers (D/F) | MMACs/sample | batch | p50 ms | p90 ms | samples/s | vs best of D/F |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['layers']} | {r['macs'] / 1e6:.1f} | {r['batch']} | "
              f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['samples_per_s']:.0f} | "
              f"{r['p50_ms'] / best[(r['model'], r['batch'])] - 1:+.1%} |" for r in rows]
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
    print(f"CPU: {cpu_name()}; onnxruntime {args.threads} intra-op thread(s), wall clock\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
