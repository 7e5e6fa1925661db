from __future__ import annotations

import click


@click.command()
@click.argument("name", required=False)
def recipes(name):
    """List the recipes shipped in the package, or print recipe NAME (to copy and edit).

    Any command that takes a RECIPE accepts one of these names as well as a path:
    gee-deploy train demo --out runs/demo; gee-deploy recipes demo > mine.toml.
    """
    from ..recipe import read_recipe_file, recipe_from_dict, resolve_recipe, shipped_recipes

    if name is not None:
        recipe_from_dict(read_recipe_file(name)[0])  # a recipe, not any file: one error line otherwise
        click.echo(resolve_recipe(name).read_text(encoding="utf-8"), nl=False)
        return
    rows = []
    for shipped in shipped_recipes():
        data, description = read_recipe_file(shipped)
        recipe = recipe_from_dict(data)
        model = f"{recipe.model.name} g={recipe.model.genes}" if recipe.model.genes else f"{recipe.model.name} dense"
        rows.append((shipped, model, recipe.data.name, description))
    widths = [max(len(row[i]) for row in [("recipe", "model", "dataset", ""), *rows]) for i in range(3)]
    for row in [("recipe", "model", "dataset", "what it is for"), *rows]:
        click.echo("  ".join(f"{cell:<{w}}" for cell, w in zip(row[:3], widths)) + "  " + row[3])
