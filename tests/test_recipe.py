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


def test_model_init_reaches_the_genetic_layers():
    """model.init = "paper" builds W = E_in G E_out^T with no constant (eq. 1); the default keeps the
    Kaiming-matched scale; anything else is a one-line error before work starts."""
    import torch

    from gee_deploy.genetic import INITS, GeneticConv2d
    from gee_deploy.recipe import ALLOWED
    from gee_deploy.training.setup import build_recipe_model

    assert ALLOWED["model.init"].choices == INITS
    default = load_recipe(None)
    assert default.model.init == "kaiming" and default.model_kwargs()["init"] == "kaiming"
    for path in ("tableiv_resnet19.toml", "tableiv_vgg11.toml"):
        recipe = load_recipe(MODELS / path, ["data.name=synthetic"])
        model = build_recipe_model(recipe)
        scales = {m.scale.item() for m in model.modules() if isinstance(m, GeneticConv2d)}
        assert recipe.model.init == "paper" and scales == {1.0}, path
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    kaiming = build_recipe_model(load_recipe(MODELS / "tableiv_resnet19.toml", ["data.name=synthetic",
                                                                                 "model.init=kaiming"]))
    assert all(m.scale.item() < 0.1 for m in kaiming.modules() if isinstance(m, GeneticConv2d))
    with pytest.raises(ConfigError, match="model.init must be one of kaiming, paper, got 'xavier'"):
        load_recipe(None, ["model.init=xavier"])


# ---- every value checked before any work starts ---------------------------------------------------------

def _numeric_keys():
    import dataclasses

    from gee_deploy.recipe import Recipe

    recipe = Recipe()
    return sorted(f"{section.name}.{field.name}" for section in dataclasses.fields(recipe)
                  for field in dataclasses.fields(getattr(recipe, section.name))
                  if field.type in ("int", "float", int, float))


def test_every_numeric_key_has_a_declared_range_and_the_defaults_lie_inside():
    from gee_deploy.recipe import ALLOWED, Recipe, check_recipe

    assert set(_numeric_keys()) <= set(ALLOWED)
    check_recipe(Recipe())
    for path in sorted(MODELS.glob("*.toml")):
        load_recipe(path)  # the shipped recipes pass their own checks


def _outside(allowed, integer: bool):
    """A value just outside ``allowed`` (above the top when there is one, else below the bottom)."""
    if allowed.high is not None:
        return allowed.high if allowed.high_open else allowed.high + (1 if integer else allowed.high * 1e-9 + 1e-9)
    if allowed.low_open:
        return allowed.low
    return allowed.low - 1


@pytest.mark.parametrize("key", _numeric_keys())
def test_each_numeric_key_refuses_values_outside_its_range(key):
    from gee_deploy.recipe import ALLOWED, Recipe

    section, name = key.split(".")
    integer = isinstance(getattr(getattr(Recipe(), section), name), int)
    allowed = ALLOWED[key]
    bad = [_outside(allowed, integer)]
    if allowed.low is not None:
        below = allowed.low if allowed.low_open else allowed.low - 1
        if not (allowed.zero and below == 0):
            bad.append(below)
    if not integer:
        bad += [float("nan"), float("inf"), -float("inf")]
    for value in bad:
        literal = {float("inf"): "inf", -float("inf"): "-inf"}.get(value, repr(value))
        with pytest.raises(ConfigError, match=rf"^{key} must be (0 or )?an? (integer|finite number)"):
            load_recipe(None, [f"{key}={literal}"])


def test_range_messages_name_the_range():
    with pytest.raises(ConfigError, match=r"^data\.batch_size must be an integer in \[1, 1048576\], got 0$"):
        load_recipe(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^evolution\.population must be 0 or an integer in \[2, 100000\], got 1$"):
        load_recipe(None, ["evolution.population=1"])
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number in \(0, 100\], got 0\.0$"):
        load_recipe(None, ["train.lr=0"])
    with pytest.raises(ConfigError, match=r"^train\.optimizer must be one of adamw, sgd, got 'adam'$"):
        load_recipe(None, ["train.optimizer=adam"])


@pytest.mark.parametrize("settings, words", [
    (["data.batch_size=0"], "error: data.batch_size must be an integer in [1, 1048576], got 0"),
    (["evolution.enabled=true", "evolution.lambda1=1000"],
     "error: evolution.lambda1 must be a finite number in [-1000000, 0], got 1000.0"),
    (["evolution.lambda2=1e400"], "error: evolution.lambda2 must be a finite number in [-1000000, 0], got inf"),
    (["data.train_limit=10"], "error: data.batch_size=64 is more than the 10 training images after "
                              "data.train_limit=10: an epoch (full batches only) would take no optimiser step; "
                              "allowed data.batch_size <= 10"),
    (["evolution.enabled=true", "evolution.eval_batches=100"], "error: evolution needs at least 6464 training images"),
    (["model.name=nonet"], "error: unknown model 'nonet'"),
    (["data.name=nodata"], "error: unknown dataset"),
])
def test_cli_refuses_a_bad_recipe_in_one_line_and_writes_nothing(tmp_path, capsys, settings, words):
    from gee_deploy.cli import main

    out = tmp_path / "run"
    args = ["train", str(MODELS / "demo.toml"), "--out", str(out), "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2  # ConfigError / DataError
    err = capsys.readouterr().err.strip()
    assert err.startswith(words) and len(err.splitlines()) == 1, err
    assert not out.exists()  # no run directory left behind
