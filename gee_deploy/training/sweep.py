"""Gene scale (the paper's Fig. 3, with Tables I-II's parameters and eq. 17 energy beside the accuracy).

One recipe is trained at every gene count g of a list and as the dense twin (genes = 0), for one or several
architectures; each point is reported with its final-epoch test accuracy, parameters (the genetic network's
count, eq. 2 with shared encodings and G counted once, as `gee-deploy models` gives it), MACs per image,
spikes per image and eq. 17 energy per image.

Run directory::

    <model>/g<g>/ and <model>/dense/   an ordinary ``gee-deploy train`` run per point, plus point.json
    sweep.json                         every point's record and the resolved recipe
    sweep.md                           the table
    sweep.png                          accuracy, parameters, spikes and energy against g (dense twin dashed)

Resuming: before anything is trained, every point that holds a run is checked against this recipe by the
rule every resumed run follows (:func:`~.resume.check_run`: only how long and where it runs may change, else
the sweep stops with one line naming the point and the keys); a point whose point.json exists is then
reused, never retrained (unless train.epochs grew: it trains on); a point with a checkpoint but no
point.json was interrupted and continues with ``train(..., resume=True)``; so re-running the same command
continues a killed sweep. The dense twin never evolves (the genotype {beta1, beta2, G} does not exist without genes).

Accuracy is the last epoch's (not the best epoch's, which would select on the test set); spikes are counted
by the final weights (``last.pt``) on the same test images the trainer evaluated.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..data import load_split, make_loader
from ..energy import energy_per_layer, total_energy
from ..errors import ConfigError, reason
from ..io import read_jsonl, write_json, write_report_files
from ..neurons import SpikeRecorder
from ..recipe import GENES, Recipe, check_value
from ..walk import describe
from ..zoo import list_models
from ..zoo.summary import count_parameters
from .fitness import check_evolution_data
from .resume import check_run
from .setup import build_recipe_model
from .trainer import holds_run, select_device, train

__all__ = ["POINT_FILE", "point_recipe", "point_dir", "run_sweep", "write_sweep", "sweep_markdown"]

POINT_FILE = "point.json"


def point_recipe(recipe: Recipe, model: str, genes: int) -> Recipe:
    """``recipe`` with architecture ``model`` at ``genes`` (0: the dense twin, which does not evolve)."""
    r = copy.deepcopy(recipe)
    r.model.name, r.model.genes = model, genes
    if genes == 0:
        r.evolution.enabled = False
    return r


def point_dir(out: str | os.PathLike, model: str, genes: int) -> Path:
    return Path(out) / model / ("dense" if genes == 0 else f"g{genes}")


def _check_points(recipe: Recipe, genes: Sequence[int], models: Sequence[str] | None) -> tuple[list[int], list[str]]:
    """Validated gene counts (dense twin first) and models; builds every point once so a mismatch between a
    model and the recipe's arguments or dataset fails before anything is trained."""
    if recipe.train.epochs < 1:
        raise ConfigError(f"a sweep compares trained models: train.epochs must be >= 1, got {recipe.train.epochs}")
    if not genes:
        raise ConfigError("--genes is empty: give at least one gene count, e.g. --genes 4,8,16,32")
    for g in genes:
        check_value(GENES, g, "a gene count (0 = the dense twin)")
    if models is not None and not models:
        raise ConfigError("--models is empty: give at least one architecture (see `gee-deploy models`)")
    models = list(dict.fromkeys(models or [recipe.model.name]))
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ConfigError(
            f"--models: unknown architecture {unknown[0]!r}; known: {', '.join(list_models())} (gee-deploy models)"
        )
    grid = sorted({0, *genes})
    if recipe.evolution.enabled and grid[-1] > 0:  # before the dense twin, which never evolves, is trained
        check_evolution_data(recipe)
    for model in models:
        for g in grid:
            r = point_recipe(recipe, model, g)
            try:
                net = build_recipe_model(r).eval()
            except ConfigError as e:
                raise ConfigError(f"{model} at genes={g} does not fit recipe: {e}") from None
            shape = (1, net.in_channels, net.image_size, net.image_size)
            try:
                with torch.no_grad():
                    net(torch.zeros(shape))
            except (RuntimeError, ValueError) as e:
                raise ConfigError(
                    f"{model} cannot run on {recipe.data.name} images {list(shape[1:])}: {reason(e)}"
                ) from None
    return grid, models


@torch.no_grad()
def _measure(run_dir: Path, recipe: Recipe) -> dict:
    """Accuracy, spikes per image per spiking layer, MACs and eq. 17 energy of ``last.pt`` on the recipe's
    test images (the ones the trainer scored the final epoch on)."""
    model = load_model(run_dir / "last.pt")
    spec = describe(model, dataset=recipe.data.name)  # eager: every layer dense, as PyTorch runs it
    device = select_device(recipe.train.device)
    model.to(device)
    d = recipe.data
    test = load_split(d.name, "test", d.data_dir or None, limit=d.test_limit or None)
    correct = count = 0
    totals = torch.zeros(len(spec.spiking_layers), dtype=torch.float64)
    for x, y in make_loader(test, d.batch_size, False):
        with SpikeRecorder(model) as rec:
            logits = model(x.to(device))
        correct += (logits.argmax(1).cpu() == y).sum().item()
        count += len(y)
        totals += rec.stacked().double().sum(0).cpu()  # [L]
    per_image = (totals / count).numpy()
    rates = per_image / (np.asarray(spec.neurons_per_layer, dtype=np.float64) * spec.timesteps)
    energy = total_energy(energy_per_layer(spec.layers, dict(zip(spec.spiking_layers, rates.tolist())), spec.timesteps))
    return {
        "eval_accuracy": correct / count,
        "samples": count,
        "spikes_per_layer": dict(zip(spec.spiking_layers, per_image.tolist())),
        "neurons_per_layer": dict(zip(spec.spiking_layers, spec.neurons_per_layer)),
        "spikes_per_image": float(per_image.sum()),
        "macs_per_image": spec.macs_per_sample,
        "sops_per_image": energy["sops"],
        "analog_macs_per_image": energy["analog_macs"],
        "energy_pj": energy["energy_pj"],
    }


def _point(recipe: Recipe, run_dir: Path, say: Callable[[str], None]) -> dict:
    """Train (or resume, or reuse) one point; returns its record."""
    label = f"{recipe.model.name} {'dense' if not recipe.model.genes else f'g={recipe.model.genes}'}"
    record_path = run_dir / POINT_FILE
    if record_path.exists() and "train.epochs" not in check_run(run_dir, recipe.to_dict()):
        record = json.loads(record_path.read_text())
        say(f"{label}: finished earlier, reused ({run_dir})")
        return {**record, "status": "reused"}
    status = "resumed" if holds_run(run_dir) else "trained"
    say(f"{label}: {'resuming' if status == 'resumed' else 'training'} in {run_dir}")
    metrics = train(recipe, run_dir, resume=status == "resumed", progress=lambda line: say(f"{label}: {line}"))
    rows = read_jsonl(run_dir / "train.jsonl")
    evo = read_jsonl(run_dir / "evolution.jsonl")
    model = build_recipe_model(recipe)
    record = {
        "model": recipe.model.name,
        "genes": recipe.model.genes,
        "test_acc": metrics["test_acc"],
        "epochs": recipe.train.epochs,
        "parameters": count_parameters(model),
        "train_minutes": sum(r.get("seconds", 0.0) for r in rows) / 60,
        "evolution_minutes": sum(r.get("seconds", 0.0) for r in evo) / 60,
        **_measure(run_dir, recipe),
        "recipe": recipe.to_dict(),
    }
    write_json(record_path, record)
    return {**record, "status": status}


def run_sweep(
    recipe: Recipe,
    genes: Sequence[int],
    out: str | os.PathLike,
    models: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train every (model, g) point and each model's dense twin into ``out``; write and return the summary.

    Args:
        recipe: the recipe every point trains with (only ``model.name`` and ``model.genes`` change).
        genes: gene counts g (:data:`gee_deploy.recipe.GENES`; 0 = the dense twin, which is always added).
        out: sweep directory (module docstring); re-running continues an interrupted sweep.
        models: architectures (default: the recipe's).
        progress: callable(str) told what runs now.

    Returns:
        ``{"recipe", "dataset", "epochs", "timesteps", "models", "genes", "minutes", "points": [...]}``; each
        point: model, genes (0: dense twin), test_acc (fraction), parameters, param_ratio (of its dense twin's),
        macs_per_image, spikes_per_image, spikes_per_layer, neurons_per_layer, spike_ratio, energy_pj (eq. 17,
        pJ per image), sops_per_image, analog_macs_per_image, energy_ratio, train/evolution minutes, status
        (trained / resumed / reused).

    Raises:
        ConfigError: empty gene list, a gene count out of range, empty model list, a model the recipe cannot build or run,
            untrained recipe (epochs < 1), a point directory holding another recipe's run.
    """
    say = progress or (lambda msg: None)
    grid, models = _check_points(recipe, genes, models)
    for model in models:  # every point a run already holds may continue with this recipe: before any training
        for g in grid:
            check_run(point_dir(out, model, g), point_recipe(recipe, model, g).to_dict())
    started = time.perf_counter()
    points = []
    for model in models:
        rows = [_point(point_recipe(recipe, model, g), point_dir(out, model, g), say) for g in grid]
        dense = rows[0]
        for r in rows:
            r["param_ratio"] = r["parameters"] / dense["parameters"]
            r["spike_ratio"] = r["spikes_per_image"] / dense["spikes_per_image"] if dense["spikes_per_image"] else None
            r["energy_ratio"] = r["energy_pj"] / dense["energy_pj"] if dense["energy_pj"] else None
        points += rows
    summary = {
        "dataset": recipe.data.name,
        "epochs": recipe.train.epochs,
        "timesteps": recipe.model.timesteps,
        "models": models,
        "genes": [g for g in grid if g],
        "minutes": (time.perf_counter() - started) / 60,
        "recipe": recipe.to_dict(),
        "points": [{k: v for k, v in p.items() if k != "recipe"} for p in points],
    }
    write_sweep(summary, out)
    return summary


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def sweep_markdown(summary: dict) -> str:
    """The table: one row per point, each model's dense twin first."""
    lines = [
        f"Gene scale (Fig. 3 protocol): {', '.join(summary['models'])} on {summary['dataset']}, "
        f"T = {summary['timesteps']}, {summary['epochs']} epochs per point; this invocation "
        f"{summary['minutes']:.1f} minutes.",
        "",
        "| model | g | parameters | of dense | MACs / image | spikes / image | of dense | energy / image (uJ) "
        "| of dense | test acc (%) | train min | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in summary["points"]:
        lines.append(
            f"| {p['model']} | {p['genes'] or 'dense'} | {p['parameters']:,} | {p['param_ratio']:.1%} | "
            f"{p['macs_per_image']:,} | {p['spikes_per_image']:,.0f} | {_share(p['spike_ratio'])} | "
            f"{p['energy_pj'] / 1e6:.4f} | {_share(p['energy_ratio'])} | {100 * p['test_acc']:.2f} | "
            f"{p['train_minutes']:.1f} | {p['status']} |"
        )
    lines += [
        "",
        "Accuracy: final epoch on the recipe's test images. Parameters: unique parameters of the network "
        "(shared encodings and G counted once, as `gee-deploy models`). MACs: one inference as PyTorch runs "
        "it (stem once, body layers T times). Spikes: all LIF layers, summed over neurons and the T steps, "
        "mean per test image, counted by the final weights. Energy: eq. 17, 4.6 pJ per MAC of the layers "
        "that read analog values + 0.9 pJ per synaptic operation (fr x T x MACs of the layers that read "
        "spikes).",
    ]
    return "\n".join(lines) + "\n"


def _figure(summary: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    panels = (
        ("test_acc", "test accuracy (%)", 100.0, "linear"),
        ("parameters", "parameters", 1.0, "log"),
        ("spikes_per_image", "spikes per image", 1.0, "linear"),
        ("energy_pj", "eq. 17 energy per image (uJ)", 1e-6, "linear"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for i, model in enumerate(summary["models"]):
        color = f"C{i}"
        rows = [p for p in summary["points"] if p["model"] == model]
        genetic = [p for p in rows if p["genes"]]
        dense = next(p for p in rows if not p["genes"])
        for ax, (key, label, scale, yscale) in zip(axes.flat, panels):
            ax.plot([p["genes"] for p in genetic], [scale * p[key] for p in genetic], "o-", color=color, label=model)
            ax.axhline(scale * dense[key], color=color, linestyle="--", linewidth=1, label=f"{model} dense twin")
            ax.set(xscale="log", yscale=yscale, xlabel="genes g", ylabel=label)
            ax.set_xticks([p["genes"] for p in genetic], [str(p["genes"]) for p in genetic])
            ax.xaxis.set_minor_locator(NullLocator())  # only the swept g as x ticks
            ax.grid(alpha=0.3)
    axes[0, 0].set_title(f"Gene scale on {summary['dataset']}")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_sweep(summary: dict, out: str | os.PathLike) -> list[Path]:
    """Write ``out``/sweep.json, sweep.md and sweep.png (each atomically); returns the paths."""
    return write_report_files(out, "sweep", summary, sweep_markdown(summary), _figure(summary))
