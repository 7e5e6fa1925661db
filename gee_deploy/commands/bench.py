from __future__ import annotations

import click

from .options import check_out_dir


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be >= 1")
    return sizes


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Directory for report.json, report.md and the plots.")
@click.option("--runtimes", default=None, metavar="A,B",
              help="Runtimes to use: torch, ort-cpu, ort-cuda, ort-trt, tensorrt (default: all that apply here).")
@click.option("--batch-sizes", default="1,16,64", callback=_int_list, show_default=True,
              help="Batch sizes to time.")
@click.option("--dataset", default=None, help="Dataset for accuracy and spikes (default: the model's own).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where the dataset lives.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=0),
              help="First N test samples (0: all).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Intra-op threads for every runtime (default: each runtime's own).")
@click.option("--min-time", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds of timed calls per runtime and batch size.")
@click.option("--profile-ops", is_flag=True,
              help="Add onnxruntime's per-operator time split (its profiler, at the largest batch) to the report.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the table.")
def bench(models, out, runtimes, batch_sizes, dataset, data_dir, limit, threads, min_time, profile_ops, quiet):
    """Benchmark MODELS (checkpoints, ONNX files, TensorRT plans) against the reference: the PyTorch checkpoint, or
    for a graph converted from a NIR file, that .nir file run by the spec-only NIR executor (give both files).

    Per runtime and batch size: latency p50/p90/p99 and throughput; accuracy, top-1 agreement and max logit
    diff vs the checkpoint; spikes per sample, firing rate per layer and eq. 17 energy from the runtime's
    own spike counts; with --profile-ops, where each onnxruntime graph's time goes, per operator type.
    Writes OUT/report.json, report.md, latency.png, firing_rate.png, energy.png.
    """
    from ..serving.bench import run_bench
    from ..serving.report import summary_table, write_report

    check_out_dir(out)  # fail before minutes of timing, not after
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    report = run_bench(list(models), runtimes.split(",") if runtimes else None, batch_sizes, dataset, data_dir,
                       limit or None, threads, min_time, progress=say, profile=profile_ops)
    write_report(report, out)
    click.echo(summary_table(report))
    if not quiet:
        click.echo(f"report: {out}/report.md")
