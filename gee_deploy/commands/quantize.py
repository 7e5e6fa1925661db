from __future__ import annotations

import click

from .options import quiet_option


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Quantised checkpoint to write.")
@click.option("--epochs", type=float, default=0.5, show_default=True,
              help="Fine-tune length in passes over the training split (fractions allowed).")
@click.option("--lr-scale", type=float, default=0.02, show_default=True,
              help="Peak learning rate as a multiple of the recipe's train.lr (cosine decay to 0); a converged model "
                   "lost 0.46 points at 0.1, 0.05 at 0.02 (docs/export.md).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the recipe's.")
@click.option("--train-limit", type=click.IntRange(min=1), default=None, help="Use only the first N training images.")
@click.option("--test-limit", type=click.IntRange(min=1), default=None, help="Evaluate on the first N test images.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the checkpoint's dataset lives, if not at its default place.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N].")
@quiet_option
def quantize(checkpoint, out, epochs, lr_scale, batch_size, train_limit, test_limit, data_dir, device, quiet):
    """Fine-tune CHECKPOINT so every spike-reading layer's weight is int8 per output channel.

    A short quantisation-aware run (straight-through fake quantisation of the generated weights; the stem
    stays fp32) on the checkpoint's own dataset. The result rebuilds its quantised model alone, and
    `gee-deploy export Q.pt --variant int8` writes a graph whose int8 weights are exactly those it trained
    with. Prints the fp32, untuned-int8 and fine-tuned-int8 test accuracies and the time taken.
    """
    from ..training.quantize import quantize as run

    report = run(checkpoint, out, epochs=epochs, lr_scale=lr_scale, batch_size=batch_size,
                 train_limit=train_limit, test_limit=test_limit, data_dir=data_dir, device=device,
                 progress=not quiet)
    click.echo(report.summary())
