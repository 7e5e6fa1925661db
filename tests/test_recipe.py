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


def test_model_init_reaches_the_genetic_layers():
    """model.init = "paper" builds W = E_in G E_out^T with no constant (eq. 1); the default keeps the
    Kaiming-matched scale; anything else is a one-line error before work starts."""
    import torch

    from gee_deploy.genetic import INITS, GeneticConv2d
    from gee_deploy.recipe import describe, recipe_field
    from gee_deploy.training.setup import build_recipe_model

    assert describe(recipe_field("model.init")) == "one of " + ", ".join(INITS)
    default = load_recipe(None)
    assert default.model.init == "kaiming" and default.model_kwargs()["init"] == "kaiming"
    for path in ("tableiv_resnet19", "tableiv_vgg11"):
        recipe = load_recipe(path, ["data.name=synthetic"])
        model = build_recipe_model(recipe)
        scales = {m.scale.item() for m in model.modules() if isinstance(m, GeneticConv2d)}
        assert recipe.model.init == "paper" and scales == {1.0}, path
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    kaiming = build_recipe_model(load_recipe("tableiv_resnet19", ["data.name=synthetic",
                                                                                 "model.init=kaiming"]))
    assert all(m.scale.item() < 0.1 for m in kaiming.modules() if isinstance(m, GeneticConv2d))
    with pytest.raises(ConfigError, match="model.init must be one of kaiming, paper, got 'xavier'"):
        load_recipe(None, ["model.init=xavier"])


# ---- every value checked before any work starts: the schema, declared once ---------------------------------

def _keys(kinds=(int, float)):
    from gee_deploy.recipe import SECTIONS, recipe_field, unwrap

    return sorted(f"{section}.{name}" for section, cls in SECTIONS.items() for name in cls.__pydantic_fields__
                  if unwrap(recipe_field(f"{section}.{name}"))[0] in kinds)


def test_every_key_is_declared_with_a_doc_and_the_defaults_and_shipped_recipes_pass():
    from gee_deploy.recipe import SECTIONS, Recipe

    for section, cls in SECTIONS.items():
        for name, info in cls.__pydantic_fields__.items():
            assert info.description and len(info.description.splitlines()) == 1, f"{section}.{name} has no doc"
    assert len(_keys()) >= 25  # every number of every section has a declared range
    assert Recipe() == load_recipe(None)
    for path in sorted(RECIPES.glob("*.toml")):
        load_recipe(path)  # the shipped recipes pass their own checks


@pytest.mark.parametrize("key", [k for k in _keys() if k != "evolution.population"])
def test_each_numeric_key_refuses_values_outside_its_range(key):
    from gee_deploy.recipe import bounds, recipe_field, unwrap

    integer = unwrap(recipe_field(key))[0] is int
    low, low_open, high, high_open = bounds(recipe_field(key))
    assert low is not None, f"{key} has no lower bound"
    bad = [low if low_open else low - 1]
    good = [low + (1 if integer else 1e-3) if low_open else low]
    if high is not None:
        bad.append(high if high_open else high + (1 if integer else abs(high) * 1e-9 + 1e-9))
    if integer:
        bad += [1.5, True]
    else:
        bad += [float("nan"), float("inf"), -float("inf"), True]
    for value in bad:
        literal = {float("inf"): "inf", -float("inf"): "-inf"}.get(value, str(value).lower())
        with pytest.raises(ConfigError, match=rf"^{key} must be an? (integer|finite number)"):
            load_recipe(None, [f"{key}={literal}"])
    for value in good:
        section, name = key.split(".")
        assert getattr(getattr(load_recipe(None, [f"{key}={value}"]), section), name) == value


def test_range_messages_name_the_range():
    with pytest.raises(ConfigError, match=r"^data\.batch_size must be an integer in \[1, 1048576\], got 0$"):
        load_recipe(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^evolution\.population must be 0 or an integer in \[2, 100000\], got 1$"):
        load_recipe(None, ["evolution.population=1"])
    with pytest.raises(ConfigError, match=r"^evolution\.population must be 0 or an integer"):
        load_recipe(None, ["evolution.population=false"])
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number in \(0, 100\], got 0$"):
        load_recipe(None, ["train.lr=0"])
    with pytest.raises(ConfigError, match=r"^train\.optimizer must be one of adamw, sgd, got 'adam'$"):
        load_recipe(None, ["train.optimizer=adam"])
    with pytest.raises(ConfigError, match=r"^train\.device must be auto, cpu, cuda or cuda:N, got 'gpu'$"):
        load_recipe(None, ["train.device=gpu"])
    assert load_recipe(None, ["train.device=cuda:1", "evolution.population=2"]).train.device == "cuda:1"


def test_fitness_modes_are_declared_once():
    """evolution.fitness is checked by the schema; the fitness module implements exactly those modes."""
    import typing

    from gee_deploy.kinds import FitnessMode, Init
    from gee_deploy.recipe import FITNESS, describe, recipe_field
    from gee_deploy.recipe import Init as InitLiteral
    from gee_deploy.training.fitness import FITNESS_MODES

    # the recipe's Literals spell out the enums' values, in their order (describe() lists them so)
    assert typing.get_args(FITNESS) == tuple(FitnessMode) and set(FitnessMode) == set(FITNESS_MODES)
    assert typing.get_args(InitLiteral) == tuple(Init)
    recipe = load_recipe(None, ["evolution.fitness=ste"])
    recipe.evolution.fitness = FitnessMode.LOSS_R1  # the enum member is kept as its plain string
    assert type(recipe.evolution.fitness) is str and recipe.evolution.fitness == "loss+r1"
    assert "one of loss, loss+r1" in describe(recipe_field("evolution.fitness"))
    with pytest.raises(ConfigError, match=r"^evolution\.fitness must be one of loss, loss\+r1, .*got 'loss\+r3'$"):
        load_recipe(None, ["evolution.fitness=loss+r3"])


def test_assignment_and_replace_are_checked_in_one_line():
    """Code that derives recipes (sweep points, ablation seeds, quantize's learning rate) gets the same
    one-line error as a recipe file, not pydantic's multi-line report."""
    import dataclasses

    recipe = load_recipe(None)
    with pytest.raises(ConfigError, match=r"^train\.seed must be an integer in \[0, 4294967295\], got 4294967296$"):
        recipe.train.seed = 2**32
    with pytest.raises(ConfigError, match=r"^train\.lr must be a finite number in \(0, 100\], got 1000\.0$"):
        dataclasses.replace(recipe.train, lr=1e3)
    with pytest.raises(ConfigError, match=r"^unknown key train\.nope"):
        dataclasses.replace(recipe.train, nope=1)


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
     "error: evolution.lambda1 must be a finite number in [-1000000, 0], got 1000"),
    (["evolution.lambda2=1e400"], "error: evolution.lambda2 must be a finite number in [-1000000, 0], got inf"),
    (["data.train_limit=10"], "error: data.batch_size=64 is more than the 10 training images after "
                              "data.train_limit=10: an epoch (full batches only) would take no optimiser step; "
                              "allowed data.batch_size <= 10"),
    (["data.batch_size=1", "model.timesteps=1", "data.train_limit=50"],
     "error: data.batch_size=1 gives BatchNorm body.5.1 of SmallNet a single value per channel in training"),
    (["data.batch_size=1", "model.timesteps=1", "data.train_limit=50", "train.epochs=0", "evolution.enabled=true"],
     "error: data.batch_size=1 gives BatchNorm"),
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
