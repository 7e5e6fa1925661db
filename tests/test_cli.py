"""The command line as a user meets it: help, models, train, and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gee_deploy.cli import cli, main


def run(args, capsys):
    """Invoke main() like the console script; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_lists_commands_without_importing_torch():
    code = ("import sys, gee_deploy.cli as c\n"
            "from click.testing import CliRunner\n"
            "r = CliRunner().invoke(c.cli, ['--help'])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(r.output)\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "models" in out and out.strip().endswith("NO-TORCH")


def test_models_json():
    result = CliRunner().invoke(cli, ["models", "--json", "--genes", "16"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.output)}
    assert set(rows) >= {"cifarnet", "vgg11", "vgg16", "resnet18", "resnet19", "resnet34", "smallnet"}
    assert all(r["genes"] == 16 and r["genetic_params"] < r["dense_params"] for r in rows.values())


def test_train_command_writes_a_run(tmp_path, capsys):
    code, out, err = run(["train", "--out", str(tmp_path / "r"), "--quiet", "--set", "data.name=synthetic",
                          "--set", "data.train_limit=64", "--set", "data.test_limit=32", "--set", "data.batch_size=32",
                          "--set", "train.epochs=1",
                          "--set", "model.genes=4", "--set", "model.timesteps=1"], capsys)
    assert code == 0, err
    assert "test acc" in out and (tmp_path / "r" / "best.pt").exists()


@pytest.mark.parametrize("args,message", [
    (["--set", "model.name=nope"], "unknown model 'nope'"),
    (["--set", "data.name=nope"], "unknown dataset 'nope'"),
    (["--set", "train.epochs=many"], "train.epochs must be an integer"),
    (["--set", "data.name=cifar10", "--set", "data.data_dir=/nonexistent"], "does not exist"),
    (["missing-recipe.toml"], "recipe missing-recipe.toml not found"),
])
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, args, message):
    out_dir = tmp_path / "run"
    code, out, err = run(["train", *args, "--out", str(out_dir), "--quiet"], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out_dir / "best.pt").exists() and not (out_dir / "last.pt").exists()
