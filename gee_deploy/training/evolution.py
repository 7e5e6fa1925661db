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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import load_split
from ..errors import ConfigError
from ..io import append_jsonl, format_version, read_jsonl, write_json, write_jsonl
from ..recipe import recipe_from_dict
from .fitness import TERMS, EvalData, candidate_seed, evaluate_candidate, fitness_of, generation_seeds, term_scales
from .genotype import apply_phenotype, genome_of, genotype_dimension, initial_genotype
from .resume import check_resume
from .setup import build_recipe_model

__all__ = ["run_evolution", "Candidate", "LOG_FILE", "STATE_FILE"]

LOG_FILE = "evolution.jsonl"
STATE_FILE = "evolution_state.json"
_STATE_PREFIX = "gee-deploy-evolution/"
STATE_VERSION = 1  # the layout :func:`_read_state` describes
STATE_FORMAT = f"{_STATE_PREFIX}{STATE_VERSION}"
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
    opts = {
        "randn": SeededNormal(seed),
        "seed": float("nan"),
        "verbose": -9,
        "verb_log": 0,
        "verb_disp": 0,
        "CMA_diagonal": dim > ev.diagonal_above,
    }
    if ev.population:
        opts["popsize"] = ev.population
    return cma.CMAEvolutionStrategy(initial_genotype(genes, ev.beta1, ev.beta2, seed), ev.sigma0, opts)


# train keys the candidates' short training does not read (everything else must match on resume)
_NOT_IN_EVOLUTION = {
    "epochs",
    "warmup_epochs",
    "label_smoothing",
    "grad_clip",
    "device",
    "amp",
    "channels_last",
    "compile",
    "threads",
}


def _settings(recipe, dimension: int, popsize: int) -> dict:
    """Everything a generation's results depend on; a resume must match it (generations and workers may change)."""
    ev = {k: v for k, v in recipe.to_dict()["evolution"].items() if k not in ("enabled", "generations", "workers")}
    data = recipe.data
    settings = {
        "dimension": dimension,
        "popsize": popsize,
        "evolution": ev,
        "model": recipe.to_dict()["model"],
        "data": {"name": data.name, "train_limit": data.train_limit, "batch_size": data.batch_size},
        "train": {k: v for k, v in recipe.to_dict()["train"].items() if k not in _NOT_IN_EVOLUTION},
    }
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


# ---- candidates ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One evaluated genotype of a generation, or the default wiring.

    Attributes:
        x: the genotype [log beta1, log beta2, G...] (:mod:`.genotype`); None for the default wiring.
        generation, index: the generation that sampled it and its place among the samples
            (:data:`DEFAULT_INDEX` for the default wiring).
        terms: its raw fitness terms {loss, r1, r2, r1_rel} (:func:`.fitness.evaluate_candidate`; None where
            not finite).
        fitness: what CMA-ES was told (eq. 16 with its generation's weights and scales); None for the default
            wiring, which is never told.
    """

    x: np.ndarray | None
    generation: int
    index: int
    terms: dict[str, float | None]
    fitness: float | None = None

    def summary(self) -> dict:
        """generation, index and the terms, as logs and the run summary name it."""
        return {"generation": self.generation, "index": self.index, **{k: self.terms[k] for k in TERMS}}


@dataclass(frozen=True)
class _Task:
    """One evaluation: the candidate's slot in the generation's results, its genotype (None: the default wiring)
    and its seeds (:func:`.fitness.generation_seeds`, :func:`.fitness.candidate_seed`). Picklable."""

    slot: int
    x: np.ndarray | None
    noise_seed: int
    order_seed: int
    seed: int

    def run(self, recipe, data: EvalData, device: torch.device) -> dict:
        return evaluate_candidate(recipe, self.x, self.noise_seed, self.order_seed, self.seed, data, device)


def _tasks(seed: int, generation: int, xs: list[np.ndarray], with_default: bool) -> list[_Task]:
    """A generation's evaluations: its samples and, with ``with_default``, last, the default wiring (the Random
    model, seeded like the trainer's model, no phenotype)."""
    noise_seed, order_seed = generation_seeds(seed, generation)
    tasks = [_Task(i, x, noise_seed, order_seed, candidate_seed(seed, generation, i)) for i, x in enumerate(xs)]
    if with_default:
        tasks.append(_Task(len(xs), None, noise_seed, order_seed, seed))
    return tasks


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


def _work(task: _Task) -> tuple[int, dict]:
    return task.slot, task.run(_WORKER["recipe"], _WORKER["data"], _WORKER["device"])


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

    def evaluate(self, tasks: list[_Task], on_result) -> list[dict]:
        """The raw terms of each task, in slot order; ``on_result(slot, terms)`` as each finishes here."""
        results: list[dict | None] = [None] * len(tasks)
        if self.pool is not None:
            for i, terms in self.pool.imap_unordered(_work, tasks):
                results[i] = terms
                on_result(i, terms)
            return _filled(results)
        assert self.data is not None  # loaded wherever there is no pool
        world, rank = (self.dist.world, self.dist.rank) if self.dist is not None else (1, 0)
        with _threads(self.threads):
            for task in tasks[rank::world]:
                results[task.slot] = task.run(self.recipe, self.data, self.device)
                on_result(task.slot, results[task.slot])
        if self.dist is not None:  # each entry is filled by exactly one rank; the others add 0
            flat: list[float] = []
            for r in results:
                flat += [0.0] * len(TERMS) if r is None else [math.nan if r[k] is None else r[k] for k in TERMS]
            summed = self.dist.all_reduce_sum(*flat)
            n = len(TERMS)
            return [
                {k: None if math.isnan(v) else v for k, v in zip(TERMS, summed[n * i : n * i + n])}
                for i in range(len(tasks))
            ]
        return _filled(results)

    def close(self, wait: bool = True) -> None:
        """Stop the workers: let them finish (normal end) or kill them (an error or Ctrl-C in the loop)."""
        if self.pool is not None:
            if wait:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            self.pool = None


def _filled(results: list[dict | None]) -> list[dict]:
    """``results`` once every slot holds its terms (each task is run by one worker, or here)."""
    filled = [terms for terms in results if terms is not None]
    assert len(filled) == len(results), "a candidate was not evaluated"
    return filled


# ---- history and the best genotype ---------------------------------------------------------------------


@dataclass
class _History:
    """Every candidate evaluated so far, generation by generation, and the default wiring once scored."""

    generations: list[list[Candidate]] = field(default_factory=list)
    default: Candidate | None = None

    def record(self, xs: list[np.ndarray], terms: list[dict], fitness: list[float]) -> list[Candidate]:
        """Add the next generation's candidates; returns them."""
        generation = len(self.generations)
        self.generations.append(
            [Candidate(x, generation, i, t, f) for i, (x, t, f) in enumerate(zip(xs, terms, fitness))]
        )
        return self.generations[-1]

    def best(self, generation: int, ev) -> tuple[Candidate, float]:
        """(candidate, fitness): the lowest fitness under generation ``generation``'s weights and term scales
        (ties: the default wiring, then the earliest)."""
        best, best_fitness = None, math.inf
        scales = term_scales([c.terms for c in self.generations[generation]])
        for candidates in ([[self.default]] if self.default is not None else []) + self.generations:
            for candidate in candidates:
                fitness = fitness_of(ev.fitness, candidate.terms, generation, ev.lambda1, ev.lambda2, scales)
                if fitness < best_fitness:
                    best, best_fitness = candidate, fitness
        assert best is not None  # every fitness is finite (FAILED_FITNESS at worst)
        return best, best_fitness


# ---- state ----------------------------------------------------------------------------------------------


def _save_state(path: Path, settings: dict, history: _History, es) -> None:
    import cma

    default = history.default
    state = {
        "format": STATE_FORMAT,
        "cma_version": cma.__version__,
        "settings": settings,
        "generations_done": len(history.generations),
        "terms": [[[c.terms[k] for k in TERMS] for c in gen] for gen in history.generations],
        "fitness": [[c.fitness for c in gen] for gen in history.generations],
        "mean": np.asarray(es.mean, dtype=float).tolist(),
        "sigma": float(es.sigma),
        "default": None
        if default is None
        else {"generation": default.generation, **{k: default.terms[k] for k in TERMS}},
    }
    write_json(path, state)


_STATE_KEYS = ("settings", "terms", "fitness", "mean", "default")


def _read_state(path: Path) -> dict | None:
    """The evolution state in ``path`` in this version's layout (None when there is none): the one reader of
    the state file.

    Format 1 is the only layout: every generation's raw terms [loss, r1, r2, r1_rel] and fitness, the CMA-ES
    mean and the default wiring's entry (generation and terms).

    Raises:
        ConfigError: unreadable, another kind of file, a newer format, or a layout this version does not read.
    """
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(
            f"{path} is not a readable evolution state (corrupt?); delete it to restart evolution"
        ) from None
    version = format_version(state.get("format") if isinstance(state, dict) else None, _STATE_PREFIX)
    if version is None:
        raise ConfigError(f"{path} is not a {STATE_FORMAT} evolution state")
    if version > STATE_VERSION:
        raise ConfigError(
            f"{path} has evolution state format {version}, written by a newer gee-deploy; this "
            f"version reads format {STATE_VERSION}: resume it with that version or delete it to "
            "restart evolution"
        )
    missing = [k for k in _STATE_KEYS if k not in state]
    if version < STATE_VERSION or missing or not all(len(t) == len(TERMS) for gen in state["terms"] for t in gen):
        raise ConfigError(
            f"{path} is an evolution state of a development version this one does not read "
            f"({', '.join(missing) or 'its terms'}); delete it to restart evolution"
        )
    return state


def _check_settings(state: dict, settings: dict, path: Path) -> None:
    """The interrupted run's settings against the requested ones, by the one resume rule
    (:func:`~.resume.check_resume`)."""
    check_resume(state["settings"], settings, f"evolution in {path.parent}")


def _replay(es, state: dict, out: Path) -> _History:
    """The history of an interrupted run: ask/tell replayed with the recorded fitness, checked against the
    recorded CMA-ES mean."""
    history = _History()
    for terms, fitness in zip(state["terms"], state["fitness"]):
        xs = es.ask()
        es.tell(xs, fitness)
        history.record(xs, [dict(zip(TERMS, values)) for values in terms], fitness)
    if not np.array_equal(np.asarray(es.mean, dtype=float), np.asarray(state["mean"], dtype=float)):
        raise ConfigError(
            f"cannot resume evolution in {out}: replaying CMA-ES did not reproduce the recorded "
            f"state (was the cma package upgraded?); delete {STATE_FILE} to restart evolution"
        )
    if state["default"] is not None:
        entry = state["default"]
        history.default = Candidate(None, entry["generation"], DEFAULT_INDEX, {k: entry[k] for k in TERMS})
    return history


# ---- the loop -------------------------------------------------------------------------------------------


def _log_row(
    generation: int,
    candidates: list[Candidate],
    default_terms: dict | None,
    history: _History,
    sampling_mean: np.ndarray,
    sigma: float,
    scales: dict,
    seconds: float,
    ev,
) -> dict:
    """The evolution.jsonl row of a finished generation (the module docstring lists its keys)."""
    best, best_fitness = history.best(generation, ev)
    sampled = [_sampled(c) for c in candidates]
    fitness = [f for _, f in sampled]
    row = {
        "generation": generation,
        "best_fitness": best_fitness,
        "median_fitness": statistics.median(fitness),
        "beta1": math.exp(sampling_mean[0]),
        "beta2": math.exp(sampling_mean[1]),
        "sigma": sigma,
        "best": best.summary(),
        "seconds": seconds,
        "scales": {k: list(v) for k, v in scales.items()},
        "candidates": [
            {"index": c.index, "fitness": f, **c.terms, "beta1": math.exp(x[0]), "beta2": math.exp(x[1])}
            for c, (x, f) in zip(candidates, sampled)
        ],
    }
    if default_terms is not None:
        row["default"] = {
            "fitness": fitness_of(ev.fitness, default_terms, generation, ev.lambda1, ev.lambda2, scales),
            **default_terms,
        }
    return row


def _sampled(candidate: Candidate) -> tuple[np.ndarray, float]:
    """(genotype, fitness) of a candidate CMA-ES sampled (only the default wiring has neither)."""
    assert candidate.x is not None and candidate.fitness is not None, "the default wiring was not sampled"
    return candidate.x, candidate.fitness


class _Progress:
    """The bar over one generation's evaluations: best and median loss so far (a -scaled fitness needs the
    whole generation)."""

    def __init__(self, tqdm, total: int, desc: str, show: bool):
        self.bar = tqdm(total=total, desc=desc, leave=False, disable=True if not show else None)
        self.losses: list[float] = []

    def __call__(self, slot: int, terms: dict) -> None:
        self.losses.append(math.inf if terms["loss"] is None else terms["loss"])
        self.bar.update(1)
        self.bar.set_postfix(best_loss=f"{min(self.losses):.4f}", median_loss=f"{statistics.median(self.losses):.4f}")

    def close(self) -> None:
        self.bar.close()


def _generation(es, history: _History, evaluator: _Evaluator, seed: int, ev, tqdm, show: bool) -> dict:
    """Ask CMA-ES for a generation, score it (and, the first time, the default wiring), tell CMA-ES its
    fitness, record it in ``history``; returns its log row."""
    generation = len(history.generations)
    started = time.perf_counter()
    sampling_mean = np.asarray(es.mean, dtype=float)
    xs = es.ask()
    tasks = _tasks(seed, generation, xs, with_default=history.default is None)
    progress = _Progress(tqdm, len(tasks), f"evolution {generation + 1}/{ev.generations}", show)
    results = evaluator.evaluate(tasks, progress)
    progress.close()
    results, default_terms = results[: len(xs)], (results[len(xs)] if len(tasks) > len(xs) else None)
    if default_terms is not None:
        history.default = Candidate(None, generation, DEFAULT_INDEX, default_terms)
    scales = term_scales(results)  # used by the -scaled modes only
    fitness = [fitness_of(ev.fitness, r, generation, ev.lambda1, ev.lambda2, scales) for r in results]
    es.tell(xs, fitness)
    candidates = history.record(xs, results, fitness)
    return _log_row(
        generation,
        candidates,
        default_terms,
        history,
        sampling_mean,
        float(es.sigma),
        scales,
        time.perf_counter() - started,
        ev,
    )


def _become_best(model, best: Candidate, recipe) -> dict:
    """Algorithm 1, line 11: the best genotype's phenotype into ``model``; returns its beta1 and beta2."""
    seed = recipe.train.seed
    if best.x is None:  # the default wiring: the Random model's encodings and G
        torch.manual_seed(seed)
        genome_of(model).load_state_dict(genome_of(build_recipe_model(recipe)).state_dict())
        return {"beta1": None, "beta2": None}
    noise_seed, _ = generation_seeds(seed, best.generation)
    apply_phenotype(model, best.x, noise_seed)
    return {"beta1": math.exp(best.x[0]), "beta2": math.exp(best.x[1])}


def run_evolution(recipe, out, model, device: torch.device, dist=None, progress: bool | None = None) -> dict:
    """Evolve, log to ``out``/evolution.jsonl, and set ``model``'s encodings and G to the best phenotype.

    Resumes from ``out``/evolution_state.json when present. Returns a summary of the best candidate: its
    rescored fitness (``best_fitness``), generation, index, raw terms, beta1 and beta2 (None for the default
    wiring).

    Raises:
        ConfigError: ``model`` has no genome to evolve, or the state file cannot be resumed.
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

    state = _read_state(state_path)
    if state is not None:
        _check_settings(state, settings, state_path)
    history = _History() if state is None else _replay(es, state, out)
    done = len(history.generations)
    if main and log_path.exists():  # drop rows the state does not hold (killed between log and state write)
        write_jsonl(log_path, [r for r in read_jsonl(log_path) if r.get("generation", -1) < done])

    show = progress is not False and main
    evaluator = _Evaluator(recipe, device, dist) if done < ev.generations else None
    finished = False
    try:
        for generation in range(done, ev.generations):
            assert evaluator is not None  # made whenever a generation is left
            row = _generation(es, history, evaluator, seed, ev, tqdm, show)
            if main:
                append_jsonl(log_path, row)
                _save_state(state_path, settings, history, es)
                if show:
                    tqdm.write(
                        f"generation {generation + 1}/{ev.generations}: best {row['best_fitness']:.4f} "
                        f"median {row['median_fitness']:.4f} beta1 {row['beta1']:.3f} "
                        f"beta2 {row['beta2']:.3f} ({row['seconds']:.0f} s)"
                    )
        finished = True
    finally:
        if evaluator is not None:
            evaluator.close(wait=finished)

    best, best_fitness = history.best(ev.generations - 1, ev)
    betas = _become_best(model, best, recipe)
    return {"best_fitness": best_fitness, **best.summary(), **betas}
