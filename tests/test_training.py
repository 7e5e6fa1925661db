"""Trainer: run-dir contents, exact resume, checkpoints that rebuild their model, DDP on gloo."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import tiny_recipe
from gee_deploy import load_model
from gee_deploy.checkpoint import load_checkpoint, save_checkpoint
from gee_deploy.errors import CheckpointError, ConfigError
from gee_deploy.training import train
from gee_deploy.training.trainer import RESUMES_FILE


def test_run_dir_contents(tiny_run):
    assert {p.name for p in tiny_run.iterdir()} >= {"config.json", "train.jsonl", "best.pt", "last.pt"}
    rows = [json.loads(line) for line in (tiny_run / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for key in ("epoch", "train_loss", "test_acc", "firing_rate", "seconds", "train_images_per_s"):
        assert key in rows[0]
    assert 0 <= rows[0]["test_acc"] <= 1 and 0 < rows[0]["firing_rate"] < 1
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["model"]["name"] == "smallnet" and config["data"]["name"] == "synthetic"


def test_training_learns_the_synthetic_task(tmp_path):
    metrics = train(tiny_recipe(train={"epochs": 3}, data={"train_limit": 256}), tmp_path, progress=False)
    assert metrics["test_acc"] > 0.5  # chance is 0.1


def test_load_model_rebuilds_the_trained_network(tiny_run):
    model = load_model(tiny_run / "best.pt")
    assert not model.training and model.model_name == "smallnet" and model.genes == 8
    ckpt = load_checkpoint(tiny_run / "best.pt")
    assert ckpt.dataset.name == "synthetic" and len(ckpt.dataset.classes) == 10
    x = torch.rand(3, 1, 28, 28)
    again = load_model(tiny_run / "best.pt")
    torch.testing.assert_close(model(x), again(x))


def test_resume_ends_with_the_same_weights(tmp_path):
    recipe = tiny_recipe(train={"epochs": 2})
    full, part = tmp_path / "full", tmp_path / "part"
    train(recipe, full, progress=False)
    _train_and_stop_after(recipe, part, epochs_done=1)
    assert load_checkpoint(part / "last.pt").epoch == 1
    train(recipe, part, resume=True, progress=False)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    assert a.epoch == b.epoch == 2
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    assert len((part / "train.jsonl").read_text().splitlines()) == 2


def _train_and_stop_after(recipe, out, epochs_done):
    """Run ``recipe`` but stop (as a crash would) once ``epochs_done`` epochs are checkpointed."""
    from gee_deploy.io import append_jsonl
    import gee_deploy.training.trainer as trainer

    real_append = append_jsonl
    calls = {"n": 0}

    class Stop(Exception):
        pass

    def append_then_maybe_stop(path, obj):
        real_append(path, obj)
        calls["n"] += 1
        if calls["n"] >= epochs_done:
            raise Stop

    trainer.append_jsonl, saved = append_then_maybe_stop, trainer.append_jsonl
    try:
        with pytest.raises(Stop):
            train(recipe, out, progress=False)
    finally:
        trainer.append_jsonl = saved


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_recipe(), tiny_run, progress=False)
    with pytest.raises(ConfigError, match="no last.pt"):
        train(tiny_recipe(), tmp_path / "empty", resume=True, progress=False)


def test_truncated_and_foreign_checkpoints(tiny_run, tmp_path):
    data = (tiny_run / "best.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt is truncated: a torch\.save archive without its end"):
        load_model(cut)
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a gee-deploy checkpoint: a text file, not a torch"):
        load_model(junk)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt is empty, not a checkpoint"):
        load_model(tmp_path / "empty.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a gee-deploy checkpoint"):
        load_model(plain)
    other = load_checkpoint(tiny_run / "best.pt")
    other = replace(other, model_args={**other.model_args, "genes": 12})  # weights of g=8 under an architecture of g=12
    swapped = tmp_path / "swapped.pt"
    save_checkpoint(swapped, other)
    with pytest.raises(CheckpointError, match="does not match architecture"):
        load_model(swapped)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    moved = replace(load_checkpoint(tiny_run / "best.pt"), architecture="0" * 16)  # e.g. a pool moved: same
    stale = tmp_path / "stale.pt"  # parameter names and shapes, another network
    save_checkpoint(stale, moved)
    with pytest.raises(CheckpointError, match="another version of architecture"):
        load_model(stale)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    train(tiny_recipe(train={"device": "cpu"}), out, progress=False)
    assert not torch.distributed.is_initialized()  # train shuts its process group down before returning


@pytest.mark.distributed
def test_ddp_two_processes_on_gloo(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # rank 0 alone writes
    assert load_model(tmp_path / "last.pt").model_name == "smallnet"


RECIPES = sorted((Path(__file__).resolve().parent.parent / "gee_deploy" / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if "imagenet" in p.name else p
                                  for p in RECIPES], ids=lambda p: p.stem)
def test_every_recipe_builds_and_takes_a_training_step(path):
    """Paper rows need a GPU and real data: here they build and take one step on random images of their shape."""
    from gee_deploy.recipe import load_recipe
    from gee_deploy.training.setup import build_optimizer, build_recipe_model

    recipe = load_recipe(path)
    torch.manual_seed(0)
    model = build_recipe_model(recipe).train()
    x = torch.rand(2, model.in_channels, model.image_size, model.image_size)
    y = torch.randint(0, model.num_classes, (2,))
    optimizer = build_optimizer(recipe, model)
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())  # no dead parameter in the graph
    optimizer.step()
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # a layer silent on 2 random images may get an all-zero gradient (tableiv_vgg11's narrow literal-init VGG:
    # 3 of its 28 parameters)
    assert changed >= 0.85 * len(before)
    if recipe.model.genes:
        assert {id(p) for p in model.genome.parameters()} <= {id(p) for g in optimizer.param_groups for p in g["params"]
                                                              if g["lr"] == recipe.train.lr * recipe.train.genetic_lr_scale}


def test_fingerprint_reads_geometry_not_the_printout(monkeypatch):
    from gee_deploy.checkpoint import architecture_fingerprint
    from gee_deploy.zoo import create_model

    model = create_model("smallnet", genes=8, timesteps=2)
    before, printout = architecture_fingerprint(model), repr(model)
    assert before == architecture_fingerprint(create_model("smallnet", genes=8, timesteps=2))
    monkeypatch.setattr(torch.nn.BatchNorm2d, "extra_repr", lambda self: "reworded by another torch release")
    assert architecture_fingerprint(model) == before and repr(model) != printout
    monkeypatch.undo()
    pool = model.stem[0][1]  # the 2x2 average pool fused into the stem's conv
    pool.kernel_size = 3  # same parameters, another network
    assert architecture_fingerprint(model) != before
    pool.kernel_size = 2
    assert architecture_fingerprint(model) == before
    model.body[0] = torch.nn.Identity()  # a LIF replaced: no parameter changes
    assert architecture_fingerprint(model) != before
    wider = create_model("smallnet", genes=8, timesteps=2, num_classes=12)
    assert architecture_fingerprint(wider) != before


def test_the_trainer_writes_the_geometry_fingerprint(tiny_run):
    from gee_deploy.checkpoint import architecture_fingerprint

    assert load_checkpoint(tiny_run / "best.pt").architecture == architecture_fingerprint(load_model(tiny_run / "best.pt"))


def test_a_pickle_is_refused_without_suggesting_to_unpickle_it(tmp_path):
    import argparse

    from gee_deploy.checkpoint import load_checkpoint
    from gee_deploy.errors import CheckpointError

    path = tmp_path / "other.pt"
    torch.save({"model": argparse.Namespace(a=1)}, path)  # a pickled object weights_only loading refuses
    with pytest.raises(CheckpointError, match="holds pickled Python objects") as e:
        load_checkpoint(path)
    assert "weights_only` set to `False`" not in str(e.value) and "\n" not in str(e.value)
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"\x08\x09\x12\x0bgee-deploy")  # protobuf bytes, as an ONNX file starts
    with pytest.raises(CheckpointError, match="not a gee-deploy checkpoint") as e:
        load_checkpoint(graph)
    assert "False" not in str(e.value) and "\n" not in str(e.value)


def test_the_epoch_loop_stops_after_max_steps(one_thread):
    """quantize's fine-tune is the trainer's epoch loop cut at a step count (fractions of an epoch)."""
    from gee_deploy.data import load_split, make_loader
    from gee_deploy.training.setup import build_optimizer, build_recipe_model
    from gee_deploy.training.trainer import TrainRuntime, cosine_schedule, train_epoch

    recipe = tiny_recipe()
    model = build_recipe_model(recipe)
    optimizer = build_optimizer(recipe, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(10, 0))
    loader = make_loader(load_split("synthetic", "train", limit=128), 32, True, drop_last=True)  # 4 batches
    before = [p.detach().clone() for p in model.parameters()]
    done = train_epoch(model, loader, optimizer, scheduler, recipe.train, TrainRuntime.local(torch.device("cpu")),
                       "test", show=False, max_steps=3)
    assert done["steps"] == 3 and scheduler.last_epoch == 3 and 0 <= done["train_acc"] <= 1
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert train_epoch(model, loader, optimizer, scheduler, recipe.train, TrainRuntime.local(torch.device("cpu")),
                       "test", show=False)["steps"] == 4


def test_float16_autocast_and_only_it_trains_with_a_grad_scaler():
    from gee_deploy.training.setup import mixed_precision

    assert mixed_precision("cuda", True, bf16_supported=False) == (torch.float16, True)
    assert mixed_precision("cuda", True, bf16_supported=True) == (torch.bfloat16, False)
    assert mixed_precision("cuda", False, bf16_supported=False) == (None, False)
    assert mixed_precision("cpu", True, bf16_supported=False) == (None, False)


def test_a_scaled_step_is_the_plain_step_and_skips_non_finite_gradients():
    """The scaler's backward runs on loss x 2^16 and unscales before clipping: in float32 the step is the plain
    one bit for bit (powers of two scale exactly); a batch whose gradients overflow moves nothing and halves
    the scale (torch.amp's recipe)."""
    from gee_deploy.training.setup import build_optimizer, build_recipe_model, train_step

    recipe = tiny_recipe(train={"grad_clip": 0.5})
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu")):
        torch.manual_seed(0)
        model = build_recipe_model(recipe).train()
        optimizer = build_optimizer(recipe, model)
        train_step(model, optimizer, x, y, grad_clip=0.5, scaler=scaler)
        runs.append((model, optimizer, scaler))
    for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(a, b)
    model, optimizer, scaler = runs[1]
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, optimizer, torch.full_like(x, float("inf")), y, grad_clip=0.5, scaler=scaler)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0 ** 15


# ---- resume checks the recipe before it writes (gee_deploy/training/resume.py) --------------------------

def _snapshot(run_dir):
    """Every file of a run directory with its bytes: what a refused resume must leave as it found it."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


@pytest.mark.parametrize("change,keys", [
    ({"model": {"genes": 4}}, "model.genes 8 -> 4"),
    ({"model": {"timesteps": 3}}, "model.timesteps 2 -> 3"),
    ({"train": {"lr": 0.1, "seed": 7}}, "train.lr 0.01 -> 0.1; train.seed 0 -> 7"),
    ({"data": {"name": "fashion-mnist-mini"}}, "data.name 'synthetic' -> 'fashion-mnist-mini'"),
])
def test_resume_with_another_recipe_is_refused_before_anything_changes(tiny_run, tmp_path, change, keys):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match="cannot resume the run in .* with another recipe: " + re.escape(keys)) as e:
        train(tiny_recipe(**change), run_dir, resume=True, progress=False)
    assert "\n" not in str(e.value)
    assert _snapshot(run_dir) == before


def test_resume_may_train_on_for_more_epochs_and_records_the_change(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    metrics = train(tiny_recipe(train={"epochs": 2, "threads": 1}), run_dir, resume=True, progress=False)
    assert metrics["epoch"] == 2 and load_checkpoint(run_dir / "last.pt").epoch == 2
    assert json.loads((run_dir / "config.json").read_text())["train"]["epochs"] == 2
    (record,) = [json.loads(line) for line in (run_dir / RESUMES_FILE).read_text().splitlines()]
    assert record["resumed_at_epoch"] == 1
    assert record["changes"] == {"train.epochs": [1, 2], "train.threads": [0, 1]}
    with pytest.raises(ConfigError, match="has trained 2 epochs already"):
        train(tiny_recipe(train={"epochs": 1}), run_dir, resume=True, progress=False)


def test_resume_of_a_truncated_last_pt_names_it_before_writing(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 2])
    before = _snapshot(run_dir)
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated: a torch\.save archive without its end"):
        train(tiny_recipe(), run_dir, resume=True, progress=False)
    assert _snapshot(run_dir) == before


def test_epochs_zero_is_refused_unless_the_run_only_evolves(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs must be >= 1 \(0 trains nothing"):
        train(tiny_recipe(train={"epochs": 0}), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_a_log_gets_progress_lines_within_an_epoch(tmp_path, monkeypatch):
    """Without a terminal (a log file) tqdm draws no bar; the trainer still says how far an epoch got."""
    import gee_deploy.training.trainer as trainer

    monkeypatch.setattr(trainer, "HEARTBEAT_SECONDS", 0.0)  # a line after every batch
    lines = []
    train(tiny_recipe(), tmp_path / "r", progress=lines.append)
    within = [line for line in lines if "images, loss" in line]
    assert within[0].startswith("epoch 1/1: 32/128 images, loss ") and within[-1].startswith("epoch 1/1: 128/128")
    assert lines[-1].startswith("epoch 1/1: loss ")
