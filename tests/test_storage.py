"""Genetic storage: the file holds E, G, scales and BatchNorm parameters, and computes the folded weights."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from gee_deploy.cli import cli
from gee_deploy.export import build_onnx
from gee_deploy.formats import export_loaded
from gee_deploy.export.errors import UnknownOptionError
from gee_deploy.export.folding import dense_kernel, fold_layer
from gee_deploy.export.graph import GraphBuilder, tensor_info
from gee_deploy.export.int8 import source_weight
from gee_deploy.export.tensorrt import compatibility_problems
from gee_deploy.export.weights import WeightOps, constant_nodes, fold_constants
from gee_deploy.export.writer import folded_with_scales
from gee_deploy.genetic import GeneticConv2d
from gee_deploy.neurons import SpikeRecorder
from gee_deploy.ort_session import create_session
from gee_deploy.quantisation import attach_quantisers, spike_reading_layers
from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.spec import ModelSpec
from gee_deploy.zoo import create_model, list_models
from gee_deploy.zoo.base import fuse_average_pool
from test_export import FAST, small_model

OLD_FOLDED = Path(__file__).parent / "data" / "smallnet-g4-factorised-b36eec0.onnx"


def _run(proto: onnx.ModelProto, images: torch.Tensor) -> list[np.ndarray]:
    return create_session(proto.SerializeToString()).run(None, {"input": images.numpy()})


def _parameter_bytes(model: torch.nn.Module) -> int:
    return 4 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,variant", [(name, "dense") for name in list_models()] +
                         [(name, variant) for name in ("smallnet", "resnet19") for variant in ("factorised", "int8")])
def test_genetic_and_folded_storage_run_the_same_weights(name, variant):
    """Folding the genetic file's constant subgraph gives the folded file, and both compute the same outputs
    bit for bit."""
    model, images = small_model(name, 6)
    genetic, spec = build_onnx(model, variant, storage="genetic")
    folded, folded_spec = build_onnx(model, variant, storage="folded")
    assert (spec.storage, folded_spec.storage) == ("genetic", "folded")
    # a genetic file's metadata leaves out the int8 scales its graph computes; folding it finds the folded ones
    assert spec.layers == tuple(replace(l, weight_scales=None) for l in folded_spec.layers)
    assert all((l.weight_scales is not None) == (l.precision == "int8") for l in folded_spec.layers)
    assert folded_with_scales(genetic, spec)[1] == folded_spec
    assert constant_nodes(genetic.graph)[0] and not constant_nodes(folded.graph)[0]
    refolded = fold_constants(genetic)
    assert [n.op_type for n in refolded.graph.node] == [n.op_type for n in folded.graph.node]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}
    for t in refolded.graph.initializer:
        assert np.array_equal(onnx.numpy_helper.to_array(t), init[t.name]), t.name
    for a, b in zip(_run(genetic, images), _run(folded, images)):
        assert np.array_equal(a, b)


def _genetic_conv_bn(g: int = 16) -> tuple[GeneticConv2d, torch.nn.BatchNorm2d]:
    torch.manual_seed(0)
    conv = GeneticConv2d(torch.randn(48, 9, g), torch.randn(64, 9, g), torch.randn(g, g), 3, padding=1)
    bn = torch.nn.BatchNorm2d(64).eval()
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3), bn.weight.data.uniform_(-2, 2)
    return conv, bn


def _subgraph_value(ops: WeightOps, graph: GraphBuilder, tensor, dtype=np.float32) -> np.ndarray:
    """What onnxruntime computes for ``tensor`` from the stored parameters (the whole graph is constant)."""
    graph.op("Identity", [ops.output(graph, tensor, "w", dtype)], out_names=["y"])
    proto = graph.model([], [tensor_info("y", list(tensor.shape), onnx.helper.np_dtype_to_tensor_dtype(
        np.dtype(dtype)))], 18, {})
    return next(onnx.numpy_helper.to_array(t) for t in fold_constants(proto).graph.initializer if t.name == "y")


@pytest.mark.parametrize("pooled", [False, True])
def test_the_weight_subgraph_computes_eq1_with_the_batchnorm(pooled):
    """The dense kernel onnxruntime computes from the stored E, G and BatchNorm parameters against eq. 1 written
    out in float64 (einsum over taps with G, the BatchNorm scale, the 2x2 pool fused): a float32 product."""
    conv, bn = _genetic_conv_bn()
    graph = GraphBuilder()
    ops = WeightOps(graph)
    kernel, _ = dense_kernel(ops, fold_layer(conv, bn, pooled=pooled, ops=ops, hint="l"), "l")
    got = _subgraph_value(ops, graph, kernel)
    assert got.dtype == np.float32 and got.shape == ((64, 48, 4, 4) if pooled else (64, 48, 3, 3))
    with torch.no_grad():
        w64 = torch.einsum("ipa,ab,opb->oip", conv.e_in.double(), conv.gene_matrix.double(), conv.e_out.double())
        w64 = w64.reshape(64, 48, 3, 3) * float(conv.scale) * (
            bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).reshape(-1, 1, 1, 1)
        if pooled:
            w64 = fuse_average_pool(w64)
    np.testing.assert_allclose(got, w64.numpy(), rtol=1e-5, atol=1e-6 * np.abs(w64.numpy()).max())
    np.testing.assert_allclose(got, kernel.value, rtol=1e-5, atol=1e-6 * np.abs(got).max())  # numpy's value


def test_the_int8_source_weight_is_the_float64_product_rounded_once():
    """The weight int8 codes are taken from: computed in float64 by onnxruntime and rounded to float32 once, it
    is the layer's ``exact_weight`` (what ``gee-deploy quantize`` fake-quantises) but for rare last-bit flips
    of a float64 sum in another order."""
    conv, _ = _genetic_conv_bn()
    graph = GraphBuilder()
    ops = WeightOps(graph)
    source = source_weight(ops, conv, None, "l")  # [k, k, Cin, Cout]
    got = _subgraph_value(ops, graph, source).transpose(3, 2, 0, 1)
    exact = conv.exact_weight().detach().numpy()
    assert (got != exact).sum() <= 2 and (source.value.transpose(3, 2, 0, 1) != exact).sum() <= 2


def test_readable_weight_graphs_name_every_step_and_compute_the_same():
    """WeightOps(readable=True) names intermediates by their hints (for inspecting a graph); the weights match."""
    torch.manual_seed(0)
    conv = GeneticConv2d(torch.randn(8, 9, 4), torch.randn(6, 9, 4), torch.randn(4, 4), 3, padding=1)
    bn = torch.nn.BatchNorm2d(6).eval()
    weights = []
    for readable in (False, True):
        graph = GraphBuilder()
        ops = WeightOps(graph, readable=readable)
        kernel, _ = dense_kernel(ops, fold_layer(conv, bn, ops=ops, hint="l"), "l")
        graph.op("Identity", [ops.output(graph, kernel, "w")], out_names=["y"])
        proto = graph.model([], [tensor_info("y", list(kernel.shape))], 18, {})
        inner = [o for n in proto.graph.node for o in n.output if o != "y"]
        assert all(o == "w" or o.startswith("w_") for o in inner) != readable, inner
        weights.append(onnx.numpy_helper.to_array(fold_constants(proto).graph.initializer[-1]))
    assert np.array_equal(*weights)


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
    """smallnet at g = 32: <= 1.1 x its genetic parameter bytes + 64 KiB of graph. The int8 file stores the same
    parameters; its in-graph quantisation and patch gathering add graph only (its metadata leaves out the
    per-channel scales the graph computes)."""
    torch.manual_seed(0)
    model = create_model("smallnet", genes=32).eval()
    budget = 1.1 * _parameter_bytes(model) + 64 * 1024
    sizes = {}
    for variant in ("dense", "factorised", "auto", "int8"):
        proto, _ = build_onnx(model, variant, storage="genetic")
        sizes[variant] = proto.ByteSize()
        assert sizes[variant] <= budget, (variant, sizes[variant], budget)
    folded, _ = build_onnx(model, "dense", storage="folded")
    assert sizes["dense"] < folded.ByteSize() and sizes["int8"] <= sizes["dense"] + 8 * 1024


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


def test_int8_export_defaults_to_the_smaller_storage(tmp_path):
    """int8 codes take a byte per weight, the encodings four per parameter: with many genes per weight the
    folded file is the smaller one, and the default picks it (an explicit --storage is kept)."""
    model, images = small_model("smallnet", 64)  # 64 genes: the encodings outweigh the int8 codes 2.4 to 1
    # post-training int8 of a random net: validated under the post-training limits (validation=None)
    report = export_loaded(model, tmp_path / "q.onnx", variant="int8", images=images)
    assert report.storage == "folded" and any("folded storage" in n for n in report.notes)
    assert ModelSpec.from_onnx(tmp_path / "q.onnx").storage == "folded"
    kept = export_loaded(model, tmp_path / "g.onnx", variant="int8", images=images, storage="genetic")
    assert kept.storage == "genetic" and kept.bytes > report.bytes
    small, images = small_model("smallnet", 6)
    report = export_loaded(small, tmp_path / "s.onnx", variant="int8", images=images)
    assert report.storage == "genetic"  # few genes: the encodings are smaller than the int8 codes
