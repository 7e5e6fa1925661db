"""The paper's Table IV protocol: the same recipe as Random, Baseline, Baseline + r1, Baseline + r2 and STE,
over several seeds, reported as mean +- std of the final test accuracy, each variant's paired difference from
the first variant (Random by default) with an exact sign-flip permutation test, and the CPU seconds each
run spent (evolution + training).

Run directory::

    <variant>/seed<i>/       an ordinary ``gee-deploy train`` run (plus evolution.png when it evolved)
    ablation.json            per run and per variant: test accuracy, firing rate, minutes, evolution's best
    ablation.md              the table
    ablation.png             test accuracy per variant (mean +- std, every seed as a dot)

Seed i sets ``train.seed = recipe seed + i`` (initialisation, shuffling, and every evolution seed). A run
that finished is reused, an interrupted one is resumed, so re-running the same command continues.
The accuracy is the last epoch's (not the best epoch's, which would select on the test set).

Paired test. Seed i fixes the data order, the noise and (for Random) the initialisation of every variant,
so variant v and the reference r are compared per seed: d_i = acc_v(i) - acc_r(i). The two-sided p-value is
exact under the null that each d_i's sign is a coin flip (:func:`sign_flip_p`): the fraction of the 2^n sign
assignments whose |mean| is at least the observed |mean d|. It can be no smaller than 2 / 2^n (0.25 for 3
seeds, 0.0625 for 5, 0.03125 for 6), so fewer than 6 seeds cannot reach p < 0.05.

CPU seconds: user + system time of this process and of its reaped children (evolution's worker
processes) while the run trained, so the column counts what every core spent; a resumed run counts only
the part after the resume (its record says ``resumed``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import resource
import statistics
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np

from ..errors import ConfigError
from ..io import atomic_path, read_jsonl, write_json
from ..kinds import FitnessMode
from .evolution import LOG_FILE
from .evolution_plots import plot_evolution
from .fitness import check_evolution_data
from .resume import check_run
from .trainer import holds_run, train

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "run_ablation", "sign_flip_p", "cpu_seconds"]


class _Overrides(TypedDict, total=False):
    """The [evolution] keys a variant sets."""

    enabled: bool
    fitness: FitnessMode


class _VariantRow(TypedDict):
    """One variant's entry of ablation.json's ``variants``: its runs and their statistics."""

    variant: str
    label: str
    test_acc: list[float]  # per seed
    mean: float
    std: float
    firing_rate: float
    minutes: float
    evolution_minutes: float
    cpu_seconds: float | None
    runs: list[dict]  # _run's records
    paired_diff: NotRequired[float | None]  # None for the reference (the first variant)
    paired_p: NotRequired[float | None]


# key -> (label, evolution overrides); enabled = false is the Random model. The -scaled variants use the
# scale-free terms (r1 relative to the output's magnitude, each term standardised across the generation);
# r1, r2 and ste are eq. 16 literally, where raw r1 (10-80) swamps L (~2) and decides every ranking.
VARIANTS: dict[str, tuple[str, _Overrides]] = {
    "random": ("Random", {"enabled": False}),
    "baseline": ("Baseline", {"enabled": True, "fitness": FitnessMode.LOSS}),
    "r1-scaled": ("Baseline + r1 (scaled)", {"enabled": True, "fitness": FitnessMode.LOSS_R1_SCALED}),
    "r2-scaled": ("Baseline + r2 (scaled)", {"enabled": True, "fitness": FitnessMode.LOSS_R2_SCALED}),
    "ste-scaled": ("STE (scaled)", {"enabled": True, "fitness": FitnessMode.STE_SCALED}),
    "r1": ("Baseline + r1 (literal)", {"enabled": True, "fitness": FitnessMode.LOSS_R1}),
    "r2": ("Baseline + r2 (literal)", {"enabled": True, "fitness": FitnessMode.LOSS_R2}),
    "ste": ("STE (literal)", {"enabled": True, "fitness": FitnessMode.STE}),
}
# what runs without --variants: Table IV's five rows with the scale-free terms
DEFAULT_VARIANTS = ["random", "baseline", "r1-scaled", "r2-scaled", "ste-scaled"]


def _variant_recipe(recipe, overrides: Mapping[str, object], seed_offset: int):
    variant = copy.deepcopy(recipe)
    for key, value in overrides.items():
        setattr(variant.evolution, key, value)
    variant.train.seed = recipe.train.seed + seed_offset
    return variant


def sign_flip_p(differences: list[float]) -> float:
    """Two-sided sign-flip permutation p-value of mean(``differences``) = 0 (paired samples).

    Up to 20 differences it enumerates all 2^n sign assignments (exact): p is the fraction whose |sum| >= the
    observed |sum| (with a 1e-12 relative tolerance for float ties). Above 20 it draws 2^20 assignments from
    a generator seeded with 0 and returns (hits + 1) / (draws + 1). All-zero differences give p = 1.
    Source: Fisher's randomisation test for paired data (Good, Permutation Tests, 2nd ed., section 3.1).

    Raises:
        ValueError: no differences.
    """
    n = len(differences)
    if n == 0:
        raise ValueError("sign_flip_p needs at least one paired difference")
    d = np.asarray(differences, dtype=np.float64)
    observed = abs(float(d.sum()))
    tolerance = 1e-12 * max(1.0, observed)
    if n <= 20:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n]
        return float((np.abs(signs @ d) >= observed - tolerance).mean())
    rng, draws, hits = np.random.default_rng(0), 2**20, 0
    for _ in range(draws // 2**14):  # in chunks: 2^14 x n signs at a time
        signs = rng.choice((1.0, -1.0), size=(2**14, n))
        hits += int((np.abs(signs @ d) >= observed - tolerance).sum())
    return (hits + 1) / (draws + 1)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _run(recipe, run_dir: Path, progress, label: str) -> dict:
    """Train (or resume, or reuse) one run; returns its record. ``label`` names it in the progress line."""
    from tqdm.auto import tqdm

    record_path = run_dir / "ablation_run.json"
    rows = read_jsonl(run_dir / "train.jsonl")
    if record_path.exists() and rows and rows[-1].get("epoch") == recipe.train.epochs:
        if progress is not False:
            tqdm.write(f"{label}: finished earlier, reused ({run_dir})")
        return json.loads(record_path.read_text())
    resume = holds_run(run_dir)
    if progress is not False:
        tqdm.write(f"{label}: {'resuming' if resume else 'training'} in {run_dir}")
    started, cpu = time.perf_counter(), cpu_seconds()
    metrics = train(recipe, run_dir, resume=resume, progress=progress)
    evo = read_jsonl(run_dir / LOG_FILE)
    record = {
        "seed": recipe.train.seed,
        "test_acc": metrics["test_acc"],
        "firing_rate": metrics["firing_rate"],
        "minutes": (time.perf_counter() - started) / 60,
        "cpu_seconds": cpu_seconds() - cpu,
        "resumed": resume,
        "evolution_minutes": sum(r["seconds"] for r in evo) / 60 if evo else 0.0,
        "best_fitness": evo[-1]["best_fitness"] if evo else None,
        "best": evo[-1]["best"] if evo else None,
    }
    write_json(record_path, record)
    if evo:
        plot_evolution(run_dir)
    return record


def _mean_cpu(runs: list[dict]) -> float | None:
    """Mean CPU seconds per run; None when a run was recorded before CPU seconds were (older records)."""
    values = [r.get("cpu_seconds") for r in runs]
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if len(known) == len(values) else None


def _plot(summary: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["variants"]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(rows)), 4.5))
    xs = range(len(rows))
    ax.bar(xs, [100 * r["mean"] for r in rows], yerr=[100 * r["std"] for r in rows], capsize=5, color="#9ecae1")
    for x, r in zip(xs, rows):
        accs = [100 * a for a in r["test_acc"]]
        ax.plot([x] * len(accs), accs, "k.", alpha=0.7)
    # labels wrapped at their parenthesis (or a space), so neighbouring ones never run into each other
    ax.set_xticks(
        list(xs),
        [
            "\n".join(
                textwrap.fill(part, 14, break_long_words=False) for part in r["label"].replace(" (", "\n(").split("\n")
            )
            for r in rows
        ],
        fontsize=9,
    )
    low = min(100 * a for r in rows for a in r["test_acc"])
    ax.set_ylim(max(0.0, low - 5), min(100.0, max(100 * (r["mean"] + r["std"]) for r in rows) + 2))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{summary['model']} g={summary['genes']} on {summary['dataset']}, {summary['seeds']} seeds")
    fig.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _markdown(summary: dict) -> str:
    lines = [
        f"Ablation (Table IV protocol): {summary['model']} g={summary['genes']} T={summary['timesteps']} on "
        f"{summary['dataset']}, {summary['seeds']} seeds, {summary['epochs']} epochs; "
        f"{summary['minutes']:.1f} minutes of runs in all ({summary['minutes_this_invocation']:.1f} in the "
        "invocation that wrote this; finished runs are reused, not re-timed).",
        "",
        f"| Model | Test accuracy (%) | Per seed (%) | vs {summary['reference']} (points, paired p) | "
        "Firing rate | Minutes per run (evolution) | CPU s per run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["variants"]:
        per_seed = ", ".join(f"{100 * a:.2f}" for a in r["test_acc"])
        paired = "—" if r["paired_p"] is None else f"{100 * r['paired_diff']:+.2f} (p = {r['paired_p']:.3g})"
        cpu = "—" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.0f}"
        lines.append(
            f"| {r['label']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {per_seed} | {paired} | "
            f"{r['firing_rate']:.4f} | {r['minutes']:.1f} ({r['evolution_minutes']:.1f}) | {cpu} |"
        )
    lines += [
        "",
        f"Paired: per-seed difference from {summary['reference']} (same seed: same data order, noise and "
        f"initialisation), mean in points; p is the exact two-sided sign-flip permutation test "
        f"(smallest possible with {summary['seeds']} seeds: {2 / 2 ** summary['seeds']:.3g}). CPU s: user + "
        "system seconds of evolution and training, all processes.",
    ]
    return "\n".join(lines) + "\n"


def _variant_key(name: str) -> str:
    """A variant's key, also from its fitness mode's name (``loss+r1-scaled`` is ``r1-scaled``, ``loss`` is
    ``baseline``), the names ``evolution.fitness`` and ``benchmarks/evolution_speed.py --modes`` use.

    Raises:
        ConfigError: neither a variant nor a fitness mode.
    """
    if name in VARIANTS:
        return name
    by_fitness = {overrides["fitness"].value: key for key, (_, overrides) in VARIANTS.items() if "fitness" in overrides}
    if name in by_fitness:
        return by_fitness[name]
    raise ConfigError(
        f"unknown ablation variant {name!r}; known: {', '.join(VARIANTS)} (or a fitness mode: {', '.join(by_fitness)})"
    )


def run_ablation(
    recipe, seeds: int, out: str | os.PathLike, variants: list[str] | None = None, progress: bool | None = None
) -> dict:
    """Run every variant x seed of ``recipe`` into ``out``; write ablation.json/.md/.png; return the summary."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if recipe.train.epochs < 1:
        raise ConfigError(f"an ablation compares trained models: train.epochs must be >= 1, got {recipe.train.epochs}")
    variants = list(DEFAULT_VARIANTS) if not variants else list(dict.fromkeys(_variant_key(v) for v in variants))
    # every run's recipe is built (so checked: a seed past train.seed's range fails) before the first run
    plans = {key: [_variant_recipe(recipe, VARIANTS[key][1], i) for i in range(seeds)] for key in variants}
    evolving = [runs[0] for runs in plans.values() if runs[0].evolution.enabled]
    if evolving:  # their data check, before the Random runs are trained
        check_evolution_data(evolving[0])
    out = Path(out)
    for key, runs in plans.items():  # every run already under way may continue with this recipe: before any work
        for i, plan in enumerate(runs):
            check_run(out / key / f"seed{i}", plan.to_dict())
    started = time.perf_counter()
    rows: list[_VariantRow] = []
    total = len(variants) * seeds
    for k, key in enumerate(variants):
        label = VARIANTS[key][0]
        runs = [
            _run(
                plan,
                out / key / f"seed{i}",
                progress,
                f"{label}, seed {plan.train.seed} (run {k * seeds + i + 1}/{total})",
            )
            for i, plan in enumerate(plans[key])
        ]
        accs = [r["test_acc"] for r in runs]
        rows.append(
            {
                "variant": key,
                "label": label,
                "test_acc": accs,
                "mean": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "firing_rate": statistics.fmean(r["firing_rate"] for r in runs),
                "minutes": statistics.fmean(r["minutes"] for r in runs),
                "evolution_minutes": statistics.fmean(r["evolution_minutes"] for r in runs),
                "cpu_seconds": _mean_cpu(runs),
                "runs": runs,
            }
        )
    reference = rows[0]["test_acc"]
    for row in rows:  # paired by seed against the first variant
        diffs = [a - b for a, b in zip(row["test_acc"], reference)]
        first = row is rows[0]
        row["paired_diff"] = None if first else statistics.fmean(diffs)
        row["paired_p"] = None if first else sign_flip_p(diffs)
    summary = {
        "reference": rows[0]["label"],
        "model": recipe.model.name,
        "genes": recipe.model.genes,
        "timesteps": recipe.model.timesteps,
        "dataset": recipe.data.name,
        "epochs": recipe.train.epochs,
        "seeds": seeds,
        "minutes": sum(r["minutes"] for row in rows for r in row["runs"]),
        "minutes_this_invocation": (time.perf_counter() - started) / 60,
        "recipe": recipe.to_dict(),
        "variants": rows,
    }
    write_json(out / "ablation.json", summary)
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text(_markdown(summary))
    _plot(summary, out / "ablation.png")
    return summary
