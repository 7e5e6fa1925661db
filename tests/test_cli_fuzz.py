"""Every command, driven through click's CliRunner with generated bad option values (hypothesis).

The rule under test (docs/design.md, "Errors and exit codes"): a usage error or an unusable input prints one
line starting ``error:`` on stderr and exits 2, before any work; nothing escapes as an exception (so no
traceback reaches a user) and nothing is left half-written. A value that happens to be valid runs the command
for real on a tiny synthetic checkpoint and must succeed (``check`` may also exit 1 with its FAIL lines: a
gate that ran and failed).

Each example starts from a valid, cheap invocation of one command and replaces one or two of its options (or
positional arguments) with generated values: numbers out of range, NaN and infinities, empty and odd
strings, paths that do not exist or cannot be written (under a regular file), and files of the wrong kind (a
text file, a truncated checkpoint, an ONNX graph where a checkpoint belongs and the reverse). ``derandomize``
keeps the examples the same from run to run, so CI sees what a developer saw.
"""
from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gee_deploy.cli import cli

# ---- generated values -------------------------------------------------------------------------------------

ODD = st.sampled_from(["", " ", "-", "--", "nan", "-nan", "inf", "-inf", "1e999", "0x10", "1,2", "abc", "٣",
                       "\t", "none", "None", "-0", "1e-400", "9" * 30, "é/ü", "../..", ","])
BAD_INT = st.one_of(st.integers(-10**20, -1).map(str), st.integers(10**7, 10**30).map(str), ODD,
                    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6))
BAD_FLOAT = st.one_of(st.floats(max_value=-1e-12).map(repr), st.floats(min_value=1e9).map(repr),
                      st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999", "-1e999"]), ODD, st.text(max_size=6))
BAD_TEXT = st.one_of(ODD, st.text(max_size=12))
BAD_LIST = st.one_of(ODD, st.lists(st.one_of(BAD_INT, BAD_FLOAT), min_size=1, max_size=3).map(",".join))
# recipe keys (with --set) and values no recipe accepts
RECIPE_KEYS = ["model.genes", "model.timesteps", "data.batch_size", "data.workers", "data.train_limit",
               "data.test_limit", "data.crop_padding", "train.epochs", "train.lr", "train.warmup_epochs",
               "train.momentum", "train.label_smoothing", "train.seed", "train.threads", "train.optimizer",
               "train.device", "evolution.fitness", "evolution.population", "evolution.lambda1", "evolution.sigma0",
               "evolution.eval_batches", "evolution.workers", "nope.key", "train.nope", "model"]
BAD_SET = st.builds(lambda key, value: f"{key}={value}", st.sampled_from(RECIPE_KEYS),
                    st.one_of(BAD_INT, BAD_FLOAT, st.sampled_from(["true", "[1, 2]", "{a = 1}", '"x"'])))


def bad_paths(kinds: tuple[str, ...]):
    """Names of paths prepared in each example's workspace (see :func:`_workspace`), plus odd strings."""
    return st.one_of(st.sampled_from(kinds), st.sampled_from(["", " ", "-"]))


IN_FILES = ("missing.pt", "text.txt", "empty.pt", "truncated.pt", "model.onnx", "best.pt", "somedir",
            "afile/missing.pt")
OUT_PATHS = ("afile/out", "afile/deeper/out", "text.txt/x", "somedir", "/proc/gee-out", "text.txt")
OUT_FILES = ("afile/out.pt", "somedir", "afile/x/y.onnx", "/proc/gee-out.onnx")

# ---- a valid, cheap invocation of each command and the options the test may spoil ----------------------

TINY = ('[model]\nname = "smallnet"\ngenes = 4\ntimesteps = 1\n[data]\nname = "synthetic"\nbatch_size = 16\n'
        'train_limit = 32\ntest_limit = 16\n[train]\nepochs = 1\n')

COMMANDS = {
    # name: (base argv with {placeholders}, {option: strategy}); "ARG0"/"ARG1" are positional arguments
    "models": (["models", "--json"], {"--genes": BAD_INT}),
    "recipes": (["recipes", "demo"], {"ARG0": st.one_of(bad_paths(IN_FILES), BAD_TEXT)}),
    "train": (["train", "{recipe}", "--out", "{out}", "-q"],
              {"ARG0": bad_paths(IN_FILES), "--out": bad_paths(OUT_PATHS), "--set": BAD_SET}),
    "sweep": (["sweep", "{recipe}", "--genes", "2", "--out", "{out}", "-q"],
              {"--genes": BAD_LIST, "--models": BAD_TEXT, "--out": bad_paths(OUT_PATHS), "--set": BAD_SET}),
    "ablate": (["ablate", "{recipe}", "--seeds", "1", "--variants", "random", "--out", "{out}", "-q"],
               {"--seeds": BAD_INT, "--variants": BAD_TEXT, "--out": bad_paths(OUT_PATHS), "--set": BAD_SET}),
    "quantize": (["quantize", "{ckpt}", "--out", "{out}.pt", "--epochs", "0.01", "--train-limit", "32",
                  "--test-limit", "16", "-q"],
                 {"ARG0": bad_paths(IN_FILES), "--out": bad_paths(OUT_FILES), "--epochs": BAD_FLOAT,
                  "--lr-scale": BAD_FLOAT, "--batch-size": BAD_INT, "--train-limit": BAD_INT,
                  "--test-limit": BAD_INT, "--data-dir": bad_paths(("missing", "text.txt")), "--device": BAD_TEXT}),
    "export": (["export", "{ckpt}", "--out", "{out}.onnx", "--samples", "16"],
               {"ARG0": bad_paths(IN_FILES), "--out": bad_paths(OUT_FILES), "--variant": BAD_TEXT,
                "--format": BAD_TEXT, "--opset": BAD_INT, "--atol": BAD_FLOAT, "--samples": BAD_INT,
                "--data-dir": bad_paths(("missing", "text.txt")), "--max-batch-size": BAD_INT,
                "--profile": st.just(None), "--allow-int8": st.just(None), "--timesteps": BAD_INT,
                "--dt": BAD_FLOAT, "--storage": BAD_TEXT}),
    "bench": (["bench", "{ckpt}", "{onnx}", "--out", "{out}", "--limit", "16", "--batch-sizes", "1",
               "--min-time", "0", "--runtimes", "torch,ort-cpu", "-q"],
              {"ARG0": bad_paths(IN_FILES), "--out": bad_paths(OUT_PATHS), "--runtimes": BAD_TEXT,
               "--batch-sizes": BAD_LIST, "--dataset": BAD_TEXT, "--data-dir": bad_paths(("missing", "text.txt")),
               "--limit": BAD_INT, "--threads": BAD_INT, "--min-time": BAD_FLOAT}),
    "check": (["check", "{ckpt}", "{onnx}", "--limit", "16"],
              {"ARG0": bad_paths(IN_FILES), "ARG1": bad_paths(IN_FILES), "--min-agreement": BAD_FLOAT,
               "--max-acc-delta": BAD_FLOAT, "--max-spike-delta": BAD_FLOAT, "--min-speedup": BAD_FLOAT,
               "--dataset": BAD_TEXT, "--limit": BAD_INT, "--threads": BAD_INT}),
    "robustness": (["robustness", "{onnx}", "--out", "{out}", "--limit", "16", "--ratios", "0.5", "-q"],
                   {"ARG0": bad_paths(IN_FILES), "--out": bad_paths(OUT_PATHS), "--noise": BAD_TEXT,
                    "--ratio": BAD_FLOAT, "--ratios": BAD_LIST, "--seed": BAD_INT, "--dataset": BAD_TEXT,
                    "--limit": BAD_INT, "--threads": BAD_INT, "--batch-size": BAD_INT}),
    # the HTTP port is held busy by the test, so a serve that gets past its checks fails to listen, never blocks
    "serve": (["serve", "{onnx}", "--port", "{busy}"],
              {"ARG0": bad_paths(IN_FILES), "--name": BAD_TEXT, "--host": st.sampled_from(["", "no.such.host.invalid",
                                                                                            "999.1.1.1", " "]),
               "--grpc-port": BAD_INT, "--max-batch": BAD_INT, "--max-delay-ms": BAD_FLOAT, "--max-body-mb": BAD_FLOAT,
               "--max-concurrency": BAD_INT, "--request-timeout-s": BAD_FLOAT, "--drain-s": BAD_FLOAT,
               "--runtime": BAD_TEXT, "--threads": BAD_INT}),
}


@pytest.fixture(scope="module")
def assets(tiny_checkpoint, serving_onnx, tmp_path_factory):
    """Files every example copies into its workspace, and a listening socket that keeps a port busy."""
    root = tmp_path_factory.mktemp("fuzz_assets")
    (root / "tiny.toml").write_text(TINY)
    busy = socket.create_server(("0.0.0.0", 0))
    yield {"ckpt": Path(tiny_checkpoint), "onnx": Path(serving_onnx), "recipe": root / "tiny.toml",
           "busy": busy.getsockname()[1]}
    busy.close()


def _workspace(root: Path, assets: dict) -> None:
    """The files the path strategies name, inside ``root`` (the current directory while a command runs)."""
    (root / "afile").write_text("a regular file, not a directory\n")
    (root / "text.txt").write_text("not a model\n")
    (root / "empty.pt").write_bytes(b"")
    data = assets["ckpt"].read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 3])
    (root / "somedir").mkdir()
    shutil.copy(assets["onnx"], root / "model.onnx")
    shutil.copy(assets["ckpt"], root / "best.pt")


def _argv(command: str, spoiled: dict, root: Path, assets: dict) -> list[str]:
    base, _ = COMMANDS[command]
    fill = {"recipe": str(assets["recipe"]), "ckpt": str(root / "best.pt"), "onnx": str(root / "model.onnx"),
            "out": str(root / "result"), "busy": str(assets["busy"])}
    argv = [a.format(**fill) for a in base]
    positions = [i for i, a in enumerate(argv[1:], 1) if not a.startswith("-") and not argv[i - 1].startswith("--")]
    for option, value in spoiled.items():
        if option.startswith("ARG"):
            argv[positions[int(option[3:])]] = value
        elif value is None:  # a flag
            argv.append(option)
        elif option in argv and option != "--set":
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def invoke(command: str, spoiled: dict, assets: dict):
    """Run one invocation in a fresh workspace; returns (argv, result, files it created)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _workspace(root, assets)
        before = _files(root)
        argv = _argv(command, spoiled, root, assets)
        with contextlib.chdir(root):  # relative paths (afile/out, ...) name the workspace's files
            result = CliRunner().invoke(cli, argv, catch_exceptions=True)
        created = _files(root) - before
    return argv, result, created


def check_outcome(command: str, argv: list[str], result, created: set[str]) -> None:
    """The rule: success, or one ``error:`` line and exit 2 with nothing written; never an exception."""
    shown = f"{argv!r} -> exit {result.exit_code}\nstderr: {result.stderr!r}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__}: {result.exception} escaped\n{shown}")
    assert "Traceback" not in result.output, shown
    if result.exit_code == 0:
        assert not any(Path(p).name.startswith(".") and ".tmp" in p for p in created), shown
        return
    if command == "check" and result.exit_code == 1:  # a gate that ran and failed: its lines, no error
        assert "FAIL:" in result.stderr, shown
        return
    assert result.exit_code == 2, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert not created, f"left behind {sorted(created)}\n{shown}"


def spoil(command: str):
    options = COMMANDS[command][1]
    names = sorted(options)
    return st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({name: options[name] for name in chosen}))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_generated_bad_values_give_one_error_line_and_exit_2(command, assets):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(spoiled=spoil(command))
    def run(spoiled):
        check_outcome(command, *invoke(command, spoiled, assets))

    run()


EXAMPLES = 40  # per command: 440 invocations, about 30 s on a 2-core CPU once torch is imported


# ---- kinds of input, not values: an output naming an input, a resume with another recipe -----------------

def _link(root: Path, target: Path, name: str, how: str) -> Path:
    """``root/name`` naming ``target``: the same path (``how`` = same), a symbolic or a hard link."""
    import os

    path = root / name
    if how == "same":
        return target
    if how == "symlink":
        path.symlink_to(target)
    else:
        os.link(target, path)
    return path


# command -> (argv builder taking the output path, the input the output names, the suffix the output gets)
COLLISIONS = {
    "export": (lambda ws, out: ["export", str(ws / "best.pt"), "--out", str(out), "--format", "onnx"], "best.pt", ".onnx"),
    "export-nir": (lambda ws, out: ["export", str(ws / "best.pt"), "--out", str(out), "--format", "nir"], "best.pt", ".nir"),
    "quantize": (lambda ws, out: ["quantize", str(ws / "best.pt"), "--out", str(out)], "best.pt", ".pt"),
    "bench": (lambda ws, out: ["bench", str(ws / "best.pt"), str(ws / "model.onnx"), "--out", str(out),
                               "--data-dir", str(ws / "somedir")], "somedir", ""),
    "robustness": (lambda ws, out: ["robustness", str(ws / "model.onnx"), "--out", str(out), "--data-dir",
                                    str(ws / "somedir")], "somedir", ""),
    "train": (lambda ws, out: ["train", "--out", str(out), "--set", f"data.data_dir={ws / 'somedir'}"], "somedir", ""),
}


@settings(max_examples=24, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(COLLISIONS)), how=st.sampled_from(["same", "symlink", "hardlink"]))
def test_an_output_that_names_an_input_is_refused_and_the_input_kept(assets, command, how):
    build, source, suffix = COLLISIONS[command]
    if how == "hardlink" and not suffix:  # directories have no hard links
        how = "symlink"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _workspace(root, assets)
        out = _link(root, root / source, f"alias{suffix}", how)
        argv = build(root, out)
        before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
        files = _files(root)
        with contextlib.chdir(root):
            result = CliRunner().invoke(cli, argv, catch_exceptions=True)
        shown = f"{argv!r} -> exit {result.exit_code}\nstderr: {result.stderr!r}"
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), shown
        # the input's own name under another format's flag is refused for its suffix, before the comparison
        assert any(w in lines[0] for w in ("is the input", "would replace", "writes a")), shown
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before and _files(root) == files, shown


def _toml(recipe: dict) -> str:
    """A recipe dict as TOML (flat sections of strings, numbers and booleans)."""
    import json

    lines = []
    for section, values in recipe.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict)]
    return "\n".join(lines) + "\n"


RESUME_CHANGES = {  # a valid value other than the tiny run's for keys of every section
    "model.genes": 4, "model.timesteps": 3, "model.init": "paper", "data.name": "fashion-mnist-mini",
    "data.batch_size": 16, "data.train_limit": 96, "data.augment": False, "train.lr": 0.1, "train.seed": 3,
    "train.optimizer": "sgd", "train.warmup_epochs": 0.5, "train.label_smoothing": 0.1, "train.amp": False,
    "evolution.enabled": True, "evolution.sigma0": 0.5,
    "train.threads": 1, "train.device": "cpu", "evolution.workers": 2,  # may change
}


@settings(max_examples=16, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.sampled_from(sorted(RESUME_CHANGES)), min_size=1, max_size=2, unique=True))
def test_resume_refuses_every_change_but_the_continuable_ones_and_leaves_the_run_alone(tiny_run, keys):
    from gee_deploy.checkpoint import load_checkpoint
    from gee_deploy.training.resume import CONTINUABLE

    recorded = load_checkpoint(tiny_run / "last.pt").recipe
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_dir = root / "run"
        shutil.copytree(tiny_run, run_dir)
        (root / "recipe.toml").write_text(_toml(recorded))
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        sets = []
        for key in keys:
            value = RESUME_CHANGES[key]
            sets += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else repr(value)}".replace("'", '"')]
        argv = ["train", str(root / "recipe.toml"), "--out", str(run_dir), "--resume", "-q", *sets]
        result = CliRunner().invoke(cli, argv, catch_exceptions=True)
        shown = f"{argv!r} -> exit {result.exit_code}\nstderr: {result.stderr!r}"
        refused = [k for k in keys if k not in CONTINUABLE]
        if refused:
            lines = result.stderr.strip().splitlines()
            assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot resume"), shown
            assert all(k in lines[0] for k in refused), shown
            assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before, shown
        else:
            assert result.exit_code == 0, shown
            assert (run_dir / "resumes.jsonl").exists() and (run_dir / "best.pt").read_bytes() == before["best.pt"]
