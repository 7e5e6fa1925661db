"""The paper's IV-D comparison at a CPU scale: wall time for each fitness mode's evolution to reach the same best
held-out loss.

    python benchmarks/evolution_speed.py                      # ablation recipe: loss, ste-scaled, ste; 12 gens, 3 seeds
    python benchmarks/evolution_speed.py --generations 6 --seeds 3 --set evolution.eval_steps=32 --json runs/evo.json

Each mode evolves from the same seeds (the same initial mean, the same CMA-ES draws in generation 0, the same
data order) with the recipe's scoring settings; every generation logs its wall seconds and every candidate's
held-out cross-entropy L (evolution.jsonl). Whatever the fitness ranks by, L is what training then minimises, so
the common yardstick is the best L seen so far (the default wiring's included). The target is the highest
final best L over the modes (a level every mode reaches), per seed; the table gives the mean wall seconds and
generations each mode needed to reach it, and its final best L. The paper reports STE reaching its loss in
less time than loss-only evolution (Section IV-D).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from gee_deploy.errors import GeeError
from gee_deploy.io import read_jsonl
from gee_deploy.recipe import load_recipe
from gee_deploy.training.evolution import LOG_FILE, run_evolution
from gee_deploy.training.fitness import FITNESS_MODES
from gee_deploy.training.setup import build_recipe_model

from _timing import write_json


def best_loss_curve(log: list[dict]) -> list[tuple[float, float]]:
    """(cumulative wall seconds, best held-out L so far) after each generation of an evolution.jsonl."""
    curve, seconds, best = [], 0.0, float("inf")
    for row in log:
        seconds += row["seconds"]
        best = min([best, row["best"]["loss"], *(c["loss"] for c in row["candidates"])])
        curve.append((seconds, best))
    return curve


def time_to(curve: list[tuple[float, float]], target: float) -> tuple[float, int]:
    """Wall seconds and generations until the best L first reaches ``target`` (the curve must reach it)."""
    for generation, (seconds, best) in enumerate(curve, 1):
        if best <= target:
            return seconds, generation
    raise ValueError(f"the curve never reaches {target}")


def evolve(recipe_path: str | None, overrides: list[str], mode: str, seed: int, generations: int,
           work: Path) -> list[tuple[float, float]]:
    recipe = load_recipe(recipe_path, [*overrides, f"evolution.fitness=\"{mode}\"", "evolution.enabled=true",
                                       f"evolution.generations={generations}", f"train.seed={seed}"])
    torch.manual_seed(recipe.train.seed)
    model = build_recipe_model(recipe)
    out = work / f"{mode}-{seed}"
    run_evolution(recipe, out, model, torch.device("cpu"), progress=False)
    return best_loss_curve(read_jsonl(out / LOG_FILE))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="ablation_fmnist")
    p.add_argument("--modes", nargs="+", default=["loss", "ste-scaled", "ste"], choices=FITNESS_MODES)
    p.add_argument("--generations", type=positive, default=12)
    p.add_argument("--seeds", type=positive, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the per-seed curves here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    curves: dict[str, list] = {m: [] for m in args.modes}
    try:
        with tempfile.TemporaryDirectory() as work:
            evolve(args.recipe, args.overrides, args.modes[0], 0, 1, Path(work) / "warm-up")  # loads data, warms caches
            for seed in range(args.seeds):
                for mode in args.modes:
                    curves[mode].append(evolve(args.recipe, args.overrides, mode, seed, args.generations, Path(work)))
                    seconds, best = curves[mode][-1][-1]
                    print(f"seed {seed} {mode}: best L {best:.4f} after {seconds:.1f} s", file=sys.stderr)
    except GeeError as e:
        sys.exit(f"error: {e}")
    targets = [max(curves[m][s][-1][1] for m in args.modes) for s in range(args.seeds)]
    print(f"\n{args.generations} generation(s), {args.seeds} seed(s), recipe {args.recipe} {' '.join(args.overrides)}; "
          "target per seed = the highest final best L over the modes\n")
    print("| fitness | final best L (mean) | s per generation | s to target (mean) | generations to target (mean) |")
    print("|---|---:|---:|---:|---:|")
    for m in args.modes:
        reached = [time_to(c, t) for c, t in zip(curves[m], targets)]
        per_gen = statistics.fmean(c[-1][0] / len(c) for c in curves[m])
        print(f"| {m} | {statistics.fmean(c[-1][1] for c in curves[m]):.4f} | {per_gen:.2f} | "
              f"{statistics.fmean(r[0] for r in reached):.1f} | {statistics.fmean(r[1] for r in reached):.1f} |")
    if args.json:
        write_json(args.json, {"args": vars(args), "targets": targets, "curves": curves})


if __name__ == "__main__":
    main()
