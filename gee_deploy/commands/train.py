from __future__ import annotations

import click

from .options import OutPath, quiet_option, recipe_inputs, refuse_replacing, set_option


@click.command()
@click.argument("recipe", required=False)
@click.option(
    "--out",
    "-o",
    required=True,
    type=OutPath(directory=True),
    help="Run directory to create (refused if it holds a run, unless --resume).",
)
@set_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last finished epoch/generation, with its own recipe: only "
    "train.epochs, evolution.generations and where it runs (device, threads, workers, data_dir, "
    "compile) may change; other changes are refused before anything is written (docs/training.md).",
)
@quiet_option
def train(recipe, out, overrides, resume, quiet):
    """Train RECIPE (a TOML file, or a shipped recipe's name: gee-deploy recipes; defaults when omitted) into OUT.

    With [evolution] enabled = true, CMA-ES first evolves {beta1, beta2, G} (the paper's Algorithm 1),
    then the best phenotype is trained with surrogate gradients. OUT receives config.json, train.jsonl,
    best.pt and last.pt (and evolution.jsonl when evolving). Under torchrun, ranks share the work.
    """
    from ..recipe import load_recipe
    from ..training import train as run

    loaded = load_recipe(recipe, overrides)
    refuse_replacing(out, recipe_inputs(recipe, loaded))
    metrics = run(loaded, out, resume=resume, progress=not quiet)
    if metrics:
        click.echo(
            f"done: test acc {metrics.get('test_acc', float('nan')):.4f} "
            f"(best {metrics.get('best_acc', float('nan')):.4f}); checkpoints in {out}"
        )
