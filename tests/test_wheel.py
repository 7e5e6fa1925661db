"""The built package, as a user who installs it meets it: the wheel of this checkout installed into a fresh
virtual environment that cannot see the checkout, driven from a directory outside it.

The fresh environment gets the wheel (``pip install --no-deps``) and, for torch and the other dependencies
(gigabytes, already installed), a ``.pth`` file naming the running interpreter's site-packages. Python does not
process ``.pth`` files inside directories a ``.pth`` names (``site.addpackage`` only appends them to sys.path),
so an editable install of the checkout there stays invisible, and the fresh environment's own site-packages
comes first on sys.path; the test checks that ``gee_deploy`` is imported from inside it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from gee_deploy.data import load_test_arrays
from gee_deploy.serving.server import parse_ready_line

ROOT = Path(__file__).resolve().parents[1]
# What the build reads (pyproject.toml: the package, its package data, the readme); built from a copy so the
# build's egg-info and build/ folders never land in the checkout.
BUILD_INPUTS = ("pyproject.toml", "README.md", "gee_deploy")


def _clean_env() -> dict:
    """This process's environment without what would put the checkout (or another environment) on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _run(*args, cwd: Path | None = None) -> str:
    """Run a command; its stdout, or a failed assertion that shows the command and everything it printed."""
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist", src)
    (wheel,) = (tmp / "dist").glob("gee_deploy-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # the wheel first, while the new environment sees nothing else: pip must not find the checkout's editable
    # install and call the requirement satisfied
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    shared = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    Path(purelib, "shared-dependencies.pth").write_text("\n".join(shared) + "\n")
    return venv


@pytest.mark.slow
@pytest.mark.wheel
def test_the_wheel_installed_alone_trains_exports_checks_and_serves_a_named_recipe(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "gee_deploy" / "recipes").glob("*.toml"))
    assert sorted(Path(n).name for n in names if n.startswith("gee_deploy/recipes/")) == shipped
    assert any(n.startswith("gee_deploy/assets/") and n.endswith(".npz") for n in names)  # the embedded data

    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"  # no checkout here or above it
    work.mkdir()
    cli = str(venv / "bin" / "gee-deploy")

    def run(*args):
        return _run(*args, cwd=work)

    where = run(venv / "bin" / "python", "-c", "import gee_deploy; print(gee_deploy.__file__)")
    assert Path(where.strip()).resolve().is_relative_to(venv.resolve()), where
    listing = run(cli, "recipes")
    assert {line.split()[0] for line in listing.splitlines()[1:]} == {Path(n).stem for n in shipped}

    run(cli, "train", "demo", "--out", "R", "--quiet", "--set", "train.epochs=1", "--set", "data.train_limit=256",
        "--set", "data.test_limit=128", "--set", "train.threads=1")
    config = json.loads((work / "R" / "config.json").read_text())
    assert config["data"]["batch_size"] == 64 and config["train"]["lr"] == 3e-3  # demo.toml's, not the defaults
    run(cli, "export", "R/best.pt", "--out", "R/model.onnx", "--samples", "64")
    # the latency gate belongs to CI's own check step; here the packaging is under test
    assert "check passed" in run(cli, "check", "R/best.pt", "R/model.onnx", "--limit", "128", "--min-speedup", "0")

    server = subprocess.Popen([cli, "serve", "R/model.onnx", "--name", "demo", "--port", "0", "--threads", "1"],
                              cwd=work, env=_clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        ports = parse_ready_line(line)
        assert ports is not None, line + server.stderr.read()
        base = f"http://127.0.0.1:{ports[0]}/v2/models/demo"
        with urllib.request.urlopen(base, timeout=30) as answer:
            meta = json.load(answer)
        image = load_test_arrays("fashion-mnist-mini", limit=1)[0]  # [1, 1, 28, 28] in [0, 1]
        body = {"inputs": [{"name": meta["inputs"][0]["name"], "shape": list(image.shape), "datatype": "FP32",
                            "data": image.ravel().tolist()}], "parameters": {"binary_data_output": False}}
        request = urllib.request.Request(f"{base}/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            outputs = {o["name"]: o for o in json.load(answer)["outputs"]}
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0
    # the served answer is the exported graph's (logits and spike counts), run here by onnxruntime directly
    session = onnxruntime.InferenceSession(str(work / "R" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: image})
    for node, value in zip(session.get_outputs(), expected):
        assert outputs[node.name]["shape"] == list(value.shape)
        np.testing.assert_allclose(np.reshape(outputs[node.name]["data"], value.shape), value, rtol=1e-5, atol=1e-5)
