"""Plots of one evolution run (from its evolution.jsonl): fitness per generation and the betas (paper Fig. 4)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..io import atomic_path, read_jsonl

__all__ = ["plot_evolution"]


def _fitness_mode(run_dir: Path) -> str:
    """The run's evolution.fitness from its config.json ("" when there is none, e.g. evolution run alone)."""
    try:
        return str(json.loads((run_dir / "config.json").read_text())["evolution"]["fitness"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def plot_evolution(run_dir: str | os.PathLike, target: str | os.PathLike | None = None) -> Path | None:
    """Write ``run_dir``/evolution.png: best / median fitness and the best's held-out loss per generation, and
    every candidate's (beta1, beta2) coloured by generation with the CMA-ES mean's path (the paper's Fig. 4).
    None if no log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "evolution.jsonl")
    if not rows:
        return None
    target = Path(target) if target is not None else run_dir / "evolution.png"
    gens = [r["generation"] for r in rows]
    fig, (ax_f, ax_b) = plt.subplots(1, 2, figsize=(10, 4))
    ax_f.plot(gens, [r["best_fitness"] for r in rows], "o-", label="best so far")
    ax_f.plot(gens, [r["median_fitness"] for r in rows], "s--", label="generation median")
    ax_f.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_f.set_xlabel("generation")
    mode = _fitness_mode(run_dir)
    ax_f.set_ylabel(
        "fitness (eq. 16, standardised terms; lower is better)"
        if mode.endswith("-scaled")
        else "fitness (eq. 16, lower is better)"
    )
    handles, labels = ax_f.get_legend_handles_labels()
    if mode != "loss":  # the best's raw held-out loss: comparable across generations in every mode
        ax_loss = ax_f.twinx()
        best_loss = [math.nan if r["best"]["loss"] is None else r["best"]["loss"] for r in rows]
        ax_loss.plot(gens, best_loss, "^:", color="tab:red", label="best's held-out loss L")
        ax_loss.set_ylabel("held-out loss L (nats)", color="tab:red")
        extra_h, extra_l = ax_loss.get_legend_handles_labels()
        handles, labels = handles + extra_h, labels + extra_l
    ax_f.legend(handles, labels)
    ax_f.set_title(f"fitness ({mode or 'eq. 16'})")
    b1 = [c["beta1"] for r in rows for c in r["candidates"]]
    b2 = [c["beta2"] for r in rows for c in r["candidates"]]
    colour = [r["generation"] for r in rows for _ in r["candidates"]]
    points = ax_b.scatter(b1, b2, c=colour, cmap="viridis_r", s=18, alpha=0.8)
    ax_b.plot([r["beta1"] for r in rows], [r["beta2"] for r in rows], "k.-", label="CMA-ES mean")
    fig.colorbar(points, ax=ax_b, label="generation")
    ax_b.set_xlabel("beta1 (std of the encodings)")
    ax_b.set_ylabel("beta2 (clip bound)")
    ax_b.legend()
    ax_b.set_title("candidates' betas")
    fig.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return target
