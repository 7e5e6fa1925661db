"""bench, check and robustness: one frozen options object each, built and checked in the command and taken by the
evaluation as it is (the calls are recorded with the profiler hook of test_export_options)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from gee_deploy.cli import cli
from gee_deploy.errors import ConfigError
from gee_deploy.evaluation import bench, robustness
from gee_deploy.evaluation.bench import BenchOptions, CheckOptions, bench_options, run_bench
from gee_deploy.evaluation.robustness import RobustnessOptions, robustness_options, run_robustness
from test_export_options import recorded_calls


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, standalone_mode=False, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _taken(monkeypatch, module, name: str) -> list:
    """The arguments every call of ``module.name`` received (the real function still runs)."""
    seen, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: seen.append((a, k)) or real(*a, **k))
    return seen


def test_robustness_checks_the_noise_once_and_passes_one_object(tiny_checkpoint, tmp_path, monkeypatch):
    taken = _taken(monkeypatch, robustness, "run_robustness")
    with recorded_calls(Path(robustness.__file__)) as (calls, _):
        _invoke(["robustness", str(tiny_checkpoint), "--out", str(tmp_path / "r"), "--limit", "8", "--ratios",
                 "0.25", "--batch-size", "8", "-q"])
    assert calls["check_noise"] == 1 and calls["robustness_options"] == 1
    (args, kwargs), = taken
    options = args[1]
    assert isinstance(options, RobustnessOptions) and options.ratios == (0.0, 0.25, 0.5) and options.limit == 8
    assert (tmp_path / "r" / "robustness.json").is_file()


def test_bench_builds_its_options_in_the_command(tiny_checkpoint, tmp_path, monkeypatch):
    taken = _taken(monkeypatch, bench, "run_bench")
    _invoke(["bench", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--batch-sizes", "1", "--limit", "8",
             "--min-time", "0", "--threads", "1", "-q"])
    (args, kwargs), = taken
    assert args[1] == BenchOptions(runtimes=None, batch_sizes=(1,), limit=8, threads=1, min_time=0.0)
    assert (tmp_path / "b" / "report.json").is_file()


def test_check_passes_its_thresholds_in_one_object(tiny_checkpoint, serving_onnx, monkeypatch):
    taken = _taken(monkeypatch, bench, "run_check")
    result = CliRunner().invoke(cli, ["check", str(tiny_checkpoint), str(serving_onnx), "--limit", "8",
                                      "--min-speedup", "0", "--min-agreement", "0.5"], standalone_mode=False)
    assert result.exit_code in (0, 1), result.output  # 1: a gate failed on this machine; the options are the point
    (args, kwargs), = taken
    options = args[2]
    assert isinstance(options, CheckOptions) and options.limit == 8 and options.threads == 1
    assert options.thresholds.min_top1_agreement == 0.5 and options.thresholds.min_speedup == 0


def test_the_python_api_refuses_bad_options_before_opening_a_file():
    with pytest.raises(ConfigError, match="unknown runtime 'jax'"):
        run_bench(["/nonexistent.pt"], bench_options(runtimes=["jax"]))
    with pytest.raises(ConfigError, match="ratios must be finite and >= 0"):
        run_robustness(["/nonexistent.pt"], robustness_options(ratios=[-1.0]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        bench_options().limit = 5  # type: ignore[misc]
    assert bench_options(limit=0).limit is None and robustness_options(limit=0).limit is None  # 0: all samples
