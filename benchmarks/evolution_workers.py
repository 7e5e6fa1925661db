"""Wall time per evolution generation with 1 and N worker processes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evolution_workers.py [--recipe demo]
        [--workers 1 2] [--generations 3] [--population 4]

Runs the same evolution once per worker count (each candidate evaluated with ``eval_threads`` = 1 thread)
and prints a flat dict per run: seconds of the first generation (includes spawning the workers and loading
their data), the median of the later generations (steady state), the whole evolution's wall time, and the
speed-up over the first worker count, and the CPU seconds it used (cores_used = CPU s / wall s: on a
machine shared with other jobs, fewer cores than workers means the workers were waiting for a CPU). It also
checks that every run logged the same fitness values.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _timing import process_cpu_seconds


def bench(recipe_path: str, workers: int, generations: int, population: int, overrides: list[str]) -> dict:
    import torch

    from gee_deploy.io import read_jsonl
    from gee_deploy.recipe import load_recipe
    from gee_deploy.training.evolution import run_evolution
    from gee_deploy.training.setup import build_recipe_model

    recipe = load_recipe(recipe_path, [*overrides, "evolution.enabled=true", f"evolution.workers={workers}",
                                       f"evolution.generations={generations}", f"evolution.population={population}"])
    torch.manual_seed(recipe.train.seed)
    model = build_recipe_model(recipe)
    with tempfile.TemporaryDirectory() as out:
        cpu_before = process_cpu_seconds()
        started = time.perf_counter()
        run_evolution(recipe, out, model, torch.device("cpu"), progress=False)
        total = time.perf_counter() - started
        cpu = process_cpu_seconds() - cpu_before  # workers are reaped when the evolution ends, so they count
        rows = read_jsonl(Path(out) / "evolution.jsonl")
    seconds = [r["seconds"] for r in rows]
    return {"workers": workers, "population": population, "first_generation_s": seconds[0],
            "steady_generation_s": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
            "total_s": total, "cpu_s": cpu, "cores_used": cpu / total, "fitness": [[c["fitness"] for c in r["candidates"]] for r in rows]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="demo")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args()
    results = [bench(args.recipe, w, args.generations, args.population, args.overrides) for w in args.workers]
    base, first = results[0], results[0]["fitness"]
    for r in results:
        r["same_fitness_as_first"] = r.pop("fitness") == first
        r["speedup_steady"] = base["steady_generation_s"] / r["steady_generation_s"]
        r["speedup_total"] = base["total_s"] / r["total_s"]
    for r in results:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
