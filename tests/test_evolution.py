"""Evolution (Algorithm 1): eq. 9 sampling, eq. 13-16 fitness, genotype round trip, resumable CMA-ES,
worker-count invariance, the ablation command, and bad input."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_recipe
from gee_deploy.errors import ConfigError
from gee_deploy.training.evolution import STATE_FILE, run_evolution
from gee_deploy.training.fitness import (FAILED_FITNESS, FITNESS_MODES, combine_fitness, fitness_of, generation_seeds,
                                         relative_temporal_difference, spatial_entropy, temporal_difference,
                                         term_scales)
from gee_deploy.training.genotype import (apply_phenotype, decode_genotype, encode_genotype, genotype_dimension,
                                          sample_encodings)
from gee_deploy.training.setup import build_recipe_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "gee_deploy" / "recipes" / "demo.toml")
CLI = str(Path(sys.executable).with_name("gee-deploy"))


def evo_recipe(**evolution):
    ev = {"enabled": True, "generations": 2, "population": 4, "eval_steps": 2, "eval_batches": 1, **evolution}
    return tiny_recipe(evolution=ev)


def strip_times(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def read_rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "evolution.jsonl").read_text().splitlines()]


# ---- eq. 9 ----------------------------------------------------------------------------------------------

def test_eq9_clips_to_beta2_and_has_std_beta1():
    shapes = {"a": (200, 9, 32), "b": (100, 1, 32)}
    wide = sample_encodings(shapes, beta1=0.7, beta2=100.0, noise_seed=5)
    assert wide["a"].std().item() == pytest.approx(0.7, rel=0.02)  # no clipping at beta2 >> beta1
    assert wide["a"].mean().item() == pytest.approx(0.0, abs=0.01)
    tight = sample_encodings(shapes, beta1=0.7, beta2=0.5, noise_seed=5)
    for name, e in tight.items():
        assert e.abs().max().item() == pytest.approx(0.5)  # clipped exactly to the bound
        assert (e.abs() == 0.5).float().mean().item() > 0.3  # P(|A| > 0.5) = 0.475 for sigma 0.7
        inside = wide[name].abs() < 0.5
        assert torch.equal(e[inside], wide[name][inside])  # untouched where A lies inside the bound


def test_eq9_shares_noise_within_a_seed():
    shapes = {"x": (16, 9, 8), "y": (4, 1, 8)}
    a = sample_encodings(shapes, 1.0, 10.0, noise_seed=3)
    b = sample_encodings(shapes, 2.0, 20.0, noise_seed=3)
    for name in shapes:  # common random numbers: candidates differ only through their betas
        torch.testing.assert_close(b[name], 2.0 * a[name])
    reordered = sample_encodings({"y": (4, 1, 8), "x": (16, 9, 8)}, 1.0, 10.0, noise_seed=3)
    assert all(torch.equal(a[n], reordered[n]) for n in shapes)
    other = sample_encodings(shapes, 1.0, 10.0, noise_seed=4)
    assert not torch.equal(a["x"], other["x"])
    assert generation_seeds(0, 1) != generation_seeds(0, 2) and generation_seeds(0, 1) != generation_seeds(1, 1)


# ---- genotype <-> phenotype -----------------------------------------------------------------------------

def test_genotype_round_trip_and_phenotype_in_place():
    g = torch.randn(8, 8)
    x = encode_genotype(0.4, 1.5, g)
    assert x.shape == (genotype_dimension(8),) == (66,)
    b1, b2, g2 = decode_genotype(x, 8)
    assert (b1, b2) == pytest.approx((0.4, 1.5), rel=1e-12)
    torch.testing.assert_close(g2, g)
    model = build_recipe_model(evo_recipe())
    layer_g = next(m.gene_matrix for m in model.modules() if hasattr(m, "e_in_full"))
    apply_phenotype(model, x, noise_seed=11)
    assert layer_g is model.genome.gene_matrix  # written in place: the layers see the phenotype
    torch.testing.assert_close(model.genome.gene_matrix.data, g)
    shapes = {n: tuple(p.shape) for n, p in model.genome.encodings.items()}
    expected = sample_encodings(shapes, 0.4, 1.5, 11)
    for name, p in model.genome.encodings.items():
        assert torch.equal(p.data, expected[name])
        assert p.abs().max().item() <= 1.5
    with pytest.raises(ValueError):
        decode_genotype(x[:-1], 8)
    with pytest.raises(ValueError):
        encode_genotype(-0.1, 1.0, g)


# ---- eq. 13-16 ------------------------------------------------------------------------------------------

def test_r1_matches_hand_computation():
    y = torch.tensor([[[0.0, 1.0], [2.0, 2.0]],
                      [[1.0, 1.0], [2.0, 0.0]],
                      [[1.0, 3.0], [2.0, 0.0]]])  # [T=3, N=2, classes=2]
    # sample 0: (1-0)^2 + 0 + 0 + (3-1)^2 = 5; sample 1: 0 + (0-2)^2 + 0 + 0 = 4
    assert temporal_difference(y).tolist() == [5.0, 4.0]
    assert temporal_difference(y[:1]).tolist() == [0.0, 0.0]  # one timestep: nothing changes
    with pytest.raises(ValueError):
        temporal_difference(y[0])


def test_relative_r1_is_scale_free():
    y = torch.tensor([[[0.0, 1.0], [2.0, 2.0]],
                      [[1.0, 1.0], [2.0, 0.0]]])  # [T=2, N=2, classes=2]: changes 1 + 4, magnitudes 9 + 6
    assert relative_temporal_difference(y) == (5.0, 15.0)
    change, magnitude = relative_temporal_difference(37.0 * y)  # larger outputs: raw r1 x 37^2, ratio the same
    assert change / magnitude == pytest.approx(5.0 / 15.0)


def test_r2_matches_hand_computation():
    g = torch.tensor([[1.0, -1.0], [2.0, 0.0]])  # P = |G| / 4 = [1/4, 1/4, 1/2, 0]
    assert spatial_entropy(g) == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))
    assert spatial_entropy(torch.full((5, 5), -3.0)) == pytest.approx(math.log(25))  # uniform: the maximum
    assert spatial_entropy(torch.tensor([[0.0, 7.0], [0.0, 0.0]])) == 0.0  # one gene pair: no entropy


def test_fitness_formula_and_decay():
    assert combine_fitness("ste", 2.0, 3.0, 4.0, 0, -0.5, -0.5) == pytest.approx(2.0 - 3.0 - 4.0)
    assert combine_fitness("ste", 2.0, 3.0, 4.0, 2, -0.5, -0.25) == pytest.approx(
        2.0 - math.exp(-1.0) * 3.0 - math.exp(-0.5) * 4.0)
    assert combine_fitness("loss", 2.0, 3.0, 4.0, 0, -0.5, -0.5) == 2.0
    assert combine_fitness("loss+r1", 2.0, 3.0, 4.0, 1, -1.0, -0.5) == pytest.approx(2.0 - math.exp(-1.0) * 3.0)
    assert combine_fitness("loss+r2", 2.0, 3.0, 4.0, 1, -0.5, -1.0) == pytest.approx(2.0 - math.exp(-1.0) * 4.0)
    late = [combine_fitness("ste", 2.0, 3.0, 4.0, t, -0.5, -0.5) for t in range(6)]
    assert late == sorted(late) and late[-1] < 2.0  # the regularisers fade but never vanish
    assert combine_fitness("ste", None, None, 4.0, 0, -0.5, -0.5) == FAILED_FITNESS  # diverged candidate
    assert combine_fitness("loss", float("nan"), 1.0, 1.0, 0, -0.5, -0.5) == FAILED_FITNESS
    # exp(lambda t) beyond float range (a growing weight, lambda > 0) fails the candidate instead of raising
    assert combine_fitness("ste", 2.0, 3.0, 4.0, 1, 1000.0, -0.5) == FAILED_FITNESS
    assert combine_fitness("loss+r2", 2.0, 3.0, 4.0, 3, -0.5, 400.0) == FAILED_FITNESS
    assert combine_fitness("loss", 2.0, 3.0, 4.0, 3, 1000.0, 1000.0) == 2.0  # unused terms are not computed


def _generation(loss, r1, r2):  # r1 doubles as r1_rel: the -scaled modes read that one
    return [{"loss": a, "r1": b, "r2": c, "r1_rel": b} for a, b, c in zip(loss, r1, r2)]


def test_scaled_fitness_standardises_each_term_across_the_generation():
    gen = _generation([2.0, 2.2, 2.4, None], [10.0, 40.0, 70.0, 5.0], [5.25, 5.25, 5.25, 5.25])
    scales = term_scales(gen)  # the diverged candidate (loss None) does not count
    assert scales["loss"] == pytest.approx((2.2, np.std([2.0, 2.2, 2.4])))
    assert scales["r1"] == pytest.approx((40.0, np.std([10.0, 40.0, 70.0])))
    assert scales["r2"] == (5.25, 0.0)  # no spread: ranks nothing
    z = math.sqrt(1.5)  # (x - mean) / std of three evenly spaced values: -z, 0, +z
    assert combine_fitness("ste-scaled", 2.0, 10.0, 5.25, 0, -0.5, -0.5, scales) == pytest.approx(-z + z)
    assert combine_fitness("loss+r1-scaled", 2.4, 10.0, 5.25, 2, -0.5, -0.5, scales) == pytest.approx(
        z + math.exp(-1.0) * z)
    assert combine_fitness("loss+r2-scaled", 2.4, 10.0, 5.25, 0, -0.5, -0.5, scales) == pytest.approx(z)
    assert combine_fitness("ste-scaled", None, 10.0, 5.25, 0, -0.5, -0.5, scales) == FAILED_FITNESS
    assert combine_fitness("ste-scaled", 2.0, 10.0, 5.25, 1, 1000.0, -0.5, scales) == FAILED_FITNESS  # overflow
    with pytest.raises(ValueError, match="scales"):
        combine_fitness("ste-scaled", 2.0, 10.0, 5.25, 0, -0.5, -0.5)
    assert term_scales(gen[:1])["loss"] == (2.0, 0.0)  # one candidate: nothing to standardise by
    # scale-free: r1 in other units (x 100, + 7: more classes, larger T, larger outputs) and L in bits give the
    # same fitness, where the literal form's ranking flips
    other = _generation([2.0 / math.log(2), 2.2 / math.log(2), 2.4 / math.log(2)], [1007.0, 4007.0, 7007.0],
                        [5.0, 5.3, 5.1])
    base = _generation([2.0, 2.2, 2.4], [10.0, 40.0, 70.0], [5.0, 5.3, 5.1])
    for mode in [m for m, (_, _, scaled) in FITNESS_MODES.items() if scaled]:
        a = [fitness_of(mode, c, 1, -0.5, -0.5, term_scales(base)) for c in base]
        b = [fitness_of(mode, c, 1, -0.5, -0.5, term_scales(other)) for c in other]
        assert a == pytest.approx(b), mode
    literal = [fitness_of("loss+r1", c, 0, -0.5, -0.5) for c in base]
    assert np.argsort(literal).tolist() == [2, 1, 0]  # r1 (10-70) swamps L (2.0-2.4): the largest r1 wins
    # the -scaled modes read r1_rel, the literal ones raw r1
    c = {"loss": 2.0, "r1": 50.0, "r2": 5.0, "r1_rel": 0.3}
    sc = {"loss": (2.0, 1.0), "r1": (0.0, 1.0), "r2": (5.0, 1.0), "r1_rel": (0.1, 0.1)}
    assert fitness_of("loss+r1-scaled", c, 0, -0.5, -0.5, sc) == pytest.approx(-2.0)
    assert fitness_of("loss+r1", c, 0, -0.5, -0.5, sc) == pytest.approx(-48.0)
    assert fitness_of("ste-scaled", {**c, "r1_rel": None}, 0, -0.5, -0.5, sc) == FAILED_FITNESS


# ---- the loop: logging, best genotype, resume -----------------------------------------------------------

def test_cma_default_population_and_separable_above_threshold():
    from gee_deploy.training.evolution import _new_strategy

    full = _new_strategy(evo_recipe(population=0).evolution, 8, seed=0)
    assert full.popsize == 4 + int(3 * math.log(66))  # cma's default for 66 dimensions
    assert not full.opts["CMA_diagonal"] and full.sm.__class__.__name__ == "GaussFullSampler"
    sep = _new_strategy(evo_recipe(diagonal_above=50).evolution, 8, seed=0)
    assert sep.opts["CMA_diagonal"] and sep.sm.__class__.__name__ == "GaussStandardConstant" and sep.popsize == 4
    # the strategy's samples come from our seeded generator, not numpy's global state
    np.random.seed(123)
    a = _new_strategy(evo_recipe().evolution, 8, seed=0).ask()
    np.random.seed(456)
    b = _new_strategy(evo_recipe().evolution, 8, seed=0).ask()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["ste", "ste-scaled"])
def test_evolution_logs_and_sets_the_best_phenotype(tmp_path, mode):
    recipe = evo_recipe(fitness=mode)
    model = build_recipe_model(recipe)
    summary = run_evolution(recipe, tmp_path, model, torch.device("cpu"), progress=False)
    rows = read_rows(tmp_path)
    assert [r["generation"] for r in rows] == [0, 1]
    scales = [term_scales(row["candidates"]) for row in rows]  # what the -scaled mode standardises with
    for t, row in enumerate(rows):
        assert len(row["candidates"]) == 4
        assert row["scales"] == {k: list(v) for k, v in scales[t].items()}
        for c in row["candidates"]:
            assert c["fitness"] == pytest.approx(fitness_of(mode, c, t, -0.5, -0.5, scales[t]))
            assert c["r1"] >= 0 and 0 < c["r2"] <= math.log(64) and c["beta1"] > 0 and c["beta2"] > 0
            assert 0 <= c["r1_rel"] <= 4  # ||a - b||^2 <= 2 (||a||^2 + ||b||^2)
        assert row["median_fitness"] == pytest.approx(float(np.median([c["fitness"] for c in row["candidates"]])))
    assert rows[0]["beta1"] == pytest.approx(1.0) and rows[0]["beta2"] == pytest.approx(3.0)  # recipe's start
    default = rows[0]["default"]  # the Random model, scored in the first generation only
    assert "default" not in rows[1]
    assert default["fitness"] == pytest.approx(fitness_of(mode, default, 0, -0.5, -0.5, scales[0]))
    # the incumbent is the lowest fitness under the last generation's weights, over both generations and the
    # default wiring (index -1, which wins ties)
    rescored = [(fitness_of(mode, c, 1, -0.5, -0.5, scales[1]), r["generation"], c["index"])
                for r in rows for c in [*r["candidates"], *([{**default, "index": -1}] if "default" in r else [])]]
    best_f, best_gen, best_idx = min(rescored)
    assert rows[-1]["best_fitness"] == pytest.approx(best_f) == pytest.approx(summary["best_fitness"])
    assert (rows[-1]["best"]["generation"], rows[-1]["best"]["index"]) == (best_gen, best_idx)
    assert best_f <= fitness_of(mode, default, 1, -0.5, -0.5, scales[1])
    if best_idx == -1:
        assert_random_model_genome(model, recipe)
    else:
        best_c = rows[best_gen]["candidates"][best_idx]
        assert summary["beta1"] == pytest.approx(best_c["beta1"])
        assert model.genome.encodings["c1"].abs().max().item() == pytest.approx(best_c["beta2"], rel=1e-6)


def assert_random_model_genome(model, recipe):
    """``model``'s encodings and G are the Random model's: what the trainer builds with torch seeded by train.seed."""
    torch.manual_seed(recipe.train.seed)
    random_model = build_recipe_model(recipe)
    for (name, a), b in zip(model.genome.named_parameters(), random_model.genome.parameters()):
        assert torch.equal(a, b), name


def test_evolution_returns_the_default_wiring_unless_it_finds_better(tmp_path):
    # every sample lies near beta1 = beta2 = 50 (weights 50x too large: the network saturates), so no sample
    # should beat the default wiring under f = L, and evolution must hand back the Random model unchanged
    recipe = evo_recipe(fitness="loss", beta1=50.0, beta2=50.0, sigma0=0.01)
    model = build_recipe_model(recipe)
    summary = run_evolution(recipe, tmp_path, model, torch.device("cpu"), progress=False)
    rows = read_rows(tmp_path)
    losses = [c["loss"] for r in rows for c in r["candidates"] if c["loss"] is not None]
    assert rows[0]["default"]["loss"] < min(losses, default=math.inf)
    assert summary["index"] == -1 and summary["beta1"] is None
    assert rows[-1]["best"]["index"] == -1 and rows[-1]["best_fitness"] == pytest.approx(rows[0]["default"]["loss"])
    assert_random_model_genome(model, recipe)


def test_resume_replays_cma_and_matches_uninterrupted(tmp_path):
    recipe = evo_recipe(fitness="ste-scaled", generations=3)  # the incumbent needs every generation's scales
    full = build_recipe_model(recipe)
    run_evolution(recipe, tmp_path / "full", full, torch.device("cpu"), progress=False)

    part = tmp_path / "part"
    first = evo_recipe(fitness="ste-scaled", generations=1)
    run_evolution(first, part, build_recipe_model(first), torch.device("cpu"), progress=False)
    state = json.loads((part / STATE_FILE).read_text())
    assert state["generations_done"] == 1 and len(state["fitness"][0]) == 4
    # a kill between the log append and the state write leaves a row the state does not hold
    with open(part / "evolution.jsonl", "a") as fh:
        fh.write(json.dumps({"generation": 1, "best_fitness": -1e9}) + "\n" + '{"generation": 2, "torn')
    resumed = build_recipe_model(recipe)
    run_evolution(recipe, part, resumed, torch.device("cpu"), progress=False)
    assert strip_times(read_rows(part)) == strip_times(read_rows(tmp_path / "full"))
    for (name, a), b in zip(full.genome.named_parameters(), resumed.genome.parameters()):
        assert torch.equal(a, b), name
    assert json.loads((part / STATE_FILE).read_text())["mean"] == \
        json.loads((tmp_path / "full" / STATE_FILE).read_text())["mean"]

    changed = evo_recipe(fitness="ste-scaled", generations=3, sigma0=0.5)
    with pytest.raises(ConfigError, match="evolution.sigma0"):
        run_evolution(changed, part, build_recipe_model(changed), torch.device("cpu"), progress=False)


def test_dense_model_cannot_evolve(tmp_path):
    recipe = tiny_recipe(model={"genes": 0}, evolution={"enabled": True})
    with pytest.raises(ConfigError, match="genetic model"):
        run_evolution(recipe, tmp_path, build_recipe_model(recipe), torch.device("cpu"), progress=False)


# ---- the CLI: SIGKILL + --resume, and 2 workers, give the same evolution --------------------------------

DEMO_ARGS = ["--set", "evolution.enabled=true", "--set", "evolution.generations=3", "--set", "evolution.population=4",
             "--set", "evolution.eval_steps=2", "--set", "evolution.eval_batches=1", "--set", "data.batch_size=32",
             "--set", "data.train_limit=256", "--set", "data.test_limit=64", "--set", "train.epochs=0",
             "--set", "model.genes=16", "--set", "model.timesteps=2", "--set", "evolution.fitness=ste-scaled",
             "--quiet"]


def _cli(out, *extra, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([CLI, "train", DEMO, "--out", str(out), *DEMO_ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_cli_sigkill_resume_and_two_workers_match(tmp_path):
    killed = tmp_path / "killed"
    proc = _cli(killed)
    log = killed / "evolution.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "first generation did not finish in 4 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_rows(killed)) < 3 and not (killed / "best.pt").exists()
    resumed = _cli(killed, "--resume")
    parallel = _cli(tmp_path / "parallel", "--set", "evolution.workers=2")
    for p in (resumed, parallel):
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err
    a, b = read_rows(killed), read_rows(tmp_path / "parallel")
    assert [r["generation"] for r in a] == [0, 1, 2]
    assert strip_times(a) == strip_times(b)  # same candidates, fitness terms and best, bit for bit
    ga = torch.load(killed / "best.pt", weights_only=True)["state_dict"]
    gb = torch.load(tmp_path / "parallel" / "best.pt", weights_only=True)["state_dict"]
    genome_keys = [k for k in ga if k.startswith("genome.")]
    assert genome_keys and all(torch.equal(ga[k], gb[k]) for k in genome_keys)


# ---- ablation -------------------------------------------------------------------------------------------

def test_ablation_reports_mean_std_and_reuses_runs(tmp_path, capsys):
    from gee_deploy.training.ablation import run_ablation

    recipe = evo_recipe(generations=2)
    summary = run_ablation(recipe, 2, tmp_path, ["random", "ste-scaled"], progress=False)
    assert [r["label"] for r in summary["variants"]] == ["Random", "STE (scaled)"]
    for row in summary["variants"]:
        accs = [run["test_acc"] for run in row["runs"]]
        assert row["mean"] == pytest.approx(np.mean(accs)) and row["std"] == pytest.approx(np.std(accs, ddof=1))
        assert [run["seed"] for run in row["runs"]] == [0, 1]
    assert not (tmp_path / "random" / "seed0" / "evolution.jsonl").exists()  # Random does not evolve
    assert (tmp_path / "ste-scaled" / "seed1" / "evolution.png").stat().st_size > 0
    config = json.loads((tmp_path / "ste-scaled" / "seed0" / "config.json").read_text())
    assert config["evolution"]["fitness"] == "ste-scaled"
    # different seeds evolve differently
    assert read_rows(tmp_path / "ste-scaled" / "seed0") != read_rows(tmp_path / "ste-scaled" / "seed1")
    table = (tmp_path / "ablation.md").read_text()
    assert "| STE (scaled) |" in table and "| Random |" in table and "±" in table
    assert (tmp_path / "ablation.png").stat().st_size > 0
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["variants"][1]["test_acc"] == summary["variants"][1]["test_acc"]
    capsys.readouterr()
    again = run_ablation(recipe, 2, tmp_path, ["random", "ste-scaled"], progress=None)  # finished runs are reused
    assert again["variants"][1]["runs"] == summary["variants"][1]["runs"]
    said = capsys.readouterr().out.splitlines()  # which variant and seed, in order
    assert said[0] == f"Random, seed 0 (run 1/4): finished earlier, reused ({tmp_path / 'random' / 'seed0'})"
    assert said[3].startswith("STE (scaled), seed 1 (run 4/4): finished earlier, reused")
    # another recipe over these runs: refused before any run is touched, naming the run and the key
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"cannot resume the run in .*random.seed0 with another recipe: train\.lr"):
        run_ablation(replace(recipe, train=replace(recipe.train, lr=0.5)), 2, tmp_path, ["random", "ste-scaled"],
                     progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    # the reported total is the runs' own minutes, however many invocations did them
    every_run = [r["minutes"] for row in again["variants"] for r in row["runs"]]
    assert again["minutes"] == pytest.approx(sum(every_run)) and again["minutes"] > again["minutes_this_invocation"]
    # paired against Random, per seed; CPU seconds of every run
    random_row, ste_row = summary["variants"]
    assert random_row["paired_p"] is None and summary["reference"] == "Random"
    diffs = [a - b for a, b in zip(ste_row["test_acc"], random_row["test_acc"])]
    assert ste_row["paired_diff"] == pytest.approx(np.mean(diffs))
    assert ste_row["paired_p"] == (1.0 if diffs[0] * diffs[1] <= 0 or not all(diffs) else 0.5)
    assert all(run["cpu_seconds"] > 0 for row in summary["variants"] for run in row["runs"])
    assert "paired p" in table and "CPU s per run" in table


def test_sign_flip_p_is_the_exact_permutation_test():
    from gee_deploy.training.ablation import sign_flip_p

    assert sign_flip_p([0.01, 0.02, 0.03, 0.04, 0.05]) == 2 / 32  # all positive: only +/- all of them as extreme
    assert sign_flip_p([0.0, 0.0]) == 1.0
    # [1, 1, -1]: |sum| = 1; assignments with |sum| >= 1 are all 8 (sums are +-1 or +-3)
    assert sign_flip_p([1.0, 1.0, -1.0]) == 1.0
    assert sign_flip_p([3.0, 1.0, 1.0]) == 2 / 8  # |sum| 5; the others give |sum| 3 or 1
    with pytest.raises(ValueError):
        sign_flip_p([])
    many = sign_flip_p([0.01] * 25)  # Monte Carlo above 20 pairs: about 2 / 2^25, never 0
    assert 0 < many < 1e-5


# ---- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, words", [
    ("evolution.fitness=bogus", "evolution.fitness must be one of loss, loss+r1, loss+r2, ste, "),
    ("evolution.population=1", "evolution.population must be 0 or an integer in [2, 100000]"),
    ("evolution.generations=0", "evolution.generations must be an integer in [1, 100000]"),
    ("evolution.population=abc", "evolution.population must be 0 or an integer in [2, 100000], got 'abc'"),
    ("evolution.lambda1=nan", "evolution.lambda1 must be a finite number"),
    ("evolution.sigma0=0", "evolution.sigma0 must be a finite number in (0, 10]"),
])
def test_bad_evolution_settings_are_one_line(tmp_path, capsys, setting, words):
    from gee_deploy.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", DEMO, "--out", str(out), "--set", "evolution.enabled=true",
              "--set", setting, "--quiet"])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing written before the check


@pytest.mark.parametrize("args, words", [(["--seeds", "0"], "--seeds must be an integer in [1, 1000], got 0"),
                                         (["--variants", "random,nope"], "unknown ablation variant")])
def test_bad_ablate_options_are_one_line(tmp_path, capsys, args, words):
    from gee_deploy.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["ablate", DEMO, "--out", str(tmp_path / "abl"), *args, "--quiet"])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_ablation_variants_answer_to_their_fitness_mode_names_too():
    from gee_deploy.errors import ConfigError
    from gee_deploy.training.ablation import VARIANTS, _variant_key
    from gee_deploy.training.fitness import FITNESS_MODES

    assert _variant_key("loss") == "baseline" and _variant_key("loss+r1-scaled") == "r1-scaled"
    assert all(VARIANTS[_variant_key(mode)][1]["fitness"] == mode for mode in FITNESS_MODES)
    assert _variant_key("random") == "random"
    with pytest.raises(ConfigError, match="unknown ablation variant 'nope'; known: random, baseline"):
        _variant_key("nope")


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_ranks_share_the_population(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed in this environment")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["train", DEMO, *DEMO_ARGS, "--set", "evolution.generations=2"]
    ranks = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "gee_deploy.cli", *common,
                              "--out", str(tmp_path / "ranks")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)
    try:
        _, err = ranks.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(ranks.pid, signal.SIGKILL)  # the ranks too, not only torchrun
        raise
    assert ranks.returncode == 0, err[-2000:]
    single = subprocess.run([CLI, *common, "--out", str(tmp_path / "single")], capture_output=True, text=True,
                            env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    assert strip_times(read_rows(tmp_path / "ranks")) == strip_times(read_rows(tmp_path / "single"))


def test_the_state_file_carries_its_format_version_and_refuses_others(tmp_path):
    """A state written now says its version; a newer version, or a development layout without the default
    wiring's entry or r1_rel, is one clear ConfigError before any generation runs."""
    from gee_deploy.training.evolution import STATE_FORMAT, STATE_VERSION

    recipe = evo_recipe(generations=1)
    run_evolution(recipe, tmp_path, build_recipe_model(recipe), torch.device("cpu"), progress=False)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["format"] == STATE_FORMAT == f"gee-deploy-evolution/{STATE_VERSION}"
    more = evo_recipe(generations=2)
    for layout, words in (({**state, "format": f"gee-deploy-evolution/{STATE_VERSION + 1}"}, "newer gee-deploy"),
                          ({k: v for k, v in state.items() if k != "default"}, "does not read .default"),
                          ({**state, "terms": [[t[:3] for t in gen] for gen in state["terms"]]}, "its terms"),
                          ({**state, "format": "another-tool/1"}, "is not a gee-deploy-evolution/1")):
        (tmp_path / STATE_FILE).write_text(json.dumps(layout))
        with pytest.raises(ConfigError, match=words):
            run_evolution(more, tmp_path, build_recipe_model(more), torch.device("cpu"), progress=False)
        assert len(read_rows(tmp_path)) == 1  # nothing ran


def test_an_evolution_state_of_other_settings_is_refused_by_the_resume_rule(tmp_path):
    from gee_deploy.training.evolution import _check_settings

    settings = {"dimension": 3, "popsize": 4, "evolution": {"sigma0": 0.3, "fitness": "loss"}, "train": {"seed": 0}}
    path = tmp_path / STATE_FILE
    _check_settings({"settings": settings}, settings, path)
    changed = {**settings, "evolution": {"sigma0": 0.5, "fitness": "loss"}, "popsize": 6}
    with pytest.raises(ConfigError, match=rf"cannot resume evolution in {tmp_path} with another recipe: "
                                          r"evolution\.sigma0 0\.3 -> 0\.5; popsize 4 -> 6"):
        _check_settings({"settings": settings}, changed, path)
