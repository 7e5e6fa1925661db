"""`gee-deploy robustness`: the paper's Fig. 2 noise protocol on checkpoints and their ONNX exports."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gee_deploy.data import load_test_arrays
from gee_deploy.errors import ConfigError
from gee_deploy.evaluation.bench import evaluate
from gee_deploy.evaluation.robustness import add_noise, noise_directions, robustness_options, run_robustness
from gee_deploy.evaluation.runtimes import open_runtime
from test_cli import run as run_cli  # main() as the console script runs it: (exit code, stdout, stderr)


def _images(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    x[:, :, :3] = 0.0  # black rows, where clipping bites
    return x


def test_noise_norm_is_the_ratio_of_each_images_norm():
    x = _images()
    u = noise_directions(x.shape, seed=1)
    np.testing.assert_allclose(np.linalg.norm(u.reshape(len(u), -1), axis=1), 1.0, rtol=1e-5)
    noisy, realised = add_noise(x, u, 0.5, clip=False)
    got = np.linalg.norm((noisy - x).reshape(len(x), -1), axis=1) / np.linalg.norm(x.reshape(len(x), -1), axis=1)
    np.testing.assert_allclose(got, 0.5, rtol=1e-4)
    np.testing.assert_allclose(realised, 0.5, rtol=1e-4)
    assert noisy.dtype == np.float32 and (noisy < 0).any()  # unclipped noise leaves [0, 1]


def test_clipping_keeps_the_input_contract_and_reports_the_noise_it_kept():
    x = _images()
    u = noise_directions(x.shape, seed=1)
    noisy, realised = add_noise(x, u, 0.5, clip=True)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert (realised < 0.5).all() and (realised > 0.2).all()
    clean, zero = add_noise(x, u, 0.0, clip=True)
    np.testing.assert_array_equal(clean, x)
    np.testing.assert_array_equal(zero, 0.0)


def test_noise_is_seeded_per_sample_in_order():
    a = noise_directions((10, 1, 8, 8), seed=3)
    np.testing.assert_array_equal(a[:4], noise_directions((4, 1, 8, 8), seed=3))  # --limit keeps the draws
    assert not np.allclose(a, noise_directions((10, 1, 8, 8), seed=4))


def test_checkpoint_and_export_see_the_same_noisy_images(tiny_checkpoint, serving_onnx):
    report = run_robustness([tiny_checkpoint, serving_onnx], robustness_options(ratio=0.5, ratios=[0.0, 1.0], limit=64))
    assert report["ratios"] == [0.0, 0.5, 1.0] and report["samples"] == 64
    ckpt, onnx = report["models"]
    assert ckpt["runtime"] == "torch" and onnx["runtime"] == "ort-cpu"
    for p in onnx["points"]:  # the deployed graph is exactly as robust as its checkpoint
        assert abs(p["accuracy_delta_vs_reference"]) <= 0.002 and p["top1_agreement_vs_reference"] >= 0.98
    # ratio 0 is the clean test set, as bench evaluates it
    images, labels = load_test_arrays("synthetic", limit=64)
    clean = evaluate(open_runtime(tiny_checkpoint), images, labels)
    assert ckpt["clean_accuracy"] == clean.accuracy
    assert ckpt["points"][0]["spikes_per_sample"] == pytest.approx(clean.spikes_per_sample)
    # the noise reaches the model: spikes per image move with the ratio
    spikes = [p["spikes_per_sample"] for p in ckpt["points"]]
    assert len(set(spikes)) == 3
    assert ckpt["drop_points"] == pytest.approx(100 * (ckpt["clean_accuracy"] - ckpt["points"][1]["accuracy"]))
    assert report["realised_ratios"][0] == 0.0 and 0.0 < report["realised_ratios"][1] < 0.5  # clipped


def test_robustness_command_writes_json_markdown_and_plot(tiny_checkpoint, serving_onnx, tmp_path, capsys):
    out = tmp_path / "rob"
    code, stdout, err = run_cli(["robustness", str(tiny_checkpoint), str(serving_onnx), "--out", str(out),
                                 "--ratios", "0,0.3", "--limit", "32", "--no-clip", "--quiet"], capsys)
    assert code == 0, err
    assert "drop (points)" in stdout and "tiny.onnx (ort-cpu)" in stdout
    report = json.loads((out / "robustness.json").read_text())
    assert report["ratios"] == [0.0, 0.3, 0.5] and report["noise"]["clip"] is False
    assert report["realised_ratios"][1] == pytest.approx(0.3, rel=1e-3)  # unclipped: exactly the protocol
    assert "## Spikes per image per ratio" in (out / "robustness.md").read_text()
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["--noise", "salt-and-pepper"], "unknown noise kind 'salt-and-pepper'"),
    (["--ratio", "-0.5"], "--ratio must be a finite number in [0, 1000], got -0.5"),
    (["--ratios", "0,-0.1"], "--ratios must be a finite number in [0, 1000], got -0.1"),
    (["--ratio", "nan"], "--ratio must be a finite number in [0, 1000], got nan"),
    (["--ratios", "0,half"], "--ratios must be a number, got 'half'"),
])
def test_bad_noise_is_one_error_line_and_nothing_is_written(tiny_checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "rob"
    code, _, err = run_cli(["robustness", str(tiny_checkpoint), "--out", str(out), *args], capsys)
    assert code != 0 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_model_files_are_one_error_line(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    for path, message in ((tmp_path / "missing.pt", "not found"), (broken, "cannot be loaded")):
        code, _, err = run_cli(["robustness", str(path), "--out", str(tmp_path / "rob")], capsys)
        assert code != 0 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rob").exists()


def test_library_checks_before_loading_anything():
    with pytest.raises(ConfigError, match="no model"):
        run_robustness([])
    with pytest.raises(ConfigError, match="unknown noise kind"):
        run_robustness(["/nonexistent.pt"], robustness_options(noise="uniform"))


def test_models_with_the_same_file_name_are_told_apart(tiny_checkpoint, tmp_path):
    paths = []
    for d in ("g8", "dense"):
        (tmp_path / d).mkdir()
        paths.append(tmp_path / d / "best.pt")
        paths[-1].write_bytes(tiny_checkpoint.read_bytes())
    report = run_robustness(paths, robustness_options(ratio=0.5, ratios=[], limit=16))
    assert [m["label"] for m in report["models"]] == ["g8/best.pt (torch)", "dense/best.pt (torch)"]
    assert report["models"][1]["max_abs_accuracy_delta_vs_reference"] == 0.0  # same weights, same noisy images
