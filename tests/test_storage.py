"""Genetic storage: the file holds E, G, scales and BatchNorm parameters, and computes the folded weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from gee_deploy.cli import cli
from gee_deploy.export import build_onnx, export_loaded
from gee_deploy.export.errors import UnknownOptionError
from gee_deploy.export.tensorrt import compatibility_problems
from gee_deploy.export.weights import constant_nodes, fold_constants
from gee_deploy.neurons import SpikeRecorder
from gee_deploy.ort_session import create_session
from gee_deploy.quantisation import attach_quantisers, spike_reading_layers
from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.spec import ModelSpec
from gee_deploy.zoo import create_model, list_models
from test_export import FAST, small_model, spec_of

OLD_FOLDED = Path(__file__).parent / "data" / "smallnet-g4-factorised-b36eec0.onnx"


def _run(proto: onnx.ModelProto, images: torch.Tensor) -> list[np.ndarray]:
    return create_session(proto.SerializeToString()).run(None, {"input": images.numpy()})


def _parameter_bytes(model: torch.nn.Module) -> int:
    return 4 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,variant", [(name, "dense") for name in list_models()] +
                         [(name, variant) for name in ("smallnet", "resnet19") for variant in ("factorised", "int8")])
def test_genetic_and_folded_storage_run_the_same_weights(name, variant):
    """Folding the genetic file's constant subgraph gives the folded file, and both compute the same outputs
    bit for bit; the weights the subgraph computes are the float64 fold rounded once."""
    model, images = small_model(name, 6)
    genetic, spec = build_onnx(model, variant, storage="genetic")
    folded, folded_spec = build_onnx(model, variant, storage="folded")
    assert (spec.storage, folded_spec.storage) == ("genetic", "folded")
    assert spec.layers == folded_spec.layers
    assert constant_nodes(genetic.graph)[0] and not constant_nodes(folded.graph)[0]
    refolded = fold_constants(genetic)
    assert [n.op_type for n in refolded.graph.node] == [n.op_type for n in folded.graph.node]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}
    for t in refolded.graph.initializer:
        assert np.array_equal(onnx.numpy_helper.to_array(t), init[t.name]), t.name
    for a, b in zip(_run(genetic, images), _run(folded, images)):
        assert np.array_equal(a, b)


def test_folded_weights_equal_the_float64_fold_rounded_once():
    """The subgraph's float64 arithmetic (onnxruntime's kernels) against numpy's float64 fold of the same model."""
    model, _ = small_model("resnet19", 6)
    from gee_deploy.export.folding import fold_layer
    from gee_deploy.walk import is_weight_layer

    folded, _ = build_onnx(model, "dense", storage="folded")
    init = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}
    conv = model.body[0][0] if is_weight_layer(model.body[0][0]) else None
    names = [n for n, m in model.named_modules() if is_weight_layer(m) and f"{n}.weight" in init]
    assert names, "no weight initializers found under their layer names"
    differing = 0
    for name in names:
        m = model.get_submodule(name)
        bn = None
        parent, _, index = name.rpartition(".")
        siblings = model.get_submodule(parent) if parent else model
        if isinstance(siblings, torch.nn.Sequential) and int(index) + 1 < len(siblings) and \
                isinstance(siblings[int(index) + 1], torch.nn.BatchNorm2d):
            bn = siblings[int(index) + 1]
        want = fold_layer(m, bn).weight.value.astype(np.float32)
        got = init[f"{name}.weight"]
        if got.shape != want.shape:  # a ConvPool's fused kernel or a BN this helper did not pair: skip
            continue
        differing += int((got != want).sum())
        np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-9)
    assert conv is None or differing < 5  # float64 sums in another order: at most a rare last-bit flip


def test_quantised_checkpoint_stays_exact_with_genetic_storage():
    """int8 codes computed in the graph from E and G equal the fake-quantised forward's, spike for spike."""
    model, _ = small_model("smallnet", 6, timesteps=4)
    attach_quantisers(model, spike_reading_layers(model))
    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for variant in ("int8", "dense"):
        proto, spec = build_onnx(model, variant, storage="genetic")
        logits, counts = _run(proto, images)
        with torch.no_grad(), SpikeRecorder(model) as rec:
            ref = model(images)
        assert np.array_equal(counts, rec.stacked().numpy()), variant
        assert np.abs(logits - ref.numpy()).max() < 1e-5, variant


def test_genetic_file_is_the_size_of_the_genetic_parameters():
    """smallnet at g = 32: <= 1.1 x its genetic parameter bytes + 64 KiB of graph; int8 no larger than fp32."""
    torch.manual_seed(0)
    model = create_model("smallnet", genes=32).eval()
    budget = 1.1 * _parameter_bytes(model) + 64 * 1024
    sizes = {}
    for variant in ("dense", "factorised", "auto", "int8"):
        proto, _ = build_onnx(model, variant, storage="genetic")
        sizes[variant] = proto.ByteSize()
        assert sizes[variant] <= budget, (variant, sizes[variant], budget)
    folded, _ = build_onnx(model, "dense", storage="folded")
    assert sizes["int8"] <= sizes["dense"] < folded.ByteSize()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n != "smallnet"])
def test_every_zoo_model_at_g150_ships_its_genetic_size(name):
    torch.manual_seed(0)
    model = create_model(name, genes=150).eval()
    budget = 1.1 * _parameter_bytes(model) + 64 * 1024
    for variant in ("dense", "int8"):
        proto, _ = build_onnx(model, variant, storage="genetic")
        assert proto.ByteSize() <= budget, (variant, proto.ByteSize(), budget)


def test_export_defaults_to_genetic_storage_and_says_so(tiny_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(out), "--samples", "16"])
    assert result.exit_code == 0, result.output
    assert "genetic storage" in result.output
    spec = ModelSpec.from_onnx(out)
    assert spec.storage == "genetic"
    folded = tmp_path / "f.onnx"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(folded), "--samples", "16",
                                      "--storage", "folded"])
    assert result.exit_code == 0, result.output
    assert ModelSpec.from_onnx(folded).storage == "folded"
    assert out.stat().st_size < folded.stat().st_size


def test_storage_refusals_are_one_line(tmp_path):
    dense, images = small_model("smallnet", None)
    with pytest.raises(UnknownOptionError, match="dense twin"):
        export_loaded(dense, tmp_path / "d.onnx", images=images, validation=FAST, storage="genetic")
    genetic, images = small_model("smallnet", 6)
    for fmt in ("nir", "tensorrt"):
        with pytest.raises(UnknownOptionError, match=f"--format {fmt}"):
            export_loaded(genetic, tmp_path / f"g.{fmt}", images=images, validation=FAST, fmt=fmt, storage="genetic")
    with pytest.raises(UnknownOptionError, match="unknown storage"):
        export_loaded(genetic, tmp_path / "g.onnx", images=images, validation=FAST, storage="compressed")
    assert not list(tmp_path.iterdir())


def test_tensorrt_static_check_passes_for_both_storages():
    model, _ = small_model("resnet19", 6)
    for storage in ("genetic", "folded"):
        proto, _ = build_onnx(model, "dense", storage=storage)
        assert compatibility_problems(proto) == [], storage


def test_streaming_and_triton_exports_keep_genetic_storage(tmp_path):
    model, images = small_model("smallnet", 6)
    report = export_loaded(model, tmp_path / "s.onnx", images=images, validation=FAST, streaming=True)
    assert report.storage == "genetic" and ModelSpec.from_onnx(tmp_path / "s.onnx").streaming
    report = export_loaded(model, tmp_path / "repo", images=images, validation=FAST, fmt="triton")
    model_file = Path(report.out) / "1" / "model.onnx"
    assert report.storage == "genetic" and constant_nodes(onnx.load(str(model_file)).graph)[0]
    assert report.bytes == model_file.stat().st_size


def test_a_folded_file_from_an_earlier_release_still_loads_and_runs():
    """Written by gee-deploy b36eec0 (before storage was a choice): no gee.storage key, read as folded."""
    spec = ModelSpec.from_onnx(OLD_FOLDED)
    assert spec.storage == "folded" and spec.variant == "factorised"
    runtime = OrtRuntime(OLD_FOLDED, threads=1)
    x = np.random.default_rng(0).random((3, *spec.input_shape), dtype=np.float32)
    logits, counts = runtime.run(x)
    assert logits.shape == (3, spec.num_classes) and counts.shape == (3, len(spec.spiking_layers))
