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


# ---- the one rule: usage errors and unusable inputs are one `error:` line and exit 2 --------------------

def one_error_line(code, err, words):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (code, err)


def test_click_usage_errors_are_one_line_too(capsys):
    code, _, err = run(["train", "--bogus"], capsys)
    one_error_line(code, err, "No such option '--bogus'")
    code, _, err = run(["export", "x.pt", "--out", "x.onnx", "--variant", "fast"], capsys)
    one_error_line(code, err, "'fast' is not one of 'dense', 'factorised', 'auto', 'int8'")
    result = CliRunner().invoke(cli, ["nope"])  # the same mapping under CliRunner (no standalone main)
    assert result.exit_code == 2 and result.stderr.startswith("error: No such command 'nope'")


def test_genes_zero_is_the_dense_twin_everywhere_and_negative_is_refused_in_the_same_words(capsys):
    code, _, err = run(["models", "--genes", "-5"], capsys)
    one_error_line(code, err, "--genes must be an integer in [0, 4096], got -5")
    code, _, err = run(["sweep", "missing.toml", "--genes", "4,-8", "--out", "x"], capsys)
    one_error_line(code, err, "--genes must be an integer in [0, 4096], got -8")
    result = CliRunner().invoke(cli, ["models", "--json", "--genes", "0"])
    assert result.exit_code == 0, result.output
    assert all(r["genes"] == 0 and r["genetic_params"] == r["dense_params"] for r in json.loads(result.output))
    for command in ("models", "sweep"):
        help_text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        assert "0 = the dense twin" in help_text


def test_out_is_checked_before_anything_is_loaded(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a directory")
    code, _, err = run(["train", "--out", str(blocker / "run"), "--set", "data.name=synthetic"], capsys)
    one_error_line(code, err, f"cannot write --out {blocker / 'run'}: {blocker} is a file, not a directory")
    # the checkpoint does not even exist: the --out error comes first, so nothing was loaded or trained
    for argv in (["quantize", "missing.pt", "--out", str(blocker / "q.pt")],
                 ["export", "missing.pt", "--out", str(blocker / "m.onnx")],
                 ["bench", "missing.pt", "--out", str(blocker / "b")],
                 ["robustness", "missing.onnx", "--out", str(blocker / "r")],
                 ["ablate", "missing.toml", "--out", str(blocker / "a")]):
        code, _, err = run(argv, capsys)
        one_error_line(code, err, "is a file, not a directory")
    code, _, err = run(["quantize", "missing.pt", "--out", str(tmp_path)], capsys)
    one_error_line(code, err, "it is a directory, not a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_numbers_out_of_range_nan_and_infinity_are_refused_where_parsed(capsys):
    for argv, words in [(["bench", "m.onnx", "--out", "b", "--min-time", "nan"], "--min-time must be a finite number"),
                        (["check", "a.pt", "b.onnx", "--min-agreement", "nan"], "--min-agreement must be a finite "
                                                                                 "number in [0, 1], got nan"),
                        (["serve", "m.onnx", "--max-body-mb", "inf"], "--max-body-mb must be a finite number"),
                        (["quantize", "a.pt", "--out", "q.pt", "--device", "gpu"], "--device must be auto, cpu, "
                                                                                     "cuda or cuda:N, got 'gpu'"),
                        (["bench", "m.onnx", "--out", "b", "--runtimes", "ort-cpu,onnx"],
                         "--runtimes takes comma-separated names from torch, ort-cpu"),
                        (["robustness", "m.onnx", "--out", "r", "--ratios", "0,x"], "--ratios must be a number")]:
        code, _, err = run(argv, capsys)
        one_error_line(code, err, words)


def test_a_truncated_checkpoint_is_named_in_a_whole_sentence(tiny_checkpoint, tmp_path, capsys):
    data = tiny_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 3])
    code, _, err = run(["export", str(truncated), "--out", str(tmp_path / "m.onnx")], capsys)
    one_error_line(code, err, f"{truncated} is truncated: a torch.save archive without its end (a copy or a write "
                              "cut short;")
    assert not err.rstrip().endswith(" is") and "your checkpoint file is" not in err
    text = tmp_path / "notes.txt"
    text.write_text("101\n")  # torch.load once called this "not a readable checkpoint ...: 101"
    code, _, err = run(["export", str(text), "--out", str(tmp_path / "m.onnx")], capsys)
    one_error_line(code, err, f"{text} is not a gee-deploy checkpoint: a text file, not a torch.save archive")


def test_profile_without_auto_and_swapped_check_arguments_are_named(tiny_checkpoint, serving_onnx, tmp_path, capsys):
    code, _, err = run(["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--profile"], capsys)
    one_error_line(code, err, "--profile times each layer's forms for --variant auto")
    code, _, err = run(["check", str(serving_onnx), str(tiny_checkpoint)], capsys)
    one_error_line(code, err, "the arguments are swapped? usage: gee-deploy check CHECKPOINT MODEL.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_serve_names_the_busy_port(serving_onnx, capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, _, err = run(["serve", str(serving_onnx), "--port", str(port)], capsys)
        one_error_line(code, err, f"cannot listen on 127.0.0.1:{port} (HTTP): Address already in use")
        code, _, err = run(["serve", str(serving_onnx), "--port", "0", "--grpc-port", str(port)], capsys)
        one_error_line(code, err, f"cannot listen on 127.0.0.1:{port} (gRPC): Address already in use")


def test_serve_points_a_nir_file_or_a_checkpoint_to_its_export(tmp_path, capsys):
    code, _, err = run(["serve", str(tmp_path / "snn.nir")], capsys)
    one_error_line(code, err, f"serve runs ONNX files; convert {tmp_path / 'snn.nir'} first: gee-deploy export "
                              f"{tmp_path / 'snn.nir'} --out {tmp_path / 'snn.nir.onnx'}")  # not over snn.onnx
    code, _, err = run(["serve", str(tmp_path / "best.pt")], capsys)
    one_error_line(code, err, f"looks like a checkpoint: export it first, gee-deploy export {tmp_path / 'best.pt'}")


def test_export_takes_its_format_from_the_out_suffix_and_refuses_a_mismatch(tiny_checkpoint, tmp_path, capsys):
    code, out, err = run(["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.nir"), "--samples", "8"], capsys)
    assert code == 0, err
    assert "(nir," in out and (tmp_path / "m.nir").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    for fmt, name in (("onnx", "x.nir"), ("nir", "x.onnx"), ("triton", "x.onnx"), ("onnx", "x.plan")):
        code, _, err = run(["export", str(tiny_checkpoint), "--out", str(tmp_path / name), "--format", fmt], capsys)
        one_error_line(code, err, f"--out {tmp_path / name} is named like")
        assert not (tmp_path / name).exists()


def test_check_refuses_a_nir_file_where_the_onnx_file_goes(tiny_checkpoint, tmp_path, capsys):
    nir = tmp_path / "m.nir"
    code, _, err = run(["export", str(tiny_checkpoint), "--out", str(nir), "--samples", "8"], capsys)
    assert code == 0, err
    code, out, err = run(["check", str(tiny_checkpoint), str(nir)], capsys)
    one_error_line(code, err, f"{nir} is a NIR file, not ONNX: check runs an ONNX file against the checkpoint")
    assert out == ""


def test_a_missing_data_dir_is_one_usage_error_before_any_work(tiny_checkpoint, serving_onnx, tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    for argv in (["check", str(tiny_checkpoint), str(serving_onnx)],
                 ["bench", str(tiny_checkpoint), "--out", str(tmp_path / "b")],
                 ["robustness", str(tiny_checkpoint), "--out", str(tmp_path / "r")],
                 ["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx")],
                 ["quantize", str(tiny_checkpoint), "--out", str(tmp_path / "q.pt")]):
        code, out, err = run([*argv, "--data-dir", str(missing)], capsys)
        one_error_line(code, err, f"Directory '{missing}' does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_multi_run_commands_refuse_evolution_data_before_their_first_run(tmp_path, capsys):
    """ablate trains Random first and sweep the dense twin first; neither may leave runs behind when an evolving
    run would then find too few images."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('[data]\nname = "synthetic"\nbatch_size = 16\ntrain_limit = 32\n[train]\nepochs = 1\n')
    for argv in (["ablate", str(recipe), "--seeds", "1", "--out", str(tmp_path / "a")],
                 ["sweep", str(recipe), "--genes", "4", "--set", "evolution.enabled=true", "--out", str(tmp_path / "s")]):
        code, _, err = run(argv, capsys)
        one_error_line(code, err, "evolution needs at least 80 training images")
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    code, _, err = run(["train", str(empty), "--out", str(tmp_path / "t")], capsys)
    one_error_line(code, err, f"recipe {empty} sets nothing (an empty file?)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.toml", "tiny.toml"]


# ---- outputs never replace inputs (commands/options.refuse_replacing) -----------------------------------

def test_no_output_replaces_an_input(tiny_checkpoint, serving_onnx, tmp_path, capsys):
    import os
    import shutil

    ckpt, onnx_file = tmp_path / "best.pt", tmp_path / "model.onnx"
    shutil.copy(tiny_checkpoint, ckpt)
    shutil.copy(serving_onnx, onnx_file)
    (tmp_path / "link.onnx").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.onnx")
    (tmp_path / "repo").mkdir()
    shutil.copy(ckpt, tmp_path / "repo" / "inside.pt")
    before = {p.name: p.read_bytes() for p in (ckpt, onnx_file)}
    cases = [
        (["export", str(ckpt), "--out", str(ckpt)], f"--out {ckpt}: the suffix .pt names no export format"),
        (["export", str(ckpt), "--out", str(ckpt), "--format", "onnx"], "--format onnx writes a .onnx file"),
        (["export", str(ckpt), "--out", str(tmp_path / "link.onnx")], f"is the input {ckpt}: writing it would "
                                                                      "replace it"),
        (["export", str(ckpt), "--out", str(tmp_path / "hard.onnx")], "writing it would replace it"),
        (["export", str(tmp_path / "repo" / "inside.pt"), "--out", str(tmp_path / "repo"), "--format", "triton"],
         "would replace the directory holding the input"),
        (["quantize", str(ckpt), "--out", str(ckpt)], f"--out {ckpt} is the input {ckpt}"),
        (["quantize", str(ckpt), "--out", str(tmp_path / "q13.onnx")], "quantize writes a checkpoint, a .pt file"),
        (["bench", str(ckpt), str(onnx_file), "--out", str(tmp_path / "data"), "--data-dir", str(tmp_path / "data")],
         "is the input"),
        (["train", "--out", str(tmp_path / "data"), "--set", f"data.data_dir={tmp_path / 'data'}"], "is the input"),
    ]
    (tmp_path / "data").mkdir()
    for argv, words in cases:
        code, _, err = run(argv, capsys)
        one_error_line(code, err, words)
    assert {p.name: p.read_bytes() for p in (ckpt, onnx_file)} == before
    assert (tmp_path / "hard.onnx").read_bytes() == before["best.pt"] and not list((tmp_path / "data").iterdir())


def test_a_missing_folder_of_an_output_file_is_refused_not_created(tiny_checkpoint, tmp_path, capsys):
    for argv in (["export", str(tiny_checkpoint), "--out", str(tmp_path / "no" / "dir" / "m.onnx")],
                 ["quantize", str(tiny_checkpoint), "--out", str(tmp_path / "no" / "dir" / "q.pt")]):
        code, _, err = run(argv, capsys)
        one_error_line(code, err, f"its folder {tmp_path / 'no' / 'dir'} does not exist (create it first)")
    assert not (tmp_path / "no").exists()
    help_text = " ".join(CliRunner().invoke(cli, ["export", "--help"]).output.split())
    assert "its folder must exist" in help_text


def test_item_by_item_refusals(tmp_path, capsys):
    code, _, err = run(["bench", "a.pt", "--out", str(tmp_path / "b"), "--batch-sizes", "1,,16"], capsys)
    one_error_line(code, err, "--batch-sizes '1,,16' has an empty item")
    code, _, err = run(["bench", "a.pt", "--out", str(tmp_path / "b"), "--runtimes", "torch,"], capsys)
    one_error_line(code, err, "--runtimes 'torch,' has an empty item")
    code, _, err = run(["train", "--out", str(tmp_path / "t"), "--set", "train.epochs=0"], capsys)
    one_error_line(code, err, "train.epochs must be >= 1 (0 trains nothing")
    code, _, err = run(["serve", "m.onnx", "--name", ""], capsys)
    one_error_line(code, err, "--name is empty")
    code, _, err = run(["quantize", "a.pt", "--out", str(tmp_path / "q.pt"), "--device", "cuda:7"], capsys)
    one_error_line(code, err, "--device cuda:7 but ")
    recipe = tmp_path / "typo.toml"
    recipe.write_text('descripton = "mine"\n[train]\nepochs = 1\n')
    code, _, err = run(["train", str(recipe), "--out", str(tmp_path / "t")], capsys)
    one_error_line(code, err, "unknown top-level key descripton in the recipe: its top level holds only "
                              'description = "..." and the sections [model], [data], [train], [evolution]; did you '
                              "mean description?")
    code, _, err = run(["sweep", "demo", "--genes", "4", "--models", "smallnet,foo", "--out", str(tmp_path / "s")],
                       capsys)
    one_error_line(code, err, "--models: unknown architecture 'foo'; known: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.toml"]
    help_text = " ".join(CliRunner().invoke(cli, ["serve", "--help"]).output.split())
    assert "a single request of more samples is refused with 400" in help_text


# ---- provenance warnings (evaluation/provenance.py) -------------------------------------------------------

def test_evaluations_warn_about_another_checkpoint_and_another_dataset(tiny_checkpoint, serving_onnx, tmp_path,
                                                                       capsys):
    from dataclasses import replace

    from gee_deploy.checkpoint import load_checkpoint, save_checkpoint

    other = tmp_path / "other.pt"  # the same weights, another file: its digest is not the one the graph records
    save_checkpoint(other, replace(load_checkpoint(tiny_checkpoint), best_acc=0.123))
    small = ["--limit", "16"]
    for argv in (["bench", str(other), str(serving_onnx), "--out", str(tmp_path / "b"), *small, "--batch-sizes", "1",
                  "--min-time", "0", "--runtimes", "torch,ort-cpu", "-q"],
                 ["check", str(other), str(serving_onnx), *small, "--min-speedup", "0"],
                 ["robustness", str(other), str(serving_onnx), "--out", str(tmp_path / "r"), *small, "--ratios", "0.5",
                  "-q"]):
        code, _, err = run(argv, capsys)
        assert code in (0, 1), err
        assert f"warning: {serving_onnx} was exported from another checkpoint than {other}" in err, argv
        code, _, err = run([*argv, "--dataset", "fashion-mnist-mini"], capsys)
        assert code in (0, 1), err
        assert f"warning: --dataset fashion-mnist-mini is not the dataset {other} was trained on (synthetic)" in err
    code, _, err = run(["check", str(tiny_checkpoint), str(serving_onnx), *small, "--min-speedup", "0",
                        "--dataset", "synthetic"], capsys)
    assert "warning" not in err, err
