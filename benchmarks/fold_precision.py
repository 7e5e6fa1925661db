"""Does the precision of the float forms' weight product change parity with PyTorch?

    python benchmarks/fold_precision.py                                        # random calibrated zoo nets
    python benchmarks/fold_precision.py --checkpoint runs/demo/best.pt --dataset fashion-mnist

The exporter computes a float layer's genetic weight W = mix E_in in float32, as the model's own forward does
(docs/export.md, "Float order"); a float64 product rounded once would round W correctly but makes a genetic
file's session creation about twice as slow. This script exports each model's ``dense`` graph both ways
(folded storage, no file written) and compares each with the PyTorch model on the same inputs: samples whose
per-layer spike counts are all identical, spikes that differ, the largest logit difference and top-1
agreement. Without ``--checkpoint``: ResNet-19, VGG-16 (g = 150) and SmallNet (g = 32), untrained, with
BatchNorm statistics calibrated on 8 of the images so every layer fires (random deep nets are chaotic: a
last-bit difference near a threshold flips a spike, whichever side rounds it).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import gee_deploy.export.folding as folding
from gee_deploy.export import build_onnx
from gee_deploy.neurons import SpikeRecorder
from gee_deploy.ort_session import create_session
from gee_deploy.testing import lively  # random BatchNorm affines, statistics calibrated: every layer fires
from gee_deploy.zoo import create_model

PRODUCTS = {"float64": np.float64, "float32": np.float32}


def compare(model: nn.Module, images: np.ndarray, label: str, batch: int) -> None:
    refs, counts_ref = [], []
    for i in range(0, len(images), batch):
        with torch.no_grad(), SpikeRecorder(model) as rec:
            refs.append(model(torch.from_numpy(images[i:i + batch])).numpy())
        counts_ref.append(rec.stacked().numpy())
    ref, counts_ref = np.concatenate(refs), np.concatenate(counts_ref)
    default = folding.FLOAT_PRODUCT
    for name, dtype in PRODUCTS.items():
        folding.FLOAT_PRODUCT = dtype  # what the exporter writes with this product precision
        try:
            proto, _ = build_onnx(model, "dense", storage="folded")
        finally:
            folding.FLOAT_PRODUCT = default
        session = create_session(proto.SerializeToString())
        outs = [session.run(None, {"input": images[i:i + batch]}) for i in range(0, len(images), batch)]
        logits, counts = (np.concatenate(part) for part in zip(*outs))
        same = (counts == counts_ref).reshape(len(images), -1).all(1)
        print(f"| {label} | {name} | {same.mean():.4f} | {np.abs(counts - counts_ref).sum():,.0f} of "
              f"{counts_ref.sum():,.0f} | {np.abs(logits - ref).max():.2e} | "
              f"{(logits.argmax(1) == ref.argmax(1)).mean():.4f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a trained checkpoint (default: random calibrated zoo nets)")
    p.add_argument("--dataset", default=None, help="its test split (default: the checkpoint's dataset)")
    p.add_argument("--images", type=int, default=32, help="random images per zoo net")
    p.add_argument("--batch", type=int, default=250)
    a = p.parse_args()
    if a.images < 8 or a.batch < 1:
        p.error("--images must be >= 8 and --batch >= 1")
    print("| model | W product | samples with identical spike counts | spikes differing | max abs logit diff "
          "| top-1 agreement |")
    print("|---|---|---:|---:|---:|---:|")
    if a.checkpoint:
        from gee_deploy.checkpoint import load_model
        from gee_deploy.data import load_test_arrays

        model = load_model(a.checkpoint)
        images, _ = load_test_arrays(a.dataset or model.checkpoint.dataset_name, None, None)
        compare(model, images, a.checkpoint, a.batch)
        return
    for name, genes in (("resnet19", 150), ("vgg16", 150), ("smallnet", 32)):
        torch.manual_seed(0)
        model = create_model(name, genes=genes)
        images = torch.rand(a.images, model.in_channels, model.image_size, model.image_size)
        compare(lively(model, images[:8]), images.numpy(), f"{name} g={genes}", a.batch)


if __name__ == "__main__":
    main()
