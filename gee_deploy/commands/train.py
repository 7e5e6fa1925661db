from __future__ import annotations

import click

from .options import OutPath, quiet_option, set_option


@click.command()
@click.argument("recipe", required=False)
@click.option("--out", "-o", required=True, type=OutPath(directory=True),
              help="Run directory to create (refused if it holds a run, unless --resume).")
@set_option
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch/generation.")
@quiet_option
def train(recipe, out, overrides, resume, quiet):
    """Train RECIPE (a TOML file, or a shipped recipe's name: gee-deploy recipes; defaults when omitted) into OUT.

    With [evolution] enabled = true, CMA-ES first evolves {beta1, beta2, G} (the paper's Algorithm 1),
    then the best phenotype is trained with surrogate gradients. OUT receives config.json, train.jsonl,
    best.pt and last.pt (and evolution.jsonl when evolving). Under torchrun, ranks share the work.
    """
    from ..recipe import load_recipe
    from ..training import train as run

    metrics = run(load_recipe(recipe, overrides), out, resume=resume, progress=not quiet)
    if metrics:
        click.echo(f"done: test acc {metrics.get('test_acc', float('nan')):.4f} "
                   f"(best {metrics.get('best_acc', float('nan')):.4f}); checkpoints in {out}")
