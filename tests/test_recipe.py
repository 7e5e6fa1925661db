"""Recipes: defaults, TOML files, --set overrides and their errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from gee_deploy.errors import ConfigError
from gee_deploy.recipe import load_recipe, parse_override, read_recipe_file, resolve_recipe, shipped_recipes

RECIPES = Path(__file__).resolve().parent.parent / "gee_deploy" / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.model.name and recipe.train.epochs >= 1


def test_every_shipped_recipe_has_a_one_line_description():
    assert set(shipped_recipes()) == {p.stem for p in RECIPES.glob("*.toml")} and "demo" in shipped_recipes()
    for name in shipped_recipes():
        description = read_recipe_file(name)[1]
        assert description.strip() and "\n" not in description and len(description) <= 110, name


def test_a_shipped_recipe_is_named_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    assert load_recipe("demo", ["train.epochs=2"]) == load_recipe(RECIPES / "demo.toml", ["train.epochs=2"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("[train]\nepochs = 3\n")
    assert resolve_recipe("demo") == Path("demo") and load_recipe("demo").train.epochs == 3
    for missing in ("nope", "demo.toml", "sub/demo", str(tmp_path / "missing.toml")):
        with pytest.raises(ConfigError, match=rf"^recipe {missing} not found: neither a file nor a shipped recipe "
                                              rf"\(ablation_fmnist, .*demo, .*see gee-deploy recipes\)$"):
            load_recipe(missing)


def test_the_description_is_read_beside_the_recipe_not_into_it(tmp_path):
    described, plain = tmp_path / "a.toml", tmp_path / "b.toml"
    described.write_text('description = "what it is for"\n[train]\nepochs = 2\n')
    plain.write_text("[train]\nepochs = 2\n")
    assert read_recipe_file(described) == ({"train": {"epochs": 2}}, "what it is for")
    assert read_recipe_file(plain)[1] == "" and load_recipe(described) == load_recipe(plain)
    described.write_text("description = 3\n")
    with pytest.raises(ConfigError, match="description must be a string, got 3"):
        load_recipe(described)


def test_overrides_parse_toml_literals():
    assert parse_override("train.lr=1e-3") == ("train", "lr", 1e-3)
    assert parse_override("evolution.enabled=true") == ("evolution", "enabled", True)
    assert parse_override("data.name=cifar10") == ("data", "name", "cifar10")
    recipe = load_recipe(RECIPES / "demo.toml", ["train.epochs=7", "train.lr=1", "model.genes=0"])
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
    for path in sorted(RECIPES.glob("*.toml")):
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


def test_a_folder_named_like_a_shipped_recipe_does_not_hide_it(tmp_path, monkeypatch, capsys):
    """``train demo --out demo`` twice (``--resume``) must find the recipe again, not the run directory."""
    from gee_deploy.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["train", "demo", "--out", "demo", "--resume", "--set", "data.batch_size=0"])
    assert exc.value.code == 2  # the shipped demo was read: its checks ran, not click's "is a directory"
    assert capsys.readouterr().err.startswith("error: data.batch_size must be an integer")


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
    args = ["train", str(RECIPES / "demo.toml"), "--out", str(out), "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2  # ConfigError / DataError
    err = capsys.readouterr().err.strip()
    assert err.startswith(words) and len(err.splitlines()) == 1, err
    assert not out.exists()  # no run directory left behind


def test_recipes_command_lists_each_shipped_recipe_and_prints_one_to_copy(tmp_path, capsys):
    from gee_deploy.cli import main

    def run(args):
        with pytest.raises(SystemExit) as exc:
            main(args)
            raise SystemExit(0)
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    code, out, _ = run(["recipes"])
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["recipe", "model", "dataset"]
    assert len(lines) == 1 + len(shipped_recipes())
    demo = next(line for line in lines if line.startswith("demo "))
    assert demo.split()[1:4] == ["smallnet", "g=32", "fashion-mnist-mini"] and read_recipe_file("demo")[1] in demo
    code, out, _ = run(["recipes", "fmnist"])
    assert code == 0 and out == (RECIPES / "fmnist.toml").read_text()
    (tmp_path / "mine.toml").write_text(out)
    assert load_recipe(tmp_path / "mine.toml") == load_recipe("fmnist")
    code, out, err = run(["recipes", "nope"])
    assert code == 2 and out == "" and err.startswith("error: recipe nope not found") and err.count("\n") == 1
