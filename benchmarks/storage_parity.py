"""Genetic against folded storage on real images: same top-1, same spikes, same logits?

    python benchmarks/storage_parity.py runs/ci/best.pt --dataset fashion-mnist --variant dense

Exports CHECKPOINT both ways (no file written), runs both graphs in onnxruntime on the whole test split of
``--dataset`` (default: the checkpoint's), and prints the share of images with the same top-1, the total spike
counts, the largest logit difference and both file sizes. Both storages run the same weights by construction
(docs/export.md, "Storage"): anything but 100%, equal spikes and 0 is a bug.
"""
from __future__ import annotations

import argparse

import numpy as np

from gee_deploy.checkpoint import load_model
from gee_deploy.data import load_test_arrays
from gee_deploy.export import build_onnx
from gee_deploy.ort_session import create_session


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--dataset", default=None, help="test split to run (default: the checkpoint's dataset)")
    p.add_argument("--variant", default="dense", choices=("dense", "factorised", "auto", "int8"))
    p.add_argument("--batch", type=int, default=500)
    a = p.parse_args()
    if a.batch < 1:
        p.error("--batch must be >= 1")
    model = load_model(a.checkpoint)
    images, labels = load_test_arrays(a.dataset or model.checkpoint.dataset_name, None, None)
    results = {}
    for storage in ("genetic", "folded"):
        proto, _ = build_onnx(model, a.variant, storage=storage)
        session = create_session(proto.SerializeToString())
        runs = [session.run(None, {"input": images[i:i + a.batch]}) for i in range(0, len(images), a.batch)]
        results[storage] = [np.concatenate(part) for part in zip(*runs)] + [proto.ByteSize()]
    (gl, gc, gb), (fl, fc, fb) = results["genetic"], results["folded"]
    print(f"{len(images)} test images, variant {a.variant}: same top-1 on {(gl.argmax(1) == fl.argmax(1)).mean():.4%}, "
          f"total spikes {gc.sum():.0f} (genetic) vs {fc.sum():.0f} (folded), max |logit diff| "
          f"{np.abs(gl - fl).max():.3g}, accuracy {(gl.argmax(1) == labels).mean():.4f}; {gb:,} vs {fb:,} bytes")


if __name__ == "__main__":
    main()
