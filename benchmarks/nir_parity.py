"""Parity of a NIR export with the PyTorch model on a whole test set, and what the threshold convention changes.

    python benchmarks/nir_parity.py runs/fmnist/best.pt --out /tmp/fmnist.nir          # its dataset's test split
    python benchmarks/nir_parity.py runs/fmnist/best.pt --nir fmnist.nir               # a file exported before

Exports CHECKPOINT with ``gee-deploy export --format nir`` semantics (validated on every test image; or takes the
file ``--nir`` names, exported from CHECKPOINT before), then runs the file three ways against the same PyTorch reference: the NIR executor as written (v > 1 - 2^-24), the NIR
executor with v_threshold = 1 (what a file without the one-ulp nudge would give under NIR's v > v_th), and
SpikingJelly's NIR importer (its own LIFNode, which fires on >=). Prints one JSON object per run.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from gee_deploy.checkpoint import file_sha256, load_model
from gee_deploy.export import export_loaded
from gee_deploy.export.api import validation_data
from gee_deploy.export.configs import ValidationConfig
from gee_deploy.nir.validate import nir_inputs, read_nir, run_nir
from gee_deploy.export.validate import reference_outputs
from gee_deploy.parity import Outputs, compare


def _spikingjelly(path: str, images: torch.Tensor, batch_size: int) -> np.ndarray:
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    spec, _, mean, std = nir_inputs(read_nir(path), path)
    net = import_from_nir(path)
    logits = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            x = x if mean is None else (x - mean) / std  # a file written before the normalisation was a node
            state, total = None, 0.0
            for _ in range(spec.timesteps):
                y, state = net(x, state)
                total = total + y
            logits.append((total / spec.timesteps).numpy())
    return np.concatenate(logits)


def _row(what: str, ref: Outputs, got: Outputs, seconds: float) -> dict:
    stats = compare(ref, got).as_dict()
    for key in ("spikes_per_layer_deployed", "layer_names_match"):
        stats.pop(key)
    return {"run": what, **stats, "seconds": round(seconds, 1)}


def run(checkpoint: str, out: str, samples: int = 10_000, batch_size: int = 250, exported: bool = False) -> list[dict]:
    model = load_model(checkpoint)
    images, labels = validation_data(model.checkpoint.dataset_name, samples)
    cfg = ValidationConfig(samples=len(images), batch_size=batch_size)
    rows = []
    if not exported:
        t0 = time.perf_counter()
        report = export_loaded(model, out, fmt="nir", images=images, labels=labels, validation=cfg,
                               checkpoint_sha256=file_sha256(checkpoint))
        rows.append({"run": "export (validated)", "seconds": round(time.perf_counter() - t0, 1), **report.validation})
        rows[0].pop("checks", None)
    y = labels.numpy()
    ref = reference_outputs(model, images, batch_size, y)
    graph = read_nir(out)
    for what, threshold in (("NIR executor, file as written (v > 1 - 2^-24)", None),
                            ("NIR executor, v_threshold = 1 (no nudge)", 1.0)):
        t0 = time.perf_counter()
        got = run_nir(graph, images, batch_size, out, threshold, y)
        rows.append(_row(what, ref, got, time.perf_counter() - t0))
    t0 = time.perf_counter()
    logits = _spikingjelly(out, images, batch_size)
    # SpikingJelly's model has no spike-count output; its spike columns are left equal to the reference's
    rows.append(_row("SpikingJelly import_from_nir (fires on >=; logits only)", ref,
                     Outputs(logits, ref.spikes, y, ref.spiking_layers), time.perf_counter() - t0))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", default="model.nir", help="where to export the NIR file")
    p.add_argument("--nir", default=None, help="a NIR file exported from CHECKPOINT before (no export)")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=250)
    args = p.parse_args()
    for row in run(args.checkpoint, args.nir or args.out, args.samples, args.batch_size, exported=bool(args.nir)):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
