from __future__ import annotations

from typing import Annotated

import click
from pydantic import Field

from .options import OutPath, Value, quiet_option, recipe_inputs, refuse_replacing, set_option, with_range

SEEDS = Annotated[int, Field(ge=1, le=1000)]


@click.command()
@click.argument("recipe")
@click.option(
    "--seeds",
    "-n",
    type=Value(SEEDS),
    default=3,
    show_default=True,
    help=with_range("Runs per variant, seeded train.seed + i", SEEDS),
)
@click.option("--out", "-o", required=True, type=OutPath(directory=True), help="Directory for runs and report.")
@click.option(
    "--variants",
    default=None,
    metavar="LIST",
    help="Comma-separated variants: random, baseline, r1, r2, ste (eq. 16 as written) and r1-scaled, "
    "r2-scaled, ste-scaled (each term standardised across the generation), or a fitness mode's "
    "name (loss = baseline, loss+r1-scaled = r1-scaled, ...); default: random, baseline, r1-scaled, "
    "r2-scaled, ste-scaled.",
)
@set_option
@quiet_option
def ablate(recipe, seeds, out, variants, overrides, quiet):
    """Table IV ablation of RECIPE (a TOML file or a shipped recipe's name, e.g. ablation_fmnist): Random,
    Baseline (f = L), + r1, + r2, STE, over --seeds seeds.

    Writes OUT/ablation.json, ablation.md (mean +- std test accuracy) and ablation.png, one run directory
    per variant and seed (with evolution.png). Re-running the command reuses finished runs and resumes
    interrupted ones.
    """
    from ..recipe import load_recipe
    from ..training.ablation import run_ablation

    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    loaded = load_recipe(recipe, overrides)
    refuse_replacing(out, recipe_inputs(recipe, loaded))
    summary = run_ablation(loaded, seeds, out, chosen, progress=not quiet)
    width = max([5] + [len(r["label"]) for r in summary["variants"]])
    click.echo(f"{'model':<{width}} {'test acc (%)':>16}")
    for r in summary["variants"]:
        click.echo(f"{r['label']:<{width}} {100 * r['mean']:>8.2f} ± {100 * r['std']:.2f}")
    click.echo(f"report: {out}/ablation.md ({summary['minutes']:.1f} minutes)")
