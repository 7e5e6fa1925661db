"""Training throughput of a genetic model and its dense twin, measured in the same run.

    python benchmarks/train_speed.py --model smallnet --genes 32 --batch 128
    python benchmarks/train_speed.py --model resnet19 --genes 150 --batch 128 --device cuda --amp

Warm-up steps first, then timed steps of forward + backward + AdamW step (the device synchronised),
alternating genetic / dense rounds so drift in machine load hits both alike. Prints images/s per twin and
the genetic / dense ratio (target: >= 0.9).
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from gee_deploy import create_model
from gee_deploy.training.setup import train_step


def step_fn(model, x, y, amp):
    """One training step of the trainer (:func:`gee_deploy.training.setup.train_step`) with plain AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def autocast():
        return torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else nullcontext()

    return lambda: train_step(model, optimizer, x, y, autocast=autocast)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smallnet")
    ap.add_argument("--genes", type=int, default=32)
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    steps, seconds = {}, {}
    for name, genes in (("genetic", args.genes), ("dense", None)):
        model = create_model(args.model, genes=genes, timesteps=args.timesteps).to(device).train()
        x = torch.rand(args.batch, model.in_channels, model.image_size, model.image_size, device=device)
        if args.channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, model.num_classes, (args.batch,), device=device)
        steps[name] = step_fn(model, x, y, args.amp)
        for _ in range(3):
            steps[name]()
        seconds[name] = 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.rounds):
        for name, step in steps.items():
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            seconds[name] += time.perf_counter() - t
    n = args.batch * args.steps * args.rounds
    result = {f"{k}_images_per_s": round(n / v, 1) for k, v in seconds.items()}
    result["genetic_over_dense"] = round(seconds["dense"] / seconds["genetic"], 3)
    result.update(model=args.model, genes=args.genes, timesteps=args.timesteps, batch=args.batch,
                  device=str(device), amp=args.amp, threads=torch.get_num_threads())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
