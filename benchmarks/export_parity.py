"""Parity of dense / factorised / auto / int8 exports with the PyTorch model on a whole test set.

    python benchmarks/export_parity.py runs/fmnist/best.pt                       # its dataset's test split
    python benchmarks/export_parity.py runs/fmnist/best.pt --variants dense int8  # int8: post-training limits
    python benchmarks/export_parity.py runs/demo/best.pt --dataset fashion-mnist  # another split of that shape

Reports per variant: top-1 agreement, accuracy of both and their delta, total spike counts and their
relative delta, the fraction of samples matching (logits within the validation atol and identical spike
counts), the max |logit difference|, and whether the variant's validation limits passed (exit 1 if one did
not; int8 of an fp32 checkpoint is held to the post-training int8 limits).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from gee_deploy.checkpoint import load_model
from gee_deploy.export import build_onnx
from gee_deploy.export.api import validation_data
from gee_deploy.errors import GeeError
from gee_deploy.kinds import Precision
from gee_deploy.export.configs import VARIANTS, ValidationConfig, validation_thresholds
from gee_deploy.quantisation import quantised_layers
from gee_deploy.export.validate import validate_export


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run(checkpoint: str, variants=("dense", "factorised", "auto"), dataset: str | None = None,
        samples: int = 10_000, batch_size: int = 250) -> list[dict]:
    model = load_model(checkpoint)
    dataset = dataset or model.checkpoint.dataset_name
    images, labels = validation_data(dataset, samples)
    rows = []
    for variant in variants:
        t0 = time.perf_counter()
        proto, spec = build_onnx(model, variant)
        int8 = any(layer.precision == Precision.INT8 for layer in spec.layers)
        cfg = ValidationConfig(samples=len(images), batch_size=batch_size,
                               thresholds=validation_thresholds(int8, bool(quantised_layers(model))))
        report = validate_export(model, proto.SerializeToString(), images, labels, cfg, raise_on_failure=False)
        s = report.stats
        rows.append({"variant": variant, "dataset": dataset, "samples": len(images),
                     "top1_agreement": s.top1_agreement, "accuracy_torch": s.accuracy_reference,
                     "accuracy_onnx": s.accuracy_deployed,
                     "accuracy_delta_points": 100 * (s.accuracy_deployed - s.accuracy_reference),
                     "spikes_torch": s.spikes_reference, "spikes_onnx": s.spikes_deployed,
                     "spike_rel_delta": s.spike_count_delta, "samples_identical": s.match_fraction,
                     "max_logit_diff": report.max_abs_diff["logits"], "passed": report.ok,
                     "seconds": time.perf_counter() - t0})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's own dataset")
    p.add_argument("--samples", type=positive, default=10_000, help="test images (default 10,000; at most the split's)")
    p.add_argument("--variants", nargs="+", default=["dense", "factorised", "auto"], choices=VARIANTS,
                   help="default: dense factorised auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    try:
        rows = run(args.checkpoint, args.variants, args.dataset, args.samples)
    except GeeError as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| variant | samples | top-1 agreement | acc torch | acc onnx | delta (points) | spikes torch | "
          "spikes onnx | spike delta | samples matching | max logit diff | passed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['samples']} | {r['top1_agreement']:.4%} | {r['accuracy_torch']:.4f} | "
              f"{r['accuracy_onnx']:.4f} | {r['accuracy_delta_points']:+.2f} | {r['spikes_torch']:.0f} | "
              f"{r['spikes_onnx']:.0f} | {r['spike_rel_delta']:.2e} | {r['samples_identical']:.4f} | "
              f"{r['max_logit_diff']:.3g} | {r['passed']} |")
    if not all(r["passed"] for r in rows):
        sys.exit(1)  # a variant failed its validation limits


if __name__ == "__main__":
    main()
