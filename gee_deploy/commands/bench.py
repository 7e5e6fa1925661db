from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
from pydantic import Field

from ..evaluation.runtimes import RUNTIMES
from ..recipe import recipe_field
from .options import (
    COUNT,
    THREADS,
    ChoiceList,
    NumberList,
    OutPath,
    Value,
    data_dir_option,
    refuse_replacing,
    with_range,
)

_BATCH = recipe_field("data.batch_size")
MIN_TIME = Annotated[float, Field(ge=0, le=3600)]  # seconds per runtime and batch size


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    required=True,
    type=OutPath(directory=True),
    help="Directory for report.json, report.md and the plots.",
)
@click.option(
    "--runtimes",
    default=None,
    type=ChoiceList(RUNTIMES),
    help=f"Runtimes to use: {', '.join(RUNTIMES)} (default: torch for a checkpoint; ort-cpu, and ort-cuda where "
    "present, for an ONNX file; the NIR executor for a .nir file; tensorrt for a plan; openvino on request).",
)
@click.option(
    "--batch-sizes",
    default="1,16,64",
    type=NumberList(_BATCH),
    show_default=True,
    help=with_range("Batch sizes to time, each", _BATCH),
)
@click.option("--dataset", default=None, help="Dataset for accuracy and spikes (default: the model's own).")
@data_dir_option()
@click.option("--limit", default=1000, show_default=True, type=Value(COUNT), help="First N test samples (0: all).")
@click.option(
    "--threads",
    default=None,
    type=Value(THREADS),
    help="Intra-op threads for every runtime (default: each runtime's own).",
)
@click.option(
    "--min-time",
    default=1.0,
    show_default=True,
    type=Value(MIN_TIME),
    help=with_range("Seconds of timed calls per runtime and batch size", MIN_TIME),
)
@click.option(
    "--profile-ops",
    is_flag=True,
    help="Add onnxruntime's per-operator time split (its profiler, at the largest batch) to the report.",
)
@click.option(
    "--neurobench",
    "neurobench_json",
    is_flag=True,
    help="Also write OUT/neurobench/<runtime>.json: NeuroBench's metrics in the layout its "
    "Benchmark.save_benchmark_results writes.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the table.")
def bench(
    models, out, runtimes, batch_sizes, dataset, data_dir, limit, threads, min_time, profile_ops, neurobench_json, quiet
):
    """Benchmark MODELS (checkpoints, ONNX files, TensorRT plans) against the reference: the PyTorch checkpoint, or
    for a graph converted from a NIR file, that .nir file run by the spec-only NIR executor (give both files).

    Per runtime and batch size: latency p50/p90/p99 and throughput; accuracy, top-1 agreement and max logit
    diff vs the checkpoint; spikes per sample, firing rate per layer and eq. 17 energy from the runtime's
    own spike counts; NeuroBench's metrics (footprint, connection and activation sparsity, effective ACs / MACs,
    dense ops, membrane updates; docs/neurobench.md) counted from each runtime's own graph; with --profile-ops,
    where each onnxruntime graph's time goes, per operator type.
    Writes OUT/report.json, report.md, latency.png, firing_rate.png, energy.png (and with --neurobench,
    OUT/neurobench/<runtime>.json).

    A streaming export (export --streaming), optionally with the unrolled export beside it, is benched as a
    stream instead (docs/streaming.md): per-step latency, and steps/s with N concurrent sequences (--batch-sizes)
    through the server; OUT/stream_report.json and streaming.png.
    """
    from ..evaluation.streambench import is_streaming

    if any(is_streaming(m) for m in models):
        return _bench_stream(models, out, batch_sizes, threads, min_time, quiet)
    from ..evaluation.bench import bench_options, run_bench
    from ..evaluation.report import summary_table, write_neurobench, write_report

    refuse_replacing(out, [*models, data_dir])
    options = bench_options(
        runtimes=runtimes or None,
        batch_sizes=batch_sizes,
        dataset=dataset,
        data_dir=data_dir,
        limit=limit,
        threads=threads,
        min_time=min_time,
        profile_ops=profile_ops,
    )
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    report = run_bench(list(models), options, progress=say)
    write_report(report, out)
    if neurobench_json:
        write_neurobench(report, out)
    click.echo(summary_table(report))
    for line in report["warnings"]:
        click.echo(f"warning: {line}", err=True)
    if not quiet:
        click.echo(f"report: {Path(out) / 'report.md'}")


def _bench_stream(models, out, concurrency, threads, min_time, quiet) -> None:
    from ..evaluation.streambench import run_stream_bench, stream_table, write_stream_report

    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    report = run_stream_bench(list(models), list(concurrency), threads, min_time, progress=say)
    paths = write_stream_report(report, out)
    click.echo(stream_table(report))
    if not quiet:
        click.echo(f"report: {paths[0]}")
