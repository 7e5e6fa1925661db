from __future__ import annotations

import click

from ..recipe import GENES, describe
from .options import NumberList, OutPath, quiet_option, recipe_inputs, refuse_replacing, set_option


@click.command()
@click.argument("recipe")
@click.option(
    "--genes",
    "-g",
    required=True,
    type=NumberList(GENES),
    help=f"Gene counts to train, e.g. 4,8,16,32, each {describe(GENES)}; 0 = the dense twin, as "
    "model.genes = 0 in a recipe, and always trained (--genes 0 trains only the dense twin).",
)
@click.option(
    "--models",
    default=None,
    metavar="A,B",
    help="Architectures to sweep (default: the recipe's; see `gee-deploy models`).",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=OutPath(directory=True),
    help="Sweep directory: one run per point, sweep.json, sweep.md, sweep.png.",
)
@set_option
@quiet_option
def sweep(recipe, genes, models, out, overrides, quiet):
    """Gene scale (the paper's Fig. 3): train RECIPE (a TOML file or a shipped recipe's name) at every g of
    --genes and as the dense twin.

    Reports per point the final-epoch test accuracy, parameters (and their share of the dense twin's), MACs,
    spikes and eq. 17 energy per image. Re-running the same command reuses finished points and resumes an
    interrupted one.
    """
    from ..recipe import load_recipe
    from ..training.sweep import run_sweep, sweep_markdown

    model_list = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    loaded = load_recipe(recipe, overrides)
    refuse_replacing(out, recipe_inputs(recipe, loaded))
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    summary = run_sweep(loaded, list(genes), out, model_list, progress=say)
    click.echo(sweep_markdown(summary).rstrip())
    if not quiet:
        click.echo(f"report: {out}/sweep.md")
