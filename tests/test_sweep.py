"""`gee-deploy sweep`: gene scale (Fig. 3) with the dense twin, resumable per point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_recipe
from test_cli import run as run_cli  # main() as the console script runs it: (exit code, stdout, stderr)

from gee_deploy.data import load_test_arrays
from gee_deploy.errors import ConfigError
from gee_deploy.io import read_jsonl
from gee_deploy.evaluation.bench import bench_options, evaluate, run_bench, runtime_stats
from gee_deploy.evaluation.report import write_report
from gee_deploy.evaluation.runtimes import open_runtime
from gee_deploy.training.sweep import POINT_FILE, point_dir, run_sweep
from gee_deploy.zoo import create_model
from gee_deploy.zoo.summary import count_parameters

TINY = {"model": {"timesteps": 1}, "data": {"train_limit": 64, "test_limit": 32}}
RECIPE_TOML = """
[model]
name = "smallnet"
timesteps = 1
[data]
name = "synthetic"
batch_size = 32
train_limit = {train_limit}
test_limit = 32
[train]
epochs = {epochs}
lr = 0.01
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_sweep(tiny_recipe(**TINY), [4], out)


def test_sweep_trains_every_point_and_the_dense_twin(swept):
    out, summary = swept
    dense, g4 = summary["points"]
    assert (dense["genes"], g4["genes"]) == (0, 4) and summary["genes"] == [4]
    assert dense["status"] == g4["status"] == "trained"
    assert dense["parameters"] == count_parameters(create_model("smallnet", genes=None))
    assert g4["parameters"] == count_parameters(create_model("smallnet", genes=4)) < dense["parameters"]
    assert g4["param_ratio"] == pytest.approx(g4["parameters"] / dense["parameters"]) and dense["param_ratio"] == 1
    for p in (dense, g4):
        rows = read_jsonl(point_dir(out, "smallnet", p["genes"]) / "train.jsonl")
        assert p["test_acc"] == rows[-1]["test_acc"]  # the final epoch, not the best
        assert p["eval_accuracy"] == pytest.approx(p["test_acc"])  # spikes counted on the weights that scored it
        assert p["samples"] == 32
        assert p["spikes_per_image"] == pytest.approx(sum(p["spikes_per_layer"].values()))
        firing = p["spikes_per_image"] / (sum(p["neurons_per_layer"].values()) * 1)  # T = 1
        assert firing == pytest.approx(rows[-1]["firing_rate"], rel=1e-6)  # the trainer's own count agrees
    assert dense["macs_per_image"] == g4["macs_per_image"] > 0  # W is generated, then run as a dense conv
    report = json.loads((out / "sweep.json").read_text())
    assert [p["genes"] for p in report["points"]] == [0, 4] and "recipe" not in report["points"][0]
    assert "| smallnet | dense |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_spikes_and_energy_equal_bench_on_the_same_checkpoint(swept):
    """The training stage's count (SpikeRecorder + walk) and the serving stage's (runtime + bench) agree."""
    out, summary = swept
    for p in summary["points"]:
        runtime = open_runtime(point_dir(out, "smallnet", p["genes"]) / "last.pt")
        images, labels = load_test_arrays("synthetic", limit=32)
        stats = runtime_stats(runtime, evaluate(runtime, images, labels))
        assert p["eval_accuracy"] == stats["accuracy"]
        assert p["spikes_per_image"] == pytest.approx(stats["spikes_per_sample"], rel=1e-9)
        assert p["energy_pj"] == pytest.approx(stats["energy"]["energy_pj"], rel=1e-9)
        assert p["macs_per_image"] == stats["energy"]["macs_per_sample"]


def test_bench_report_puts_each_genetic_model_beside_its_dense_twin(swept, serving_onnx, tmp_path):
    """Table III: bench the sweep's g = 4 point with its dense twin (same recipe); shares are of the twin's."""
    out, summary = swept
    dense, g4 = summary["points"]
    paths = [point_dir(out, "smallnet", g) / "last.pt" for g in (4, 0)]
    report = run_bench(paths, bench_options(batch_sizes=(1,), limit=32, threads=1, min_time=0.01))
    assert [(r["model_name"], r["genes"]) for r in report["runtimes"]] == [("smallnet", 4), ("smallnet", 0)]
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    table = md.split("(Table III)")[1].split("\n\n")[1].splitlines()
    assert table[2].startswith(f"| torch:last#0 | {paths[0]} | smallnet | 4 | ") and table[3].split(" | ")[3] == "dense"
    assert f"| {g4['energy_pj'] / 1e6:.4f} | {g4['energy_pj'] / dense['energy_pj']:.1%} |" in table[2]
    assert table[3].endswith("| 100.0% |")
    onnx = open_runtime(serving_onnx)  # an export carries its gene count in the spec, so bench can pair it too
    images, labels = load_test_arrays("synthetic", limit=8)
    assert runtime_stats(onnx, evaluate(onnx, images, labels))["genes"] == 8


def test_finished_points_are_reused_not_retrained(swept):
    out, _ = swept
    stamps = {g: (point_dir(out, "smallnet", g) / "last.pt").stat().st_mtime_ns for g in (0, 4)}
    again = run_sweep(tiny_recipe(**TINY), [4], out)
    assert [p["status"] for p in again["points"]] == ["reused", "reused"]
    assert {g: (point_dir(out, "smallnet", g) / "last.pt").stat().st_mtime_ns for g in (0, 4)} == stamps


def test_a_point_of_another_recipe_is_refused(swept):
    out, _ = swept
    with pytest.raises(ConfigError, match="another recipe"):
        run_sweep(tiny_recipe(**TINY, train={"lr": 0.5}), [4], out)


def test_a_longer_sweep_trains_its_points_on_and_prints_their_epochs(swept, tmp_path):
    """More epochs is a change a resumed run may take: finished points train on (not from scratch, not reused),
    and every epoch is a progress line naming its point."""
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(swept[0], out)
    lines = []
    again = run_sweep(tiny_recipe(**TINY, train={"epochs": 2}), [4], out, progress=lines.append)
    assert [p["status"] for p in again["points"]] == ["resumed", "resumed"]
    assert [r["epoch"] for r in read_jsonl(point_dir(out, "smallnet", 4) / "train.jsonl")] == [1, 2]
    assert any(line.startswith("smallnet dense: epoch 2/2: loss ") for line in lines), lines
    assert any(line.startswith("smallnet g=4: epoch 2/2: loss ") for line in lines), lines


def test_killed_sweep_resumes_the_interrupted_point(tmp_path, capsys):
    """Kill a sweep in the second epoch of its second point; the rerun reuses the first and resumes the second."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE_TOML.format(epochs=2, train_limit=256))
    out = tmp_path / "sweep"
    log = point_dir(out, "smallnet", 4) / "train.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "gee_deploy.cli", "sweep", str(recipe), "--genes", "4", "--out",
                             str(out), "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(read_jsonl(log)) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep did not reach epoch 1 of its second point"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first_epoch = read_jsonl(log)
    assert len(first_epoch) == 1 and not (log.parent / POINT_FILE).exists(), "killed too late: point finished"
    dense_stamp = (point_dir(out, "smallnet", 0) / "last.pt").stat().st_mtime_ns

    code, stdout, err = run_cli(["sweep", str(recipe), "--genes", "4", "--out", str(out), "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in report["points"]] == ["reused", "resumed"]
    assert (point_dir(out, "smallnet", 0) / "last.pt").stat().st_mtime_ns == dense_stamp
    rows = read_jsonl(log)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == first_epoch[0]  # continued, not restarted


@pytest.mark.parametrize("args,message", [
    (["--genes", ""], "--genes is empty"),
    (["--genes", "4,-8"], "--genes must be an integer in [0, 4096], got -8"),
    (["--genes", "4,eight"], "--genes must be an integer, got 'eight'"),
    (["--genes", "4", "--models", "nonet"], "--models: unknown architecture 'nonet'; known: "),
    (["--genes", "4", "--models", "smallnet,nonet"], "--models: unknown architecture 'nonet'; known: "),
    (["--genes", "4", "--models", ","], "--models is empty"),
    (["--genes", "4", "--set", "model.image_size=4"], "image_size 4 leaves no feature map after 3 2x2 pools"),
    (["--genes", "4", "--set", "train.epochs=0"], "train.epochs must be >= 1"),
])
def test_bad_input_is_one_error_line_and_nothing_is_written(tmp_path, capsys, args, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE_TOML.format(epochs=1, train_limit=64))
    out = tmp_path / "sweep"
    code, _, err = run_cli(["sweep", str(recipe), "--out", str(out), *args], capsys)
    assert code != 0 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
