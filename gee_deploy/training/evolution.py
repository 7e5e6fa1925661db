"""Evolution of the genotype {beta1, beta2, G} with CMA-ES (paper Algorithm 1, lines 1-11).

Each generation: ask CMA-ES for lambda genotypes, turn each into a phenotype (:mod:`.genotype`, eq. 9),
score it (:mod:`.fitness`, eq. 13-16), tell CMA-ES the fitness. The best candidate initialises training.

CMA-ES is the ``cma`` package (ask/tell). Full covariance up to ``evolution.diagonal_above`` dimensions
(default 2,000: the O(n^2) memory and O(n^3) eigendecompositions of full CMA stay under a second per
generation there), separable CMA (``CMA_diagonal``) above it (g = 150 gives 22,502 dimensions).

The default wiring. Besides CMA-ES's samples, the first generation also scores the Random model itself
(the network the trainer builds without evolution: torch seeded with ``train.seed``, encodings and G as
initialised), with the same short training and batches as the samples. It is not told to CMA-ES (it is no
sample of its distribution), but it competes for the incumbent and wins ties, so evolution returns the
default wiring unless its own fitness ranks something strictly better. It is logged as ``default`` in the
first generation's row, and a ``best`` index of -1 means it.

The best genotype. Eq. 16's regulariser weights fade with the generation t, so raw fitness values of
different generations are not comparable (an early candidate subtracts more regulariser and would always
win). After generation t the incumbent is the candidate, among all evaluated so far, with the lowest
fitness *re-scored with generation t's weights* (and, for the ``-scaled`` modes, with generation t's
standardisation of the terms: :func:`.fitness.term_scales` over its CMA-ES samples); the logged
``best_fitness`` is that value. With ``fitness = loss`` this is simply the lowest loss so far.

Run directory::

    evolution.jsonl        one object per finished generation: generation, best_fitness, median_fitness,
                           beta1 / beta2 / sigma of the CMA-ES mean that sampled it, best (generation,
                           index, loss, r1, r2, r1_rel), seconds, scales {term: [mean, std]} over the
                           generation's samples, candidates [{index, fitness, loss, r1, r2, r1_rel, beta1,
                           beta2}], and in the first generation default {fitness, loss, r1, r2, r1_rel}
    evolution_state.json   what resuming needs, written atomically after every generation

Resume without pickles: the state file holds the settings and every generation's raw fitness terms. CMA-ES
draws its samples from our own seeded generator (option ``randn``), so re-creating the strategy and
replaying ask/tell with the recorded fitness reproduces it exactly, with no code execution from the run
directory; the replayed mean is checked against the recorded one. A run killed at any moment loses at most
the generation in flight.

Parallelism: candidates are independent and every seed depends only on (train.seed, generation, index), so
``workers = N`` spawned processes (one per GPU when there are GPUs, else CPU processes with
``eval_threads`` threads each) give bit-identical results for any N. Under torchrun the ranks split the
population (candidate i on rank i mod world) and sum the results; every rank runs the same CMA-ES.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..data import load_split
from ..errors import ConfigError
from ..io import append_jsonl, read_jsonl, write_json, write_jsonl
from ..recipe import recipe_from_dict
from .fitness import (TERMS, EvalData, candidate_seed, evaluate_candidate, fitness_of,
                      generation_seeds, term_scales)
from .genotype import apply_phenotype, genome_of, genotype_dimension, initial_genotype
from .resume import check_resume
from .setup import build_recipe_model

__all__ = ["run_evolution", "LOG_FILE", "STATE_FILE"]

LOG_FILE = "evolution.jsonl"
STATE_FILE = "evolution_state.json"
STATE_FORMAT = "gee-deploy-evolution/1"
DEFAULT_INDEX = -1  # the index that names the default wiring in logs and summaries


class SeededNormal:
    """cma's ``randn`` option: standard normals from a generator we seed (cma's default is numpy's global
    state, which anything else in the process may consume). Picklable."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


def _new_strategy(ev, genes: int, seed: int):
    import cma

    dim = genotype_dimension(genes)
    opts = {"randn": SeededNormal(seed), "seed": float("nan"), "verbose": -9, "verb_log": 0, "verb_disp": 0,
            "CMA_diagonal": dim > ev.diagonal_above}
    if ev.population:
        opts["popsize"] = ev.population
    return cma.CMAEvolutionStrategy(initial_genotype(genes, ev.beta1, ev.beta2, seed), ev.sigma0, opts)


# train keys the candidates' short training does not read (everything else must match on resume)
_NOT_IN_EVOLUTION = {"epochs", "warmup_epochs", "label_smoothing", "grad_clip", "device", "amp", "channels_last",
                     "compile", "threads"}


def _settings(recipe, dimension: int, popsize: int) -> dict:
    """Everything a generation's results depend on; a resume must match it (generations and workers may change)."""
    ev = {k: v for k, v in recipe.to_dict()["evolution"].items() if k not in ("enabled", "generations", "workers")}
    data = recipe.data
    settings = {"dimension": dimension, "popsize": popsize, "evolution": ev, "model": recipe.to_dict()["model"],
                "data": {"name": data.name, "train_limit": data.train_limit, "batch_size": data.batch_size},
                "train": {k: v for k, v in recipe.to_dict()["train"].items() if k not in _NOT_IN_EVOLUTION}}
    return json.loads(json.dumps(settings))  # as the state file will hold it (tuples become lists)


def _load_eval_data(recipe) -> EvalData:
    data = recipe.data
    train_set = load_split(data.name, "train", data.data_dir or None, augment=False, limit=data.train_limit or None)
    return EvalData(train_set, data.batch_size, recipe.evolution.eval_batches)


@contextmanager
def _threads(count: int | None):
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- worker processes (spawned: safe after CUDA init) ---------------------------------------------------

_WORKER: dict = {}


def _init_worker(recipe_dict: dict, devices, threads: int) -> None:
    """Pool initializer: take a device from the ``devices`` queue, load the evaluation data once."""
    device = torch.device(devices.get())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(threads)
    recipe = recipe_from_dict(recipe_dict)
    _WORKER.update(recipe=recipe, data=_load_eval_data(recipe), device=device)


def _work(task: tuple) -> tuple[int, dict]:
    index, x, noise_seed, order_seed, seed = task
    return index, evaluate_candidate(_WORKER["recipe"], x, noise_seed, order_seed, seed, _WORKER["data"],
                                     _WORKER["device"])


class _Evaluator:
    """Evaluates a generation's candidates in-process, in a spawned pool, or split across torchrun ranks."""

    def __init__(self, recipe, device: torch.device, dist):
        self.recipe = recipe
        self.device = device
        self.dist = dist if dist is not None and dist.world > 1 else None
        self.pool = None
        self.data = None
        ev = recipe.evolution
        self.threads = ev.eval_threads if device.type == "cpu" else None
        if ev.workers > 1 and self.dist is None:
            gpus = torch.cuda.device_count() if device.type == "cuda" else 0
            ctx = torch.multiprocessing.get_context("spawn")
            devices = ctx.Queue()  # one per GPU; more workers than GPUs share them round-robin
            for i in range(ev.workers):
                devices.put(f"cuda:{i % gpus}" if gpus else "cpu")
            self.pool = ctx.Pool(ev.workers, _init_worker, (recipe.to_dict(), devices, ev.eval_threads))
        else:
            self.data = _load_eval_data(recipe)

    def evaluate(self, xs: list[np.ndarray], generation: int, on_result,
                 with_default: bool = False) -> tuple[list[dict], dict | None]:
        """Raw terms of each candidate of ``xs`` and, with ``with_default``, of the default wiring (else None)."""
        seed = self.recipe.train.seed
        noise_seed, order_seed = generation_seeds(seed, generation)
        tasks = [(i, x, noise_seed, order_seed, candidate_seed(seed, generation, i)) for i, x in enumerate(xs)]
        if with_default:  # the Random model: seeded like the trainer's model, no phenotype
            tasks.append((len(xs), None, noise_seed, order_seed, seed))
        results: list[dict | None] = [None] * len(tasks)
        if self.pool is not None:
            for i, terms in self.pool.imap_unordered(_work, tasks):
                results[i] = terms
                on_result(i, terms)
            return self._split(results, len(xs), with_default)
        world, rank = (self.dist.world, self.dist.rank) if self.dist is not None else (1, 0)
        with _threads(self.threads):
            for task in tasks[rank::world]:
                i = task[0]
                results[i] = evaluate_candidate(self.recipe, *task[1:], self.data, self.device)
                on_result(i, results[i])
        if self.dist is not None:  # each entry is filled by exactly one rank; the others add 0
            flat = []
            for r in results:
                flat += [0.0] * len(TERMS) if r is None else [math.nan if r[k] is None else r[k] for k in TERMS]
            summed = self.dist.all_reduce_sum(*flat)
            n = len(TERMS)
            results = [{k: None if math.isnan(v) else v for k, v in zip(TERMS, summed[n * i:n * i + n])}
                       for i in range(len(tasks))]
        return self._split(results, len(xs), with_default)

    @staticmethod
    def _split(results: list[dict], candidates: int, with_default: bool) -> tuple[list[dict], dict | None]:
        return results[:candidates], (results[candidates] if with_default else None)

    def close(self, wait: bool = True) -> None:
        """Stop the workers: let them finish (normal end) or kill them (an error or Ctrl-C in the loop)."""
        if self.pool is not None:
            if wait:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            self.pool = None


# ---- state ----------------------------------------------------------------------------------------------

def _save_state(path: Path, settings: dict, terms: list, fitness: list, es, default: dict | None) -> None:
    import cma

    state = {"format": STATE_FORMAT, "cma_version": cma.__version__, "settings": settings,
             "generations_done": len(fitness), "terms": terms, "fitness": fitness,
             "mean": np.asarray(es.mean, dtype=float).tolist(), "sigma": float(es.sigma),
             "default": None if default is None else {k: default.get(k) for k in ("generation", *TERMS)}}
    write_json(path, state)


def _load_state(path: Path, settings: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not a readable evolution state (corrupt?); "
                          "delete it to restart evolution") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path} is not a {STATE_FORMAT} evolution state")
    check_resume(state["settings"], settings, f"evolution in {path.parent}")
    return state


# ---- the loop -------------------------------------------------------------------------------------------

def _terms(values: list) -> dict:
    """A state's recorded terms as a dict; states written before r1_rel existed hold [loss, r1, r2]."""
    return {k: values[i] if i < len(values) else None for i, k in enumerate(TERMS)}


def _rescored_best(history: list[list[dict]], generation: int, ev, default: dict | None) -> dict:
    """The candidate with the lowest fitness under generation ``generation``'s weights and term scales
    (ties: the default wiring, then the earliest)."""
    best, best_fitness = None, math.inf
    scales = term_scales(history[generation])
    for candidates in ([[default]] if default is not None else []) + history:
        for candidate in candidates:
            fitness = fitness_of(ev.fitness, candidate, generation, ev.lambda1, ev.lambda2, scales)
            if fitness < best_fitness:
                best, best_fitness = candidate, fitness
    return {**best, "rescored_fitness": best_fitness}


def run_evolution(recipe, out, model, device: torch.device, dist=None, progress: bool | None = None) -> dict:
    """Evolve, log to ``out``/evolution.jsonl, and set ``model``'s encodings and G to the best phenotype.

    Resumes from ``out``/evolution_state.json when present. Returns a summary of the best candidate.
    """
    from tqdm.auto import tqdm

    ev = recipe.evolution
    try:
        genes = genome_of(model).genes
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = Path(out)
    main = dist is None or dist.main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    seed = recipe.train.seed
    es = _new_strategy(ev, genes, seed)
    settings = _settings(recipe, genotype_dimension(genes), es.popsize)
    state_path, log_path = out / STATE_FILE, out / LOG_FILE

    # ---- resume: replay ask/tell with the recorded fitness ---------------------------------------------
    history: list[list[dict]] = []  # per generation, per candidate: x, generation, index, TERMS, fitness
    terms_log: list = []
    fitness_log: list = []
    default: dict | None = None  # the default wiring's entry, once scored
    state = _load_state(state_path, settings)
    if state is not None:
        for generation, (terms, fitness) in enumerate(zip(state["terms"], state["fitness"])):
            xs = es.ask()
            es.tell(xs, fitness)
            history.append([{"x": x, "generation": generation, "index": i, **_terms(values), "fitness": value}
                            for i, (x, values, value) in enumerate(zip(xs, terms, fitness))])
        if not np.array_equal(np.asarray(es.mean, dtype=float), np.asarray(state["mean"], dtype=float)):
            raise ConfigError(f"cannot resume evolution in {out}: replaying CMA-ES did not reproduce the recorded "
                              f"state (was the cma package upgraded?); delete {STATE_FILE} to restart evolution")
        terms_log, fitness_log = state["terms"], state["fitness"]
        if state.get("default") is not None:  # states written before the default was scored lack it
            default = {"x": None, "index": DEFAULT_INDEX, **_terms([]), **state["default"]}
    done = len(history)
    if main and log_path.exists():  # drop rows the state does not hold (killed between log and state write)
        write_jsonl(log_path, [r for r in read_jsonl(log_path) if r.get("generation", -1) < done])

    # ---- generations ---------------------------------------------------------------------------------
    show = progress is not False and main
    evaluator = _Evaluator(recipe, device, dist) if done < ev.generations else None
    finished = False
    try:
        for generation in range(done, ev.generations):
            started = time.perf_counter()
            sampling_mean = np.asarray(es.mean, dtype=float)
            xs = es.ask()
            fits: list[float] = []
            with_default = default is None
            bar = tqdm(total=len(xs) + with_default, desc=f"evolution {generation + 1}/{ev.generations}",
                       leave=False, disable=True if not show else None)

            def on_result(i, terms, bar=bar, fits=fits):  # the loss: a -scaled fitness needs the whole generation
                fits.append(math.inf if terms["loss"] is None else terms["loss"])
                bar.update(1)
                bar.set_postfix(best_loss=f"{min(fits):.4f}", median_loss=f"{statistics.median(fits):.4f}")

            results, default_terms = evaluator.evaluate(xs, generation, on_result, with_default)
            bar.close()
            if default_terms is not None:
                default = {"x": None, "generation": generation, "index": DEFAULT_INDEX, **default_terms}
            scales = term_scales(results)  # used by the -scaled modes only
            fitness = [fitness_of(ev.fitness, r, generation, ev.lambda1, ev.lambda2, scales) for r in results]
            es.tell(xs, fitness)
            history.append([{"x": x, "generation": generation, "index": i, **r, "fitness": value}
                            for i, (x, r, value) in enumerate(zip(xs, results, fitness))])
            terms_log.append([[r[k] for k in TERMS] for r in results])
            fitness_log.append(fitness)
            best = _rescored_best(history, generation, ev, default)
            row = {"generation": generation, "best_fitness": best["rescored_fitness"],
                   "median_fitness": statistics.median(fitness),
                   "beta1": math.exp(sampling_mean[0]), "beta2": math.exp(sampling_mean[1]),
                   "sigma": float(es.sigma),
                   "best": {k: best[k] for k in ("generation", "index", *TERMS)},
                   "seconds": time.perf_counter() - started, "scales": {k: list(v) for k, v in scales.items()},
                   "candidates": [{"index": i, "fitness": value, **r,
                                   "beta1": math.exp(x[0]), "beta2": math.exp(x[1])}
                                  for i, (x, r, value) in enumerate(zip(xs, results, fitness))]}
            if default_terms is not None:
                row["default"] = {"fitness": fitness_of(ev.fitness, default_terms, generation, ev.lambda1,
                                                        ev.lambda2, scales), **default_terms}
            if main:
                append_jsonl(log_path, row)
                _save_state(state_path, settings, terms_log, fitness_log, es, default)
                if show:
                    tqdm.write(f"generation {generation + 1}/{ev.generations}: best {row['best_fitness']:.4f} "
                               f"median {row['median_fitness']:.4f} beta1 {row['beta1']:.3f} "
                               f"beta2 {row['beta2']:.3f} ({row['seconds']:.0f} s)")
        finished = True
    finally:
        if evaluator is not None:
            evaluator.close(wait=finished)

    # ---- Algorithm 1, line 11: the best genotype becomes the model ---------------------------------------
    best = _rescored_best(history, ev.generations - 1, ev, default)
    if best["x"] is None:  # the default wiring: the Random model's encodings and G
        torch.manual_seed(seed)
        genome_of(model).load_state_dict(genome_of(build_recipe_model(recipe)).state_dict())
        betas = {"beta1": None, "beta2": None}
    else:
        noise_seed, _ = generation_seeds(seed, best["generation"])
        apply_phenotype(model, best["x"], noise_seed)
        betas = {"beta1": math.exp(best["x"][0]), "beta2": math.exp(best["x"][1])}
    return {"best_fitness": best["rescored_fitness"], "generation": best["generation"], "index": best["index"],
            **{k: best[k] for k in TERMS}, **betas}
