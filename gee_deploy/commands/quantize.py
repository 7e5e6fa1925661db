from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
from pydantic import Field

from ..errors import ConfigError
from ..recipe import DEVICE, recipe_field
from .options import OutPath, Value, data_dir_option, quiet_option, refuse_replacing, with_range

FINE_TUNE_EPOCHS = Annotated[float, Field(gt=0, le=100_000)]
LR_SCALE = Annotated[float, Field(gt=0, le=1e6)]
_BATCH, _LIMIT = recipe_field("data.batch_size"), recipe_field("data.train_limit")


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    required=True,
    type=OutPath(directory=False),
    help="Quantised checkpoint to write: a .pt file (not CHECKPOINT) in an existing folder.",
)
@click.option(
    "--epochs",
    type=Value(FINE_TUNE_EPOCHS),
    default=0.5,
    show_default=True,
    help=with_range("Fine-tune length in passes over the training split (fractions allowed)", FINE_TUNE_EPOCHS),
)
@click.option(
    "--lr-scale",
    type=Value(LR_SCALE),
    default=0.02,
    show_default=True,
    help="Peak learning rate as a multiple of the recipe's train.lr (cosine decay to 0); a converged model "
    "lost 0.46 points at 0.1, 0.05 at 0.02 (docs/export.md).",
)
@click.option(
    "--batch-size",
    type=Value(_BATCH),
    default=None,
    help=with_range("Images per step; default: the recipe's data.batch_size", _BATCH),
)
@click.option(
    "--train-limit",
    type=Value(_LIMIT),
    default=None,
    help="Use only the first N training images (0: all, as data.train_limit).",
)
@click.option(
    "--test-limit",
    type=Value(_LIMIT),
    default=None,
    help="Evaluate on the first N test images (0: all, as data.test_limit).",
)
@data_dir_option("Where the checkpoint's dataset lives (default: its standard place).")
@click.option("--device", type=Value(DEVICE), default="auto", show_default=True, help="auto | cpu | cuda[:N].")
@quiet_option
def quantize(checkpoint, out, epochs, lr_scale, batch_size, train_limit, test_limit, data_dir, device, quiet):
    """Fine-tune CHECKPOINT so the stem's and every spike-reading layer's weight is int8 per output channel.

    A short quantisation-aware run (straight-through fake quantisation of the generated weights; the stem
    reads the image as 8-bit codes) on the checkpoint's own dataset. The result rebuilds its quantised model
    alone, and `gee-deploy export Q.pt --variant int8` writes a graph that gives its logits and spikes bit for
    bit on onnxruntime. Prints the fp32, untuned-int8 and fine-tuned-int8 test accuracies and the time taken.
    """
    from ..training.quantize import quantize as run
    from ..training.trainer import select_device

    if Path(out).suffix.lower() not in (".pt", ".pth"):
        raise ConfigError(
            f"--out {out}: quantize writes a checkpoint, a .pt file (export it to ONNX afterwards: "
            f"gee-deploy export {Path(out).with_suffix('.pt')} --variant int8 --out ...)"
        )
    refuse_replacing(out, [checkpoint, data_dir])
    select_device(device, key="--device")  # before any work: no CUDA here is one line naming the flag

    report = run(
        checkpoint,
        out,
        epochs=epochs,
        lr_scale=lr_scale,
        batch_size=batch_size,
        train_limit=train_limit or None,
        test_limit=test_limit or None,
        data_dir=data_dir,
        device=device,
        progress=not quiet,
    )
    click.echo(report.summary())
