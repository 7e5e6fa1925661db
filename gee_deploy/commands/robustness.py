from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
from pydantic import Field

from ..recipe import recipe_field
from .options import (
    COUNT,
    SEED,
    THREADS,
    NumberList,
    OutPath,
    Value,
    data_dir_option,
    onnx_runtime_option,
    quiet_option,
    refuse_replacing,
    with_range,
)

_BATCH = recipe_field("data.batch_size")
RATIO = Annotated[float, Field(ge=0, le=1000)]  # noise L2 norm / image L2 norm


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    required=True,
    type=OutPath(directory=True),
    help="Directory for robustness.json, robustness.md and robustness.png.",
)
@click.option("--noise", default="gaussian", show_default=True, help="Noise kind (gaussian).")
@click.option(
    "--ratio",
    default=0.5,
    show_default=True,
    type=Value(RATIO),
    help=with_range("Headline noise L2 norm / image L2 norm (the paper's 50%) for the clean-vs-noisy drop", RATIO),
)
@click.option(
    "--ratios",
    default="0,0.25,0.5,0.75,1",
    show_default=True,
    type=NumberList(RATIO),
    help="Ratios of the curve (0 and --ratio are always added).",
)
@click.option(
    "--seed", default=0, show_default=True, type=Value(SEED), help="Seed of the noise (the same for every model)."
)
@click.option(
    "--clip/--no-clip",
    default=True,
    show_default=True,
    help="Clip noisy pixels to [0, 1], the graph's input range (--no-clip: the literal protocol).",
)
@click.option("--dataset", default=None, help="Test split to use (default: the models' own).")
@data_dir_option()
@click.option("--limit", default=0, show_default=True, type=Value(COUNT), help="First N test images (0: all).")
@click.option("--threads", default=None, type=Value(THREADS), help="Intra-op threads for every runtime.")
@click.option(
    "--batch-size",
    default=256,
    show_default=True,
    type=Value(_BATCH),
    help=with_range("Images per runtime call", _BATCH),
)
@onnx_runtime_option("the ONNX files")
@quiet_option
def robustness(
    models, out, noise, ratio, ratios, seed, clip, dataset, data_dir, limit, threads, batch_size, kind, quiet
):
    """Accuracy of MODELS (checkpoints, ONNX files, TensorRT plans, NIR files with the ONNX file converted from
    them) under additive noise scaled per image to
    a fraction of the image's L2 norm: the paper's Fig. 2 protocol.

    Every model sees the same noisy images (paired comparison; the first model is the reference), so a
    checkpoint and its export can be compared ratio by ratio. Prints the clean-vs-noisy table and writes
    OUT/robustness.json, robustness.md and robustness.png.
    """
    from ..evaluation.robustness import robustness_options, run_robustness, summary_table, write_robustness
    from ..ort_session import require_runtime

    refuse_replacing(out, [*models, data_dir])
    options = robustness_options(
        noise=noise,
        ratio=ratio,
        ratios=ratios,
        seed=seed,
        clip=clip,
        dataset=dataset,
        data_dir=data_dir,
        limit=limit,
        threads=threads,
        batch_size=batch_size,
        onnx_kind=kind,
    )
    require_runtime(kind)
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    report = run_robustness(list(models), options, progress=say)
    write_robustness(report, out)
    click.echo(summary_table(report))
    for line in report["warnings"]:
        click.echo(f"warning: {line}", err=True)
    if not quiet:
        click.echo(f"report: {Path(out) / 'robustness.md'}")
