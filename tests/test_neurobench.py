"""bench's NeuroBench block equals NeuroBench itself (neurobench 2.3.0, run here on the PyTorch models): SmallNet
genetic and its dense twin (PyTorch and onnxruntime runs), and a SpikingJelly model imported from NIR."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from gee_deploy.testing import neurobench_reference as nr
from gee_deploy.testing import nir_frameworks as nf
from gee_deploy.checkpoint import Checkpoint, DatasetRecord, save_checkpoint
from gee_deploy.data import load_test_arrays
from gee_deploy.evaluation.bench import bench_options, run_bench
from gee_deploy.evaluation.neurobench import Connection, OpCounter, membrane_updates, neurobench_results
from gee_deploy.neurons import LIF
from gee_deploy.zoo import create_model

from test_cli import run

pytest.importorskip("neurobench")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: many small ops run faster on one thread

SAMPLES, T = 16, 2
DATASET = "fashion-mnist-mini"
INTEGERS = ("Footprint", "ParameterCount")
RATIOS = ("ConnectionSparsity", "ActivationSparsity", "ClassificationAccuracy")


@pytest.fixture(scope="module")
def data():
    return load_test_arrays(DATASET, limit=SAMPLES)


def _smallnet(genes):
    """A small SmallNet that fires in every layer (BatchNorm gain 4: untrained, most layers stay silent)."""
    torch.manual_seed(0)
    model = create_model("smallnet", genes=genes, timesteps=T, widths=(8, 16, 32), hidden=32).eval()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data.fill_(4.0)
    return model


def _dense_twin(genetic):
    """``create_model("smallnet", genes=None)`` holding the genetic model's W, a third of each weight pruned to 0
    (so connection sparsity and the fan-outs of zero weights are tested too)."""
    twin = _smallnet(None)
    weights = dict(genetic.named_modules())
    gen = torch.Generator().manual_seed(1)
    for name, m in twin.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = weights[name].weight.detach().clone()
            w[torch.rand(w.shape, generator=gen) < 1 / 3] = 0
            m.weight.data = w
            if isinstance(m, nn.Linear):
                m.bias.data = weights[name].bias.detach().clone()
    return twin


def _save(model, path):
    save_checkpoint(path, Checkpoint(model_name=model.model_name, model_args=model.model_args,
                                     state_dict=model.state_dict(), dataset=DatasetRecord(name=DATASET)))
    return path


def _bench(paths):
    report = run_bench([str(p) for p in paths], bench_options(dataset=DATASET, limit=SAMPLES, batch_sizes=(1,),
                                                              min_time=0.0, threads=1))
    return {r["runtime"]: r["neurobench"] for r in report["runtimes"]}


def _assert_equal(ours: dict, theirs: dict, keys=INTEGERS + RATIOS):
    for key in keys:
        if key in INTEGERS:
            assert ours[key] == theirs[key], key
        else:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert ours["SynapticOperations"] == theirs["SynapticOperations"]  # integers / samples: the same floats


@pytest.mark.slow
@pytest.mark.parametrize("genes", [8, None], ids=["genetic", "dense-twin"])
def test_smallnet_matches_neurobench(genes, data, tmp_path):
    from gee_deploy.checkpoint import load_model
    from gee_deploy.formats import export_model

    genetic = _smallnet(8)
    model = genetic if genes else _dense_twin(genetic)
    ckpt = _save(model, tmp_path / "m.pt")
    export_model(ckpt, tmp_path / "m.onnx", variant="dense", samples=16)
    files = [ckpt, tmp_path / "m.onnx"]
    if genes:  # a factorised graph shows no dense weights: its layers borrow the reference's ops per spike
        export_model(ckpt, tmp_path / "f.onnx", variant="factorised", samples=16)
        files.append(tmp_path / "f.onnx")
    blocks = _bench(files)
    images, labels = data

    loaded = load_model(ckpt)
    dense = nr.dense_equivalent(loaded)
    with torch.no_grad():  # the model NeuroBench counts computes what the checkpoint computes
        torch.testing.assert_close(dense(torch.from_numpy(images)), loaded(torch.from_numpy(images)), rtol=0, atol=0)
    theirs = nr.run_neurobench(dense, images, labels, LIF)
    stored = nr.run_neurobench(loaded, images, labels, LIF)  # the model as stored: E, G (or W), BatchNorm
    theirs.update(Footprint=stored["Footprint"], ParameterCount=stored["ParameterCount"])
    assert all(v > 0 for v in blocks["torch"]["spikes_per_layer"])
    assert theirs["SynapticOperations"]["Effective_ACs"] > 0 and theirs["SynapticOperations"]["Effective_MACs"] > 0
    if genes is None:
        assert theirs["ConnectionSparsity"] > 0.1  # fewer zeros in the fused 4x4 kernels that run than in 3x3
    _assert_equal(blocks["torch"], theirs)
    ort = blocks["ort-cpu:m" if genes else "ort-cpu"]
    _assert_equal(ort, theirs, RATIOS)  # the ONNX graph's own spikes and weights
    assert ort["file_bytes"] == (tmp_path / "m.onnx").stat().st_size
    # NeuroBench reads membranes from snnTorch's `.mem` only: through TorchModel our LIF shows none
    assert theirs["MembraneUpdates"] == 0 and blocks["torch"]["MembraneUpdates"] > 0
    assert ort["MembraneUpdates"] == blocks["torch"]["MembraneUpdates"]  # the reference's
    if genes:
        factorised = blocks["ort-cpu:f"]
        assert factorised["borrowed_from"] == "torch"
        assert factorised["spikes_per_layer"] == blocks["torch"]["spikes_per_layer"]
        _assert_equal(factorised, theirs, RATIOS)
    if genes:  # genetic storage: far fewer stored parameters than the weights that run
        assert blocks["torch"]["ParameterCount"] < blocks["torch"]["weights"] / 2


@pytest.mark.slow
def test_spikingjelly_model_imported_from_nir_matches_neurobench(data, tmp_path):
    from spikingjelly.activation_based import neuron

    from gee_deploy.export.options import export_options
    from gee_deploy.nir.convert import convert_nir
    from gee_deploy.nir.options import NIRImportOptions

    images, labels = data
    np.save(tmp_path / "images.npy", images)
    net = nf.build("spikingjelly").eval()
    path = nf.export("spikingjelly", net, tmp_path / "sj.nir")
    convert_nir(path, tmp_path / "sj.onnx", export_options(),
                NIRImportOptions(timesteps=T, dt=1e-4, threshold_rule="ge", images=tmp_path / "images.npy"))
    blocks = _bench([tmp_path / "sj.onnx", path])
    theirs = nr.run_neurobench(nr.StemOnce(net, T, neuron.BaseNode), images, labels, neuron.LIFNode)
    assert all(v > 0 for v in blocks["ort-cpu"]["spikes_per_layer"])
    for runtime in ("ort-cpu", "nir"):  # the NIR executor shows no inner values: it borrows the graph's per spike
        _assert_equal(blocks[runtime], theirs, RATIOS)
    assert blocks["nir"]["borrowed_from"] == "ort-cpu"
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert blocks["ort-cpu"]["weights"] == weights


def test_fanout_counts_what_the_binarised_layer_sums():
    """sum_i [x_i != 0] fan-out(i) is NeuroBench's output sum of the binarised conv on the binarised input, border
    positions (fewer fan-outs under padding), zero weights and an asymmetric padding included."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, 4, 4, generator=gen)
    w[torch.rand(w.shape, generator=gen) < 0.3] = 0
    x = (torch.rand(7, 3, 9, 9, generator=gen) < 0.2).float()
    for pads in ((1, 1, 1, 1), (0, 2, 1, 0)):
        conv = Connection("c", w.numpy(), (2, 2), pads)
        ops = OpCounter({"c": conv})
        ops.add("c", x.numpy())
        padded = nn.functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        ref = nn.functional.conv2d(padded, (w != 0).float(), stride=2).sum()
        dense = nn.functional.conv2d(nn.functional.pad(torch.ones_like(x), (pads[1], pads[3], pads[0], pads[2])),
                                     torch.ones_like(w), stride=2).sum()
        assert ops.layers["c"] == {"AC": int(ref), "MAC": 0, "Dense": int(dense)}


def test_membrane_updates_follow_neurobench_on_snntorch():
    """Our count of a membrane trajectory is NeuroBench's MembraneUpdates of the snnTorch neurons it came from."""
    import snntorch as snn
    from neurobench.metrics.workload import MembraneUpdates
    from neurobench.models import SNNTorchModel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), snn.Leaky(beta=0.5, init_hidden=True, reset_mechanism="zero"),
                        nn.Linear(30, 5), snn.Leaky(beta=0.5, init_hidden=True, output=True))
    x = torch.rand(3, 6, 20) * 2  # [N, T, features], NeuroBench's layout
    model = SNNTorchModel(net)
    model.register_hooks()
    with torch.no_grad():
        model(x)
    theirs = MembraneUpdates()(model, None, (x, None))
    ours = sum(membrane_updates(torch.stack(h.post_fire_mem_potential).numpy()) for h in model.activation_hooks)
    model.cleanup_hooks()
    assert ours / len(x) == theirs > 0


def test_neurobench_format_is_save_benchmark_results_layout(tiny_checkpoint, tmp_path, capsys):
    """`bench --neurobench` writes one file per runtime in the layout Benchmark.save_benchmark_results writes."""
    from neurobench.benchmarks import Benchmark

    code, _, err = run(["bench", str(tiny_checkpoint), "--out", str(tmp_path), "--limit", "8", "--batch-sizes", "1",
                        "--min-time", "0", "--neurobench", "--quiet"], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "neurobench" / "torch.json").read_text())
    bench = Benchmark.__new__(Benchmark)  # save_benchmark_results writes .results as it stands
    bench.results = neurobench_results(json.loads((tmp_path / "report.json").read_text())["runtimes"][0]["neurobench"])
    bench.save_benchmark_results(str(tmp_path / "theirs"))
    assert (tmp_path / "neurobench" / "torch.json").read_text() == (tmp_path / "theirs.json").read_text()
    assert set(ours) == set(nr.STATIC + nr.WORKLOAD)
    assert set(ours["SynapticOperations"]) == {"Effective_MACs", "Effective_ACs", "Dense"}
    md = (tmp_path / "report.md").read_text()
    assert "NeuroBench 2.3.0" in md and "Effective_ACs" in md


def test_the_dense_equivalent_of_a_biased_conv_pool_computes_what_it_computes():
    """A ConvPool's fused kernel keeps the conv's bias (the average of a constant is that constant)."""
    from gee_deploy.zoo.base import ConvPool

    torch.manual_seed(0)
    block = torch.nn.Sequential(ConvPool(torch.nn.Conv2d(3, 5, 3, padding=1, bias=True)))
    block[0][0].bias.data.uniform_(-1, 1)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(nr.dense_equivalent(block)(x), block(x), atol=1e-5, rtol=0)
