"""What the literal initialisation changes at step 0: W's spread, the logits, the loss, and the gradients.

    OMP_NUM_THREADS=1 python benchmarks/init_spread.py tableiv_resnet19 tableiv_vgg11
    OMP_NUM_THREADS=1 python benchmarks/init_spread.py --runs runs/tableiv_vgg11/baseline/seed*

For each recipe and each ``model.init`` (``kaiming``: scale = Kaiming std / g; ``paper``: eq. 1 with no
constant, E and G ~ N(0, 1)) and seeds 0..--seeds-1 (``torch.manual_seed(seed)`` before the model is built,
as the trainer does), one forward + backward in train mode on the first --images training images of the
recipe's dataset. Prints, averaged over seeds: the std of W of the first conv, of the last conv and of the
classifier; the std of the logits; the cross-entropy; the gradient norm of the first population's encoding
(``input``), of the classifier's (``classes``) and of G; and the fraction of classifier outputs whose softmax
is saturated (max probability > 0.999). Every conv is followed by BatchNorm, so a conv's scale cancels in the
forward pass; the classifier has no BatchNorm, so its scale reaches the logits.

With ``--runs``, the same numbers for the phenotype each evolved run directory started training from: its
evolution is replayed from ``evolution_state.json`` (in a scratch copy; :func:`run_evolution` re-creates
CMA-ES and applies the best genotype without evaluating anything), plus that genotype's beta1, beta2 and
rms(G) (None for all three when the default wiring won).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from gee_deploy.data import load_split
from gee_deploy.genetic import INITS, GeneticConv2d, GeneticLinear
from gee_deploy.recipe import load_recipe, recipe_from_dict
from gee_deploy.training.evolution import LOG_FILE, STATE_FILE, run_evolution
from gee_deploy.training.setup import build_recipe_model

KEYS = ["w_first", "w_last", "w_classifier", "logit_std", "loss", "saturated", "grad_input", "grad_classes", "grad_G"]


def measure(recipe_path: str, init: str, seed: int, images: int) -> dict:
    """One model at initialisation: the numbers the module docstring lists, as a flat dict."""
    recipe = load_recipe(recipe_path, [f"model.init={init}"])
    torch.manual_seed(seed)
    return measure_model(build_recipe_model(recipe), recipe, images)


def measure_evolved(run_dir: Path, images: int) -> dict:
    """The phenotype evolution in ``run_dir`` handed to training, measured as :func:`measure` does."""
    recipe = recipe_from_dict(json.loads((run_dir / "config.json").read_text()))
    torch.manual_seed(recipe.train.seed)
    model = build_recipe_model(recipe)
    with tempfile.TemporaryDirectory() as scratch:
        for name in (STATE_FILE, LOG_FILE):
            shutil.copy(run_dir / name, scratch)
        best = run_evolution(recipe, scratch, model, torch.device("cpu"), progress=False)
    gene_matrix = model.genome.gene_matrix.detach()
    rms = None if best["beta1"] is None else gene_matrix.pow(2).mean().sqrt().item()
    return {"beta1": best["beta1"], "beta2": best["beta2"], "rms_G": rms, **measure_model(model, recipe, images)}


def measure_model(model, recipe, images: int) -> dict:
    model.train()
    data = load_split(recipe.data.name, "train", recipe.data.data_dir or None, limit=images)
    x = torch.stack([data[i][0] for i in range(len(data))])  # [N, C, H, W]
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    logits = model(x)  # [N, classes]
    loss = F.cross_entropy(logits, y)
    loss.backward()
    convs = [m for m in model.modules() if isinstance(m, GeneticConv2d)]
    classifier = [m for m in model.modules() if isinstance(m, GeneticLinear)][-1]
    encodings = model.genome.encodings
    return {"w_first": convs[0].weight.std().item(), "w_last": convs[-1].weight.std().item(),
            "w_classifier": classifier.weight.std().item(), "logit_std": logits.std().item(),
            "loss": loss.item(), "saturated": (logits.softmax(1).amax(1) > 0.999).float().mean().item(),
            "grad_input": encodings["input"].grad.norm().item(),
            "grad_classes": encodings["classes"].grad.norm().item(),
            "grad_G": model.genome.gene_matrix.grad.norm().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*")
    ap.add_argument("--runs", nargs="*", default=[], help="evolved run directories to measure")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--images", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    keys = KEYS
    if args.runs:
        cols = ["beta1", "beta2", "rms_G", *keys]
        print("| run | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for run in args.runs:
            row = measure_evolved(Path(run), args.images)
            print(f"| {run} | " + " | ".join("—" if row[k] is None else f"{row[k]:.3g}" for k in cols) + " |",
                  flush=True)
    if not args.recipes:
        return
    print("| recipe | init | " + " | ".join(keys) + " |")
    print("|---|---|" + "---:|" * len(keys))
    for path in args.recipes:
        for init in INITS:
            rows = [measure(path, init, seed, args.images) for seed in range(args.seeds)]
            means = {k: statistics.fmean(r[k] for r in rows) for k in keys}
            print(f"| {path} | {init} | " + " | ".join(f"{means[k]:.3g}" for k in keys) + " |", flush=True)


if __name__ == "__main__":
    main()
