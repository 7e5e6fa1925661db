"""NIR import parity: SpikingJelly and snntorch models, through their own NIR exporters and `gee-deploy export`,
against the frameworks' own runs on real Fashion-MNIST test images.

    python benchmarks/nir_import_parity.py                       # 300 training steps, 1,000 test images, T = 4, 8
    python benchmarks/nir_import_parity.py --steps 100 --samples 200

Per framework: build the model of :mod:`gee_deploy.testing.nir_frameworks` (Conv -> LIF -> AvgPool -> Conv -> LIF -> AvgPool ->
Flatten -> Linear -> LIF -> Linear), train it ``--steps`` Adam steps at T = 4 on the training split (so its logits
are informative: top-1 agreement on untrained ties would mean nothing), write it with the framework's own NIR
exporter, convert it with `gee-deploy export MODEL.nir` (the framework's flags of docs/nir.md; validated against
the spec-only NIR executor on the same images), and compare the ONNX graph's logits and spike counts with the
framework's own model run for T steps: top-1 agreement, total spikes, per-layer spikes, accuracy. Also the rows a
user gets with the other threshold rule and with a wrong dt (what the flags are for). Prints one JSON object per
row and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from gee_deploy.data import load_split, load_test_arrays
from gee_deploy.export.validate import run_graph
from gee_deploy.nir.convert import convert_nir
from gee_deploy.ort_session import create_session
from gee_deploy.testing import nir_frameworks as nf

from gee_deploy.export.options import export_options
from gee_deploy.nir.options import NIRImportOptions

from _timing import write_json


def _train_arrays(limit: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*DataLoader(load_split("fashion-mnist", "train", limit=limit), batch_size=1000))
    return torch.cat(xs).numpy().astype(np.float32), torch.cat(ys).numpy()


def _flags(framework: str) -> dict:
    return {"dt": 1e-4, "threshold_rule": "ge" if framework == "spikingjelly" else "gt"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per framework (batch 64, T = 4)")
    p.add_argument("--samples", type=int, default=1000, help="Fashion-MNIST test images to compare on")
    p.add_argument("--timesteps", default="4,8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = load_test_arrays("fashion-mnist", limit=args.samples)
    train_x, train_y = _train_arrays(20_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "images.npy"
        np.save(npy, images)
        for fw in nf.FRAMEWORKS:
            start = time.perf_counter()
            net = nf.train(fw, nf.build(fw), train_x, train_y, timesteps=4, steps=args.steps)
            train_s = time.perf_counter() - start
            path = nf.export(fw, net, Path(tmp) / f"{fw}.nir")
            for t in (int(v) for v in args.timesteps.split(",")):
                want_logits, want_spikes = nf.run(fw, net, images, t)
                flags = _flags(fw)
                other_rule = "gt" if flags["threshold_rule"] == "ge" else "ge"
                runs = [("dense", flags), ("int8", flags),
                        ("dense", {**flags, "threshold_rule": other_rule}), ("dense", {**flags, "dt": 1e-3})]
                for variant, conv in runs:
                    out = Path(tmp) / f"{fw}.onnx"
                    start = time.perf_counter()
                    try:
                        report = convert_nir(path, out, export_options(variant=variant, samples=len(images)),
                                             NIRImportOptions(timesteps=t, images=npy, **conv))
                        validation = report.validation["top1_agreement"]
                    except Exception as e:  # a wrong convention may even fail validation: say so, carry on
                        rows.append({"framework": fw, "T": t, "variant": variant, **conv, "error": str(e)[:200]})
                        continue
                    _, (logits, spikes) = run_graph(create_session(str(out)), images, 250)
                    total = float(spikes.astype(np.float64).sum())
                    want_total = float(want_spikes.astype(np.float64).sum())
                    row = {"framework": fw, "T": t, "variant": variant, **conv,
                           "top1_agreement": float((logits.argmax(1) == want_logits.argmax(1)).mean()),
                           "spikes_onnx": total, "spikes_framework": want_total,
                           "spike_delta": abs(total - want_total) / want_total,
                           "max_layer_spike_delta": float((np.abs(spikes.sum(0) - want_spikes.sum(0))
                                                           / np.maximum(want_spikes.sum(0), 1)).max()),
                           "max_logit_diff": float(np.abs(logits - want_logits).max()),
                           "accuracy_onnx": float((logits.argmax(1) == labels).mean()),
                           "accuracy_framework": float((want_logits.argmax(1) == labels).mean()),
                           "validation_top1_vs_executor": validation, "samples": len(images),
                           "convert_s": time.perf_counter() - start, "train_s": train_s, "train_steps": args.steps}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| framework | T | variant | dt | rule | top-1 agreement | spikes ONNX / framework | delta | "
          "acc ONNX / framework |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['framework']} | {r['T']} | {r['variant']} | {r['dt']} | {r['threshold_rule']} | "
                  f"validation failed: {r['error'][:60]} | | | |")
            continue
        print(f"| {r['framework']} | {r['T']} | {r['variant']} | {r['dt']} | {r['threshold_rule']} | "
              f"{r['top1_agreement']:.2%} | {r['spikes_onnx']:.0f} / {r['spikes_framework']:.0f} | "
              f"{r['spike_delta']:.2e} | {r['accuracy_onnx']:.1%} / {r['accuracy_framework']:.1%} |")
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
