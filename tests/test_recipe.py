"""Recipes: defaults, TOML files, --set overrides and their errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from gee_deploy.errors import ConfigError
from gee_deploy.recipe import load_recipe, parse_override

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.model.name and recipe.train.epochs >= 1


def test_overrides_parse_toml_literals():
    assert parse_override("train.lr=1e-3") == ("train", "lr", 1e-3)
    assert parse_override("evolution.enabled=true") == ("evolution", "enabled", True)
    assert parse_override("data.name=cifar10") == ("data", "name", "cifar10")
    recipe = load_recipe(MODELS / "demo.toml", ["train.epochs=7", "train.lr=1", "model.genes=0"])
    assert recipe.train.epochs == 7 and recipe.train.lr == 1.0 and recipe.model_kwargs()["genes"] is None


@pytest.mark.parametrize("override,message", [
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("train.epochs=1.5", "train.epochs must be an integer"),
    ("evolution.enabled=3", "must be true or false"),
    ("train.nope=1", "unknown key train.nope"),
    ("bogus.key=1", "unknown recipe section"),
    ("noequals", "section.key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [override])


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(bad)


def test_model_section_passes_architecture_arguments_through():
    recipe = load_recipe(None, ["model.image_size=32"])
    assert recipe.model_kwargs()["image_size"] == 32
