"""Robustness to input noise: the paper's Fig. 2 protocol, for checkpoints and deployed graphs alike.

Pan et al. (section IV-B, after TIC [41]) "add Gaussian noise whose L2 norm is set to 50% of the norm of the
given input". Per test image x (float32 [C, H, W], pixels in [0, 1], the graph's input contract):

.. math:: \\tilde x = x + r \\, \\lVert x \\rVert_2 \\, \\frac{z}{\\lVert z \\rVert_2}, \\quad z \\sim \\mathcal N(0, I)

so the noise's L2 norm is exactly ``r`` times the image's (r = 0.5 in the paper). Decisions the paper leaves
open, written down here:

* **The norm is taken on the [0, 1] pixels**, the input every runtime takes (normalisation happens inside
  the model and the graph), not on normalised tensors.
* **Noisy pixels are clipped to [0, 1] by default**, because the deployed graph's contract is pixels in
  [0, 1] (a camera or a decoded PNG cannot produce anything else), so an evaluation outside that range
  measures inputs the graph will never see. Clipping removes part of the noise (a black pixel cannot get
  darker), so the report gives the *realised* ratio ||x~ - x|| / ||x|| (mean over images) beside the nominal
  one. ``clip=False`` (``--no-clip``) evaluates the literal protocol, noise unbounded.
* **Paired draws.** One direction z / ||z|| per test image, drawn once from ``seed`` in sample order
  (``numpy.random.default_rng(seed).standard_normal``), is reused for every ratio and every model: the models
  see the same noisy images, curves over r are smooth, and the first n draws do not depend on ``limit``.
  A checkpoint and its ONNX export therefore differ only by what the export changed.

The report gives per model and ratio the accuracy and the spikes per image (read from the runtime's own
``spike_counts``), the clean-vs-noisy drop at the headline ratio in points, and, for every model after the
first, its accuracy difference and top-1 agreement with the first model on the same noisy images.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import load_test_arrays
from ..errors import ConfigError
from ..io import write_report_files
from ..parity import Outputs
from ..serving.runtimes import Runtime
from .bench import evaluate
from .provenance import provenance_warnings
from .runtimes import open_each

__all__ = [
    "NOISE_KINDS",
    "RobustnessOptions",
    "robustness_options",
    "noise_directions",
    "add_noise",
    "check_noise",
    "run_robustness",
    "write_robustness",
    "summary_table",
    "robustness_markdown",
]


def _gaussian(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


# noise kind -> draw of raw noise [N, C, H, W] (scaled per image afterwards); new kinds are one entry here
NOISE_KINDS: dict[str, Callable[[tuple[int, ...], int], np.ndarray]] = {"gaussian": _gaussian}


def _norms(x: np.ndarray) -> np.ndarray:
    """Per-sample L2 norm of [N, ...] -> [N] (float64, so 150k-pixel images sum without drift)."""
    return np.sqrt(np.square(x.reshape(len(x), -1), dtype=np.float64).sum(1))


def noise_directions(shape: tuple[int, ...], seed: int = 0, kind: str = "gaussian") -> np.ndarray:
    """One unit-L2-norm noise direction per sample.

    Args:
        shape: [N, C, H, W] of the images.
        seed: numpy seed; the draw is in sample order, so the first n directions do not depend on N.
        kind: a key of :data:`NOISE_KINDS`.

    Returns:
        float32 [N, C, H, W], each sample of L2 norm 1.

    Raises:
        ConfigError: unknown ``kind``.
    """
    if kind not in NOISE_KINDS:
        check_noise(kind, [])  # the one message for an unknown kind (run_robustness's options were checked)
    z = NOISE_KINDS[kind](tuple(shape), seed)
    return (z / _norms(z).reshape(-1, *[1] * (z.ndim - 1)).astype(np.float32)).astype(np.float32)


def add_noise(
    images: np.ndarray, directions: np.ndarray, ratio: float, clip: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``images`` plus noise of L2 norm ``ratio`` x each image's norm (module docstring).

    Args:
        images: float32 [N, C, H, W] in [0, 1].
        directions: unit-norm noise of the same shape (:func:`noise_directions`).
        ratio: noise norm / image norm, >= 0.
        clip: clip the noisy pixels to [0, 1].

    Returns:
        (noisy images float32 [N, C, H, W], realised ratio ||noisy - x|| / ||x|| per image [N]; NaN for an
        all-black image, which gets no noise).
    """
    norms = _norms(images)
    scale = (ratio * norms).astype(np.float32).reshape(-1, *[1] * (images.ndim - 1))
    noisy = images + scale * directions
    if clip:
        np.clip(noisy, 0.0, 1.0, out=noisy)
    with np.errstate(invalid="ignore", divide="ignore"):
        realised = _norms(noisy - images) / norms
    return noisy.astype(np.float32, copy=False), realised


def check_noise(kind: str, ratios: Sequence[float]) -> None:
    """Raise :class:`ConfigError` for an unknown noise kind or a ratio that is negative or not finite."""
    if kind not in NOISE_KINDS:
        raise ConfigError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}")
    bad = [r for r in ratios if not math.isfinite(r) or r < 0]
    if bad:
        raise ConfigError(f"noise ratios must be finite and >= 0 (noise L2 norm / image L2 norm), got {bad[0]:g}")


@dataclass(frozen=True, kw_only=True)
class RobustnessOptions:
    """What `gee-deploy robustness` measures (the paper's Fig. 2 protocol).

    Attributes:
        noise: a key of :data:`NOISE_KINDS`.
        ratio: the headline noise L2 norm / image L2 norm (the paper's 0.5) the clean-vs-noisy drop is reported at.
        ratios: every ratio of the curve, sorted: 0 (clean), ``ratio`` and the ones asked for.
        seed: seed of the noise directions (the same for every model).
        clip: clip noisy pixels to [0, 1], the graph's input range.
        dataset, data_dir, limit, threads: as for :class:`~.bench.BenchOptions` (``limit`` None: all test images).
        batch_size: images per runtime call (>= 1).
        onnx_kind: the onnxruntime runtime of the ONNX files (:data:`gee_deploy.ort_session.PROVIDERS`: its CPU
            provider by default, ``openvino`` for OpenVINO in f32 through onnxruntime's plugin).
    """

    noise: str = "gaussian"
    ratio: float = 0.5
    ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seed: int = 0
    clip: bool = True
    dataset: str | None = None
    data_dir: Path | None = None
    limit: int | None = None
    threads: int | None = None
    batch_size: int = 256
    onnx_kind: str = "ort-cpu"


def robustness_options(
    *,
    noise: str = "gaussian",
    ratio: float = 0.5,
    ratios: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    seed: int = 0,
    clip: bool = True,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    threads: int | None = None,
    batch_size: int = 256,
    onnx_kind: str = "ort-cpu",
) -> RobustnessOptions:
    """The checked :class:`RobustnessOptions`: ``ratios`` becomes the sorted grid with 0 and ``ratio`` added;
    ``limit`` 0 or None: every test image.

    Raises:
        ConfigError: an unknown noise kind, a ratio that is negative or not finite, a batch size below 1.
    """
    grid = tuple(sorted({0.0, float(ratio), *(float(r) for r in ratios)}))
    check_noise(noise, grid)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    return RobustnessOptions(
        noise=noise,
        ratio=float(ratio),
        ratios=grid,
        seed=seed,
        clip=clip,
        dataset=dataset,
        data_dir=None if data_dir is None else Path(data_dir),
        limit=limit or None,
        threads=threads,
        batch_size=batch_size,
        onnx_kind=onnx_kind,
    )


def _labels(runtimes: list[Runtime]) -> list[str]:
    """``file (runtime)``, the file named by as many trailing path parts as it takes to tell them apart
    (``g32/last.pt`` and ``dense/last.pt``), with an index where even the full paths are equal."""
    parts = [r.path.absolute().parts for r in runtimes]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = [f"{'/'.join(p[-depth:])} ({r.name})" for p, r in zip(parts, runtimes)]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} #{i + 1}" for i, label in enumerate(labels)]


def _dataset(runtimes: list[Runtime], dataset: str | None) -> str:
    if dataset:
        return dataset
    named = {r.spec.dataset for r in runtimes if r.spec.dataset}
    if not named:
        raise ConfigError("the models do not name their dataset; pass --dataset")
    if len(named) > 1:
        raise ConfigError(
            f"the models were trained on different datasets ({', '.join(sorted(named))}); a paired "
            "comparison needs one: pass --dataset"
        )
    return named.pop()


def _accuracy(ev: Outputs) -> float:
    """Top-1 accuracy of one evaluation; robustness runs on labelled test images, so there always is one."""
    accuracy = ev.accuracy
    assert accuracy is not None, "robustness evaluates labelled images"
    return accuracy


def run_robustness(
    models: Sequence[str | os.PathLike],
    options: RobustnessOptions = RobustnessOptions(),
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Accuracy of every model under noise of each ratio, on the same noisy test images (paper Fig. 2).

    Args:
        models: checkpoints (.pt, run on PyTorch eager), ONNX files (on ``options.onnx_kind``), TensorRT plans, NIR files
            (the NIR executor; the graph converted from the file must be among the models), each through
            :func:`gee_deploy.serving.runtimes.open_each`. The first is the reference of the paired comparison.
        options: the noise, its ratios and seed, clipping, data, threads and batch size
            (:func:`robustness_options`).
        progress: callable(str) told what runs now.

    Returns:
        The report (:func:`write_robustness` writes it): ``noise`` settings, ``dataset``, ``samples``,
        ``ratios``, ``realised_ratios`` and one entry per model under ``models``.

    Raises:
        ConfigError: no model, a file not found, models of different datasets or an input shape the dataset
            does not have. ModelFileError / CheckpointError: a file that cannot be opened.
    """
    say = progress or (lambda msg: None)
    grid, ratio, noise, clip, seed = list(options.ratios), options.ratio, options.noise, options.clip, options.seed
    if not models:
        raise ConfigError("no model given")
    for path in models:
        if not Path(path).is_file():
            raise ConfigError(f"{path} not found")
    started = time.perf_counter()
    opened = open_each(list(models), options.threads, options.onnx_kind)
    name = _dataset(opened, options.dataset)
    images, labels = load_test_arrays(name, options.data_dir, options.limit)
    for rt in opened:
        if tuple(rt.spec.input_shape) != tuple(images.shape[1:]):
            raise ConfigError(
                f"{rt.path} takes [N, {', '.join(map(str, rt.spec.input_shape))}] but {name} images "
                f"are {list(images.shape[1:])}"
            )
    directions = noise_directions(images.shape, seed, noise)
    evals: list[list[Outputs]] = [[] for _ in opened]
    realised = []
    for r in grid:
        noisy, per_image = add_noise(images, directions, r, clip)
        realised.append(float(np.nanmean(per_image)) if np.isfinite(per_image).any() else 0.0)
        for i, rt in enumerate(opened):
            say(f"{rt.path.name} ({rt.name}): ratio {r:g}, {len(images)} images")
            evals[i].append(evaluate(rt, noisy, labels, options.batch_size))
    labels_ = _labels(opened)
    entries = []
    ref = evals[0]
    head = grid.index(float(ratio))
    for rt, label, ev in zip(opened, labels_, evals):
        points = [
            {"ratio": r, "accuracy": _accuracy(e), "spikes_per_sample": e.spikes_per_sample} for r, e in zip(grid, ev)
        ]
        if ev is not ref:
            for p, e, e_ref in zip(points, ev, ref):
                p["accuracy_delta_vs_reference"] = _accuracy(e) - _accuracy(e_ref)
                p["top1_agreement_vs_reference"] = float((e.logits.argmax(1) == e_ref.logits.argmax(1)).mean())
        clean, noisy_acc = _accuracy(ev[0]), _accuracy(ev[head])
        entries.append(
            {
                "label": label,
                "path": str(rt.path),
                "runtime": rt.name,
                "precision": rt.describe().get("precision"),
                "variant": rt.spec.variant,
                "model_name": rt.spec.model_name,
                "checkpoint_sha256": rt.spec.checkpoint_sha256,
                "clean_accuracy": clean,
                "noisy_accuracy": noisy_acc,
                "drop_points": 100 * (clean - noisy_acc),
                "relative_drop": (clean - noisy_acc) / clean if clean else None,
                "max_abs_accuracy_delta_vs_reference": (
                    max(abs(p["accuracy_delta_vs_reference"]) for p in points) if ev is not ref else None
                ),
                "points": points,
            }
        )
    return {
        "protocol": "paper Fig. 2: x + r ||x||_2 z/||z||_2, z ~ N(0, I), per image on [0, 1] pixels",
        "noise": {"kind": noise, "ratio": float(ratio), "seed": seed, "clip": clip},
        "dataset": name,
        "samples": int(len(images)),
        "ratios": grid,
        "realised_ratios": realised,
        "reference": labels_[0],
        "models": entries,
        "minutes": (time.perf_counter() - started) / 60,
        "warnings": provenance_warnings(opened, options.dataset),
    }


def summary_table(report: dict) -> str:
    """The headline table: per model, clean and noisy accuracy at the headline ratio and the drop (Markdown)."""
    n = report["noise"]
    lines = [
        f"Clean vs {n['kind']} noise at r = {n['ratio']:g} (realised "
        f"{report['realised_ratios'][report['ratios'].index(n['ratio'])]:.3f}) on {report['dataset']}, "
        f"{report['samples']} test images:",
        "",
        "| model | runtime | clean acc (%) | noisy acc (%) | drop (points) | max abs delta vs "
        f"{report['reference']} over ratios (points) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in report["models"]:
        delta = m["max_abs_accuracy_delta_vs_reference"]
        lines.append(
            f"| {m['label']} | {m['runtime']} | {100 * m['clean_accuracy']:.2f} | "
            f"{100 * m['noisy_accuracy']:.2f} | {m['drop_points']:.2f} | "
            f"{'-' if delta is None else f'{100 * delta:.2f}'} |"
        )
    return "\n".join(lines)


def robustness_markdown(report: dict) -> str:
    """The report as Markdown: the headline table, then accuracy and spikes per image per ratio."""
    n = report["noise"]
    clip = "clipped to [0, 1]" if n["clip"] else "not clipped"
    out = [
        f"# Robustness to {n['kind']} noise ({report['dataset']}, {report['samples']} test images)",
        "",
        f"Protocol: {report['protocol']}; noisy pixels {clip}; seed {n['seed']}, the same noisy images for "
        f"every model. {report['minutes']:.1f} minutes.",
        "",
        summary_table(report),
    ]
    for title, key, fmt in (
        ("Accuracy (%) per ratio", "accuracy", lambda v: f"{100 * v:.2f}"),
        ("Spikes per image per ratio", "spikes_per_sample", lambda v: f"{v:,.0f}"),
    ):
        out += [
            "",
            f"## {title}",
            "",
            "| r | realised r | " + " | ".join(m["label"] for m in report["models"]) + " |",
            "|---:|---:|" + "---:|" * len(report["models"]),
        ]
        for i, (r, real) in enumerate(zip(report["ratios"], report["realised_ratios"])):
            out.append(
                f"| {r:g} | {real:.3f} | " + " | ".join(fmt(m["points"][i][key]) for m in report["models"]) + " |"
            )
    return "\n".join(out) + "\n"


def _figure(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, spk_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, m in enumerate(report["models"]):
        rs = [p["ratio"] for p in m["points"]]
        style = dict(marker="o", linestyle="-" if i == 0 else "--", label=m["label"])
        acc_ax.plot(rs, [100 * p["accuracy"] for p in m["points"]], **style)
        spk_ax.plot(rs, [p["spikes_per_sample"] for p in m["points"]], **style)
    for ax in (acc_ax, spk_ax):
        ax.axvline(report["noise"]["ratio"], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("noise L2 norm / image L2 norm")
        ax.grid(alpha=0.3)
    acc_ax.set(ylabel="test accuracy (%)", title=f"{report['noise']['kind']} noise on {report['dataset']}")
    spk_ax.set(ylabel="spikes per image", title="spikes per image")
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_robustness(report: dict, out: str | os.PathLike) -> list[Path]:
    """Write ``out``/robustness.json, robustness.md and robustness.png (each atomically); returns the paths."""
    return write_report_files(out, "robustness", report, robustness_markdown(report), _figure(report))
