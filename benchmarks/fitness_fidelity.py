"""Fitness fidelity: does a fitness mode rank genotypes the way real training does? (docs/design.md, "Fitness scaling")

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fitness_fidelity.py [--recipe ablation_fmnist]
        [--genotypes 16] [--sigma 0.5] [--eval-steps 8 32] [--train-limit N] [--test-limit N] [--epochs N]
        [--cache runs/fitness_fidelity.json] [--set key=value ...]

Draws ``--genotypes`` genotypes x = m + sigma z around CMA-ES's initial mean m (the recipe's betas and the
G0 evolution starts from), z ~ N(0, I). For each genotype and each ``--eval-steps`` value it computes the raw
fitness terms exactly as evolution's first generation does (:func:`gee_deploy.training.fitness.evaluate_candidate`:
the same short training, held-out batches, encoding noise and batch order), then builds the phenotype as the
trainer does after evolution (torch seeded with ``train.seed``, the phenotype applied) and trains it with the
recipe's budget (``train.epochs`` over ``data.train_limit`` images, the trainer's optimiser, schedule and
shuffling), and measures the test accuracy.

It prints, for every fitness mode (:data:`~gee_deploy.training.fitness.FITNESS_MODES`, each at generation 0's
weights, the ``-scaled`` ones standardised across the drawn genotypes as one generation) and every eval_steps,
the Spearman rank correlation rho between **-fitness** (fitness is minimised, so rho > 0 means the fitness
ranks genotypes like trained accuracy does) and the trained test accuracy, with a percentile bootstrap
interval over the genotypes; also rho of each raw term, and the CPU seconds one candidate's scoring costs.

Eq. 16's weights are those of generation 0 (exp(0) = 1), as in the first generation.

Resumable: every genotype's terms and trained accuracy go into the ``--cache`` JSON as soon as they exist
(written atomically); re-running the same command skips them. The cache records the settings and refuses
to mix runs with different ones. The last line is one JSON object with every number printed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gee_deploy.data import load_split, make_loader
from gee_deploy.errors import ConfigError, GeeError
from gee_deploy.io import write_json
from gee_deploy.recipe import load_recipe
from gee_deploy.training.fitness import (FITNESS_MODES, TERMS, EvalData, candidate_seed, evaluate_candidate,
                                         fitness_of, generation_seeds, term_scales)
from gee_deploy.training.genotype import apply_phenotype, genome_of, genotype_dimension, initial_genotype
from gee_deploy.training.setup import build_optimizer, build_recipe_model, train_step
from gee_deploy.training.trainer import cosine_schedule, evaluate

CACHE_FORMAT = "gee-deploy-fitness-fidelity/1"


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of ``values`` [n], ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values), dtype=np.float64)
    ranked[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two equal-length vectors (Pearson of their ranks); nan when either is constant."""
    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else math.nan


def bootstrap_interval(a: np.ndarray, b: np.ndarray, resamples: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of spearman(a, b), resampling the pairs with replacement."""
    rng = np.random.default_rng(seed)
    n = len(a)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        rho = spearman(a[pick], b[pick])
        if not math.isnan(rho):
            values.append(rho)
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def draw_genotypes(recipe, count: int, sigma: float) -> list[np.ndarray]:
    """``count`` genotypes m + sigma z around CMA-ES's initial mean m, from a generator seeded by train.seed."""
    torch.manual_seed(recipe.train.seed)
    genes = genome_of(build_recipe_model(recipe)).genes
    mean = initial_genotype(genes, recipe.evolution.beta1, recipe.evolution.beta2, recipe.train.seed)
    rng = np.random.default_rng(np.random.SeedSequence([recipe.train.seed, 7]))
    return [mean + sigma * rng.standard_normal(genotype_dimension(genes)) for _ in range(count)]


def train_phenotype(recipe, x: np.ndarray, noise_seed: int, train_set, test_loader) -> dict:
    """Train genotype ``x``'s phenotype as the trainer trains evolution's winner; returns test metrics."""
    settings, data = recipe.train, recipe.data
    torch.manual_seed(settings.seed)
    model = build_recipe_model(recipe)
    apply_phenotype(model, x, noise_seed)
    optimizer = build_optimizer(recipe, model)
    steps_per_epoch = max(1, len(train_set) // data.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(
        steps_per_epoch * max(settings.epochs, 1), int(settings.warmup_epochs * steps_per_epoch)))
    for epoch in range(settings.epochs):
        epoch_seed = settings.seed * 1000 + epoch
        torch.manual_seed(epoch_seed)
        model.train()
        for images, labels in make_loader(train_set, data.batch_size, True, seed=epoch_seed, drop_last=True):
            train_step(model, optimizer, images, labels, label_smoothing=settings.label_smoothing,
                       grad_clip=settings.grad_clip)
            scheduler.step()
    return evaluate(model, test_loader, torch.device("cpu"))


def _load_cache(path: Path, settings: dict) -> dict:
    if not path.exists():
        return {"format": CACHE_FORMAT, "settings": settings, "genotypes": {}}
    try:
        cache = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not a readable fidelity cache (corrupt?); delete it to start over") from None
    if not isinstance(cache, dict) or cache.get("format") != CACHE_FORMAT or cache.get("settings") != settings:
        raise ConfigError(f"{path} holds a fidelity run with other settings; pass another --cache or delete it")
    return cache


def report(cache: dict, eval_steps: list[int], resamples: int) -> dict:
    """Spearman rho (and bootstrap interval) of -fitness per mode and eval_steps, and of each raw term."""
    entries = [cache["genotypes"][k] for k in sorted(cache["genotypes"], key=int)
               if "test_acc" in cache["genotypes"][k]]
    acc = np.array([e["test_acc"] for e in entries])
    out = {"genotypes": len(entries), "test_acc_min": float(acc.min()), "test_acc_max": float(acc.max()),
           "test_acc_mean": float(acc.mean()), "train_cpu_s_mean": float(np.mean([e["train_cpu_s"] for e in entries])),
           "by_eval_steps": {}}
    for steps in eval_steps:
        terms = [e["terms"][str(steps)] for e in entries]
        scales = term_scales(terms)
        row = {"score_cpu_s_mean": float(np.mean([t["cpu_s"] for t in terms])), "modes": {}, "terms": {}}
        for term in TERMS:
            values = np.array([math.nan if t[term] is None else t[term] for t in terms])
            row["terms"][term] = {"min": float(np.nanmin(values)), "max": float(np.nanmax(values)),
                                  "rho_with_acc": spearman(values, acc)}
        for mode in FITNESS_MODES:
            fitness = np.array([fitness_of(mode, t, 0, -0.5, -0.5, scales) for t in terms])
            low, high = bootstrap_interval(-fitness, acc, resamples, seed=steps)
            row["modes"][mode] = {"rho": spearman(-fitness, acc), "low": low, "high": high}
        out["by_eval_steps"][str(steps)] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="ablation_fmnist")
    p.add_argument("--genotypes", type=int, default=16)
    p.add_argument("--sigma", type=float, default=0.5, help="spread of the draws around the initial mean")
    p.add_argument("--eval-steps", type=int, nargs="+", default=None,
                   help="candidate training lengths to score with (default: the recipe's evolution.eval_steps)")
    p.add_argument("--train-limit", type=int, default=None, help="data.train_limit (default: the recipe's)")
    p.add_argument("--test-limit", type=int, default=None, help="data.test_limit (default: the recipe's)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the recipe's)")
    p.add_argument("--cache", default="runs/fitness_fidelity.json")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    try:
        run(args)
    except GeeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args) -> None:
    if args.genotypes < 3 or not args.sigma > 0:
        raise ConfigError("--genotypes must be >= 3 and --sigma > 0")
    overrides = list(args.overrides)
    for key, value in (("data.train_limit", args.train_limit), ("data.test_limit", args.test_limit),
                       ("train.epochs", args.epochs)):
        if value is not None:
            overrides.append(f"{key}={value}")
    recipe = load_recipe(args.recipe, overrides)
    if recipe.train.epochs < 1:
        raise ConfigError("train.epochs must be >= 1: fidelity compares fitness with trained accuracy")
    eval_steps = args.eval_steps or [recipe.evolution.eval_steps]
    if min(eval_steps) < 0:
        raise ConfigError("--eval-steps must be >= 0")
    torch.set_num_threads(args.threads)
    cache_path = Path(args.cache)
    settings = json.loads(json.dumps({"recipe": recipe.to_dict(), "genotypes": args.genotypes, "sigma": args.sigma}))
    cache = _load_cache(cache_path, settings)

    data = recipe.data
    eval_data = EvalData(load_split(data.name, "train", data.data_dir or None, augment=False,
                                    limit=data.train_limit or None), data.batch_size, recipe.evolution.eval_batches)
    train_set = load_split(data.name, "train", data.data_dir or None, augment=data.augment,
                           limit=data.train_limit or None)
    test_loader = make_loader(load_split(data.name, "test", data.data_dir or None, limit=data.test_limit or None),
                              data.batch_size, False)
    seed = recipe.train.seed
    noise_seed, order_seed = generation_seeds(seed, 0)  # evolution's first generation
    genotypes = draw_genotypes(recipe, args.genotypes, args.sigma)
    print(f"fitness fidelity: {args.genotypes} genotypes, sigma {args.sigma}, eval_steps {eval_steps}, "
          f"training {recipe.train.epochs} epoch(s) on {len(train_set)} images, testing on "
          f"{len(test_loader.dataset)}; cache {cache_path}", flush=True)
    started = time.perf_counter()
    fresh = 0
    for k, x in enumerate(genotypes):
        entry = cache["genotypes"].setdefault(str(k), {"beta1": math.exp(x[0]), "beta2": math.exp(x[1]), "terms": {}})
        for steps in eval_steps:
            if all(k in entry["terms"].get(str(steps), {}) for k in TERMS):
                continue  # scored (a cache from before a term existed is scored again)
            scoring = load_recipe(args.recipe, [*overrides, f"evolution.eval_steps={steps}"])
            cpu = time.process_time()
            terms = evaluate_candidate(scoring, x, noise_seed, order_seed, candidate_seed(seed, 0, k), eval_data,
                                       torch.device("cpu"))
            entry["terms"][str(steps)] = {**terms, "cpu_s": time.process_time() - cpu}
            write_json(cache_path, cache)
        if "test_acc" not in entry:
            cpu = time.process_time()
            metrics = train_phenotype(recipe, x, noise_seed, train_set, test_loader)
            entry.update(test_acc=metrics["test_acc"], firing_rate=metrics["firing_rate"],
                         train_cpu_s=time.process_time() - cpu)
            write_json(cache_path, cache)
            fresh += 1
        elapsed = time.perf_counter() - started
        left = (args.genotypes - k - 1) * elapsed / fresh if fresh else 0.0
        terms = entry["terms"][str(eval_steps[0])]
        print(f"genotype {k + 1}/{args.genotypes}: beta1 {entry['beta1']:.3f} beta2 {entry['beta2']:.3f} "
              f"L {terms['loss']:.4f} r1 {terms['r1']:.3f} r2 {terms['r2']:.4f} (eval_steps {eval_steps[0]}) "
              f"-> test acc {100 * entry['test_acc']:.2f} % ({elapsed:.0f} s, about {left:.0f} s left)", flush=True)

    result = report(cache, eval_steps, args.bootstrap)
    print(f"\ntrained test accuracy {100 * result['test_acc_min']:.2f}-{100 * result['test_acc_max']:.2f} % over "
          f"{result['genotypes']} genotypes; training {result['train_cpu_s_mean']:.1f} CPU s each")
    print("Spearman rho(-fitness, trained accuracy) [95% bootstrap interval]; > 0: the fitness ranks like training")
    for steps, row in result["by_eval_steps"].items():
        print(f"\neval_steps {steps}: scoring {row['score_cpu_s_mean']:.2f} CPU s per candidate")
        for mode, r in row["modes"].items():
            print(f"  {mode:16s} {r['rho']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]")
        for term, r in row["terms"].items():
            print(f"  raw {term:12s} range {r['min']:.4f}-{r['max']:.4f}, rho(term, accuracy) {r['rho_with_acc']:+.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
