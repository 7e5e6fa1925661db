"""Shared fixtures: tiny recipes and checkpoints that build in seconds on a CPU."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_recipe(**sections):
    """A recipe for a small genetic SmallNet on the synthetic set; ``sections`` = {"train": {...}, ...}."""
    from gee_deploy.recipe import recipe_from_dict

    data = {"model": {"name": "smallnet", "genes": 8, "timesteps": 2},
            "data": {"name": "synthetic", "batch_size": 32, "train_limit": 128, "test_limit": 64},
            "train": {"epochs": 1, "seed": 0, "lr": 3e-3}}
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
    """The tiny checkpoint as an ONNX file that follows the export contract (serving tests read it)."""
    import json

    import onnx
    from torch import nn

    from gee_deploy.checkpoint import file_sha256, load_model
    from gee_deploy.neurons import SpikeRecorder
    from gee_deploy.serving.energy import layer_table

    class Contract(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            with SpikeRecorder(self.model) as rec:
                logits = self.model(x)
            return logits, rec.stacked()

    model = load_model(tiny_checkpoint)
    out = tmp_path_factory.mktemp("serving_onnx") / "tiny.onnx"
    x = torch.rand(2, model.in_channels, model.image_size, model.image_size)
    torch.onnx.export(Contract(model).eval(), (x,), str(out), dynamo=True, external_data=False,
                      input_names=["input"], output_names=["logits", "spike_counts"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    layers, names, sizes = layer_table(model)
    graph = onnx.load(str(out))
    meta = {"gee.timesteps": str(model.timesteps), "gee.input_shape": json.dumps([1, 28, 28]),
            "gee.class_names": json.dumps(model.checkpoint["dataset"]["classes"]),
            "gee.spiking_layers": json.dumps(names), "gee.neurons_per_layer": json.dumps(sizes),
            "gee.layers": json.dumps(layers), "gee.variant": "dense", "gee.model_name": "smallnet",
            "gee.checkpoint_sha256": file_sha256(tiny_checkpoint), "gee.dataset": "synthetic"}
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    onnx.save(graph, str(out))
    return out
