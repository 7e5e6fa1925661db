"""The checkpoint payload: one typed record, files of b36eec0 still load, new files keep its layout (format 1)."""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import tiny_recipe
from gee_deploy.checkpoint import (FORMAT, FORMAT_VERSION, Checkpoint, DatasetRecord, architecture_fingerprint,
                                   load_checkpoint, load_model, save_checkpoint)
from gee_deploy.errors import CheckpointError
from gee_deploy.quantisation import SCHEME, attach_quantisers, quantised_layers, spike_reading_layers
from gee_deploy.training import train
from gee_deploy.training.setup import build_optimizer, build_recipe_model
from gee_deploy.training.trainer import cosine_schedule

CLASSES = [f"class{i}" for i in range(10)]  # the synthetic set's


def _earlier_release(quantised: bool = False):
    """(payload, model): a checkpoint dict exactly as release b36eec0 wrote it, key order included: the trainer's
    last.pt (with optimiser and schedule state after one step), or ``quantize``'s output."""
    recipe = tiny_recipe()
    torch.manual_seed(0)
    model = build_recipe_model(recipe)
    optimizer = build_optimizer(recipe, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(8, 0))
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    scheduler.step()
    metrics = {"epoch": 1, "train_loss": 2.1, "train_acc": 0.2, "test_loss": 2.0, "test_acc": 0.25,
               "firing_rate": 0.1, "lr": 0.005, "seconds": 1.5, "train_images_per_s": 85.0, "best_acc": 0.25}
    dataset = {"name": "synthetic", "classes": list(CLASSES)}
    if not quantised:  # training/trainer.py: _checkpoint_meta, then _write_checkpoints
        payload = {"format": "gee-deploy/1", "model_name": model.model_name, "model_args": model.model_args,
                   "architecture": architecture_fingerprint(model), "recipe": recipe.to_dict(), "dataset": dataset,
                   "state_dict": model.state_dict(), "epoch": 1, "metrics": metrics, "best_acc": 0.25,
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        return payload, model.eval()
    layers = spike_reading_layers(model)  # training/quantize.py, step 4
    attach_quantisers(model, layers)
    payload = {"format": "gee-deploy/1", "model_name": model.model_name, "model_args": model.model_args,
               "recipe": recipe.to_dict(), "dataset": dataset, "architecture": architecture_fingerprint(model),
               "state_dict": model.state_dict(), "epoch": 1,
               "metrics": {"test_loss": 2.0, "test_acc": 0.25, "firing_rate": 0.1, "fp32_test_acc": 0.25,
                           "ptq_test_acc": 0.24, "fp32_firing_rate": 0.1, "quantize_seconds": 3.0},
               "best_acc": 0.25, "quantisation": {"scheme": SCHEME, "layers": layers, "epochs": 0.5, "lr_scale": 0.02,
                                                  "source": "runs/demo/best.pt", "source_sha256": "ab" * 32}}
    return payload, model.eval()


def test_a_checkpoint_of_an_earlier_release_loads_and_rebuilds_its_model(tmp_path):
    payload, model = _earlier_release()
    path = tmp_path / "last.pt"
    torch.save(payload, path)
    ckpt = load_checkpoint(path)
    assert (ckpt.model_name, ckpt.epoch, ckpt.best_acc, ckpt.metrics) == ("smallnet", 1, 0.25, payload["metrics"])
    assert ckpt.dataset == DatasetRecord(name="synthetic", classes=tuple(CLASSES)) and ckpt.quantisation is None
    assert ckpt.recipe == payload["recipe"] and ckpt.optimizer["state"] and ckpt.scheduler["last_epoch"] == 1
    loaded = load_model(path)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.checkpoint.state_dict is None and loaded.checkpoint.optimizer is None
    assert loaded.checkpoint.class_names(10) == tuple(CLASSES)


def test_a_run_of_an_earlier_release_resumes(tmp_path):
    """--resume reads the optimiser and schedule state an earlier release wrote into last.pt."""
    payload, _ = _earlier_release()
    torch.save(payload, tmp_path / "last.pt")
    (tmp_path / "train.jsonl").write_text('{"epoch": 1, "test_acc": 0.25}\n')
    metrics = train(tiny_recipe(train={"epochs": 2}), tmp_path, resume=True, progress=False)
    assert metrics["epoch"] == 2 and load_checkpoint(tmp_path / "last.pt").epoch == 2


def test_an_int8_checkpoint_of_an_earlier_release_computes_with_its_int8_weights(tmp_path):
    payload, model = _earlier_release(quantised=True)
    path = tmp_path / "q.pt"
    torch.save(payload, path)
    loaded = load_model(path)
    q = loaded.checkpoint.quantisation
    assert q.layers == tuple(payload["quantisation"]["layers"]) == tuple(quantised_layers(loaded))
    assert (q.scheme, q.epochs, q.lr_scale, q.source_sha256) == (SCHEME, 0.5, 0.02, "ab" * 32)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("quantised", [False, True])
def test_files_written_now_keep_the_earlier_layout(tmp_path, quantised):
    """What this release writes, an earlier one reads: the same keys, nested dicts and plain types."""
    payload, _ = _earlier_release(quantised)
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save(payload, old)
    save_checkpoint(new, load_checkpoint(old))
    again = torch.load(new, weights_only=True)
    assert set(again) == set(payload)
    for key in ("format", "model_name", "model_args", "architecture", "recipe", "dataset", "epoch", "metrics",
                "best_acc", "quantisation"):
        assert again.get(key) == payload.get(key), key
    assert again["state_dict"].keys() == payload["state_dict"].keys()


def test_a_float16_runs_scaler_state_round_trips(tmp_path):
    """A float16 run's last.pt also holds its GradScaler's state (an exact resume); an earlier release ignores it."""
    payload, _ = _earlier_release()
    torch.save(payload, tmp_path / "old.pt")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    save_checkpoint(tmp_path / "new.pt", replace(load_checkpoint(tmp_path / "old.pt"), scaler=scaler.state_dict()))
    assert torch.load(tmp_path / "new.pt", weights_only=True)["scaler"]["scale"] == 2.0 ** 10
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(load_checkpoint(tmp_path / "new.pt").scaler)
    assert restored.get_scale() == 2.0 ** 10 and load_model(tmp_path / "new.pt").checkpoint.scaler is None


def test_a_checkpoint_built_in_python_without_fingerprint_or_dataset_loads(tmp_path):
    """The layout's optional parts: a model saved outside a run names no fingerprint and no dataset."""
    payload, model = _earlier_release()
    for key in ("architecture", "dataset", "optimizer", "scheduler"):
        del payload[key]
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.checkpoint.dataset is None and loaded.checkpoint.dataset_name == ""
    assert loaded.checkpoint.class_names(10) == tuple(str(i) for i in range(10))
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_checkpoint_carries_its_format_version_and_refuses_others(tmp_path):
    """Files written now say format 1 (the b36eec0 layout); a newer version or a development layout before
    b36eec0 (no recipe, metrics or best accuracy) is one clear CheckpointError, read in one place."""
    payload, _ = _earlier_release()
    save_checkpoint(tmp_path / "new.pt", load_checkpoint_from(payload, tmp_path / "old.pt"))
    assert torch.load(tmp_path / "new.pt", weights_only=True)["format"] == FORMAT == f"gee-deploy/{FORMAT_VERSION}"
    torch.save({**payload, "format": f"gee-deploy/{FORMAT_VERSION + 1}"}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=rf"newer.pt has checkpoint format {FORMAT_VERSION + 1}, written by a "
                                              "newer gee-deploy"):
        load_checkpoint(tmp_path / "newer.pt")
    torch.save({k: v for k, v in payload.items() if k not in ("recipe", "metrics", "best_acc")}, tmp_path / "dev.pt")
    with pytest.raises(CheckpointError, match=r"dev.pt is not a gee-deploy checkpoint \(missing recipe, metrics, "
                                              r"best_acc\)"):
        load_checkpoint(tmp_path / "dev.pt")


def load_checkpoint_from(payload: dict, path: Path) -> Checkpoint:
    torch.save(payload, path)
    return load_checkpoint(path)


def test_a_part_of_the_wrong_type_is_one_clear_error(tmp_path):
    payload, _ = _earlier_release()
    torch.save({**payload, "model_args": [8, 2]}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt is not a readable gee-deploy checkpoint: .*'model_args' is a"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({**payload, "format": "gee-deploy/0"}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="has format 'gee-deploy/0'"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save(payload, tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="without weights"):  # model.checkpoint is metadata only
        save_checkpoint(tmp_path / "meta.pt", load_model(tmp_path / "ok.pt").checkpoint)
    assert not (tmp_path / "meta.pt").exists()


def test_class_names_come_from_the_checkpoint_then_its_dataset_then_numbers():
    ckpt = Checkpoint(model_name="smallnet", model_args={}, state_dict={},
                      dataset=DatasetRecord(name="fashion-mnist", classes=("a", "b")))
    assert ckpt.class_names(2) == ("a", "b")
    assert ckpt.class_names(10)[0] == "T-shirt/top"  # two names for ten logits: the dataset's own ten
    assert ckpt.class_names(3) == ("0", "1", "2")
    unknown = replace(ckpt, dataset=DatasetRecord(name="no-such-set"))
    assert unknown.class_names(2) == ("0", "1")


CHECKPOINT_KEYS = {"format", "model_name", "model_args", "architecture", "recipe", "dataset", "state_dict", "optimizer",
                   "scheduler", "epoch", "metrics", "best_acc", "quantisation", "rng"}


def test_only_the_checkpoint_module_spells_the_payload_keys():
    """``x["dataset"]`` or ``x.get("epoch")`` on anything named like a checkpoint, outside gee_deploy/checkpoint.py:
    a second reader of the payload that a renamed key would break at the end of a long run."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted([*(root / "gee_deploy").rglob("*.py"), *(root / "benchmarks").glob("*.py")]):
        if path == root / "gee_deploy" / "checkpoint.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                target, key = node.value, node.slice.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                target, key = node.func.value, node.args[0].value
            else:
                continue
            text = ast.unparse(target).lower()
            if key in CHECKPOINT_KEYS and ("ckpt" in text or "checkpoint" in text):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders
