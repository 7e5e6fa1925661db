from __future__ import annotations

import sys
import zipfile
from dataclasses import replace

import click

from ..errors import ConfigError
from ..parity import ACCURACY_Z, Thresholds, accuracy_within_noise
from ..parity import INT8_PTQ_THRESHOLDS as _I
from .options import COUNT, FRACTION, NON_NEGATIVE, THREADS, Value, data_dir_option, onnx_runtime_option

_T = Thresholds()


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("onnx_model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option(
    "--min-agreement",
    default=None,
    type=Value(FRACTION),
    help=f"Lowest top-1 agreement with the checkpoint (fraction of samples) [default: "
    f"{_T.min_top1_agreement}; {_I.min_top1_agreement} for int8 layers the checkpoint was not "
    "fine-tuned for].",
)
@click.option(
    "--max-acc-delta",
    default=None,
    type=Value(FRACTION),
    help=f"Largest |accuracy - checkpoint accuracy| (fraction: 0.001 = 0.1 points) beyond sampling noise: the gate "
    f"fails when the paired difference exceeds it by more than {ACCURACY_Z} standard errors [default: "
    f"{_T.max_accuracy_delta}; post-training int8 {_I.max_accuracy_delta}].",
)
@click.option(
    "--max-spike-delta",
    default=None,
    type=Value(NON_NEGATIVE),
    help=f"Largest relative difference of the total spike count [default: {_T.max_spike_delta}; "
    f"post-training int8 {_I.max_spike_delta}].",
)
@click.option(
    "--min-speedup",
    default=_T.min_speedup,
    show_default=True,
    type=Value(NON_NEGATIVE),
    help="Lowest PyTorch-eager / onnxruntime latency ratio at batch 1 (p50, same run).",
)
@click.option("--dataset", default=None, help="Dataset (default: the model's own).")
@data_dir_option()
@click.option("--limit", default=1000, show_default=True, type=Value(COUNT), help="First N test samples (0: all).")
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=Value(THREADS),
    help="Intra-op threads for both runtimes (1 keeps the ratio stable on a shared CI machine).",
)
@onnx_runtime_option("MODEL.onnx")
def check(
    checkpoint,
    onnx_model,
    min_agreement,
    max_acc_delta,
    max_spike_delta,
    min_speedup,
    dataset,
    data_dir,
    limit,
    threads,
    kind,
):
    """CI gate: parity and batch-1 latency ratio of MODEL.onnx (onnxruntime CPU, or --runtime) against CHECKPOINT.

    The parity limits default to the export's own: fp32's,
    or the post-training int8 ones when MODEL.onnx has int8 layers and CHECKPOINT was not fine-tuned for them.
    Exits 1 with one line per failed gate; prints the measured values either way.
    """
    from ..checkpoint import load_checkpoint
    from ..evaluation.bench import check_options, run_check
    from ..kinds import Precision
    from ..ort_session import require_runtime
    from ..parity import validation_thresholds
    from ..spec import ModelSpec

    require_runtime(kind)
    if zipfile.is_zipfile(onnx_model) and not zipfile.is_zipfile(checkpoint):  # torch.save writes a zip
        raise ConfigError(
            f"{onnx_model} is a checkpoint and {checkpoint} is not: the arguments are swapped? "
            "usage: gee-deploy check CHECKPOINT MODEL.onnx"
        )
    if _is_hdf5(onnx_model):  # NIR files are HDF5 (NIR spec): a reference, not a graph to check
        raise ConfigError(
            f"{onnx_model} is a NIR file, not ONNX: check runs an ONNX file against the checkpoint or NIR file it "
            "came from; usage: gee-deploy check CHECKPOINT|SOURCE.nir MODEL.onnx"
        )
    int8 = any(layer.precision == Precision.INT8 for layer in ModelSpec.from_onnx(onnx_model).layers)
    base = validation_thresholds(
        int8,
        not checkpoint.lower().endswith(".nir")  # a NIR file: never fine-tuned
        and load_checkpoint(checkpoint).quantisation is not None,
    )
    given = {
        "min_top1_agreement": min_agreement,
        "max_accuracy_delta": max_acc_delta,
        "max_spike_delta": max_spike_delta,
        "min_speedup": min_speedup,
    }
    options = check_options(
        thresholds=replace(base, **{k: v for k, v in given.items() if v is not None}),
        dataset=dataset,
        data_dir=data_dir,
        limit=limit,
        threads=threads,
        kind=kind,
    )
    m, failures = run_check(checkpoint, onnx_model, options)
    p = m.parity
    ran = f"{m.precision}, {m.int8_layers} int8 layers" if m.int8_layers else m.precision
    click.echo(
        f"{p.samples} samples of {m.dataset}: top-1 agreement {p.top1_agreement:.4%}, accuracy "
        f"delta {p.accuracy_delta * 100:+.3f} points, spike-count delta {p.spike_count_delta:.4%}, "
        f"max logit diff {p.max_logit_diff:.2e}, batch-1 p50 torch {m.torch_p50_ms:.2f} ms / "
        f"{m.runtime} ({ran}) {m.ort_p50_ms:.2f} ms = {m.speedup:.2f}x"
    )
    limit = options.thresholds.max_accuracy_delta
    if accuracy_within_noise(p, options.thresholds):  # False without labels
        click.echo(
            f"note: |accuracy delta| {abs(p.accuracy_delta) * 100:.3f} points is above the {limit * 100:.3f}-point "
            f"limit but within {ACCURACY_Z} standard errors of it ({p.accuracy_lost} lost, {p.accuracy_gained} "
            f"gained of {p.samples} samples): too few samples to call it a loss; more with --limit",
            err=True,
        )
    for line in m.warnings:
        click.echo(f"warning: {line}", err=True)
    for line in failures:
        click.echo(f"FAIL: {line}", err=True)
    if failures:
        sys.exit(1)
    click.echo("check passed")


def _is_hdf5(path: str) -> bool:
    """Whether ``path`` starts with the HDF5 signature (the container of a NIR file)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False
