"""Shared fixtures: tiny recipes and checkpoints that build in seconds on a CPU."""
from __future__ import annotations

import os

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:  # honour a caller's thread setting (shared machines)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_recipe(**sections):
    """A recipe for a small genetic SmallNet on the synthetic set; ``sections`` = {"train": {...}, ...}."""
    from gee_deploy.recipe import recipe_from_dict

    data = {"model": {"name": "smallnet", "genes": 8, "timesteps": 2},
            "data": {"name": "synthetic", "batch_size": 32, "train_limit": 128, "test_limit": 64},
            "train": {"epochs": 1, "seed": 0, "lr": 1e-2}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return recipe_from_dict(data)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory trained for one epoch on synthetic data (best.pt, last.pt, train.jsonl)."""
    from gee_deploy.training import train

    out = tmp_path_factory.mktemp("tiny_run")
    train(tiny_recipe(), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run):
    return tiny_run / "best.pt"


@pytest.fixture(scope="session")
def serving_onnx(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported (dense, validated) by `gee-deploy export`: what the serving tests read."""
    from gee_deploy.formats import export_model

    out = tmp_path_factory.mktemp("serving_onnx") / "tiny.onnx"
    export_model(tiny_checkpoint, out, variant="dense", samples=64)
    return out


@pytest.fixture
def one_thread():
    """Many small ops: on a shared 2-core machine one thread is faster than two fighting for it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
