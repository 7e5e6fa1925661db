"""bench's NeuroBench block against NeuroBench itself (neurobench 2.3.0) on a checkpoint and its ONNX export.

    python benchmarks/neurobench_parity.py runs/demo/best.pt runs/demo/demo.onnx          # 1,000 test images
    python benchmarks/neurobench_parity.py runs/demo/best.pt runs/demo/demo.onnx --samples 200

bench counts from each runtime's own graph (:mod:`gee_deploy.evaluation.neurobench`); NeuroBench runs through
``TorchModel`` with our LIF registered, its static Footprint / ParameterCount on the checkpoint's model as stored,
the rest on the same model with its weight layers written as the plain Conv2d / Linear layers that run
(gee_deploy/testing/neurobench_reference.py: NeuroBench sees no genetic layer and no fused conv + pool). One batch per sample:
NeuroBench sums its op counts in float32, exact below 2^24 per call. Prints one JSON object per runtime and metric.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from gee_deploy.testing import neurobench_reference as nr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("onnx")
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from gee_deploy.checkpoint import load_model
    from gee_deploy.data import load_test_arrays
    from gee_deploy.evaluation.bench import run_bench
    from gee_deploy.neurons import LIF

    t0 = time.perf_counter()
    report = run_bench([args.checkpoint, args.onnx], batch_sizes=(1,), limit=args.samples, min_time=0.0, threads=1)
    t_bench = time.perf_counter() - t0
    images, labels = load_test_arrays(report["dataset"], limit=args.samples)
    model = load_model(args.checkpoint)
    t0 = time.perf_counter()
    theirs = nr.run_neurobench(nr.dense_equivalent(model), images, labels, LIF)
    stored = nr.run_neurobench(model, images[:1], labels[:1], LIF)
    theirs.update(Footprint=stored["Footprint"], ParameterCount=stored["ParameterCount"])
    t_nb = time.perf_counter() - t0
    flat = lambda d: {**{k: v for k, v in d.items() if k != "SynapticOperations"},  # noqa: E731
                      **(d.get("SynapticOperations") or {})}
    ref = flat(theirs)
    for r in report["runtimes"]:
        ours = flat(r["neurobench"])
        for key, value in ref.items():
            mine = ours.get(key)
            ratio = key in ("ConnectionSparsity", "ActivationSparsity", "ClassificationAccuracy")
            same = mine is not None and (abs(mine - value) <= 1e-6 if ratio else mine == value)
            print(json.dumps({"runtime": r["runtime"], "metric": key, "bench": mine, "neurobench": value,
                              "match": same, "rule": "within 1e-6" if ratio else "equal",
                              "spikes_vs_torch": r.get("parity", {}).get("spike_count_delta")}))
    print(json.dumps({"samples": len(images), "dataset": report["dataset"], "bench_s_all_runtimes": round(t_bench, 1),
                      "neurobench_s": round(t_nb, 1), "eq17_sops": report["runtimes"][0]["neurobench"]["eq17_sops"],
                      "file_bytes": {r["runtime"]: r["neurobench"]["file_bytes"] for r in report["runtimes"]}}))


if __name__ == "__main__":
    main()
