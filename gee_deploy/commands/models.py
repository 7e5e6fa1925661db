from __future__ import annotations

import json

import click

from ..recipe import GENES, describe
from .options import Value


@click.command()
@click.option(
    "--genes",
    "-g",
    type=Value(GENES),
    default=None,
    help=f"g for the genetic counts, {describe(GENES)}; 0 = the dense twin, as model.genes = 0 in a "
    "recipe (default: each model's own).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def models(genes, as_json):
    """List architectures: dense-twin parameters, genetic parameters at --genes, compression."""
    from ..zoo import list_models
    from ..zoo.summary import parameter_table

    rows = parameter_table(list_models(), genes)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'model':<10} {'genes':>5} {'dense params':>14} {'genetic params':>15} {'genetic/dense':>14}")
    for r in rows:
        click.echo(
            f"{r['model']:<10} {r['genes']:>5} {r['dense_params']:>14,} {r['genetic_params']:>15,} {r['ratio']:>13.1%}"
        )
