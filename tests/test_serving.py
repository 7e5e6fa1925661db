"""Runtimes, bench, eq. 17 energy, parity gates and `gee-deploy check` on the tiny checkpoint and its ONNX."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gee_deploy.cli import cli
from gee_deploy.errors import InputError, ModelFileError, RuntimeUnavailableError
from gee_deploy.data import load_test_arrays
from gee_deploy.energy import E_AC_PJ, E_MAC_PJ, energy_per_layer
from gee_deploy.kinds import ExportVariant, LayerKind
from gee_deploy.parity import CHECK_GATES, Outputs, Thresholds, checks, compare
from gee_deploy.evaluation.bench import evaluate
from gee_deploy.evaluation.runtimes import TorchRuntime, open_runtime
from gee_deploy.serving.runtimes import OrtRuntime
from gee_deploy.spec import LayerSpec, ModelSpec
from gee_deploy.walk import describe
from gee_deploy.zoo import list_models
from gee_deploy.zoo.base import ConvPool


@pytest.fixture(scope="module")
def data():
    return load_test_arrays("synthetic", limit=64)


@pytest.fixture(scope="module")
def runtimes(tiny_checkpoint, serving_onnx):
    return TorchRuntime(tiny_checkpoint), OrtRuntime(serving_onnx, threads=1)


def _edit_outputs(src, dst, logit_shift: float = 0.0, spike_scale: float = 1.0) -> None:
    """Copy an exported graph with its outputs perturbed, as a regression in the exporter would."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    for out, op, value in (("logits", "Add", np.eye(1, 10, 3, dtype=np.float32)[0] * logit_shift),
                           ("spike_counts", "Mul", np.float32(spike_scale))):
        for node in graph.node:
            node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), f"{out}_k"))
        graph.node.append(helper.make_node(op, [f"{out}_raw", f"{out}_k"], [out]))
    onnx.save(model, str(dst))


# ---- runtimes ------------------------------------------------------------------------------------------

def test_torch_runtime_is_the_model_with_its_spike_counts(tiny_checkpoint, runtimes, data):
    from gee_deploy.checkpoint import load_model
    from gee_deploy.neurons import SpikeRecorder

    model = load_model(tiny_checkpoint)
    x = data[0][:8]
    with torch.no_grad(), SpikeRecorder(model) as rec:
        want = model(torch.from_numpy(x))
    logits, spikes = runtimes[0](x)
    assert np.array_equal(logits, want.numpy())
    assert np.array_equal(spikes, rec.stacked().numpy())
    assert spikes.shape == (8, len(runtimes[0].spec.spiking_layers))
    assert list(runtimes[0].spec.neurons_per_layer) == rec.sizes


def test_ort_runtime_matches_the_reference(runtimes, data):
    ref, ort = runtimes
    images, labels = data
    a, b = evaluate(ref, images, labels, batch_size=16), evaluate(ort, images, labels, batch_size=16)
    assert ort.spec.spiking_layers == ref.spec.spiking_layers
    assert np.abs(a.logits - b.logits).max() < 1e-4
    assert (a.logits.argmax(1) == b.logits.argmax(1)).all()
    assert np.array_equal(a.spikes, b.spikes)
    assert a.spikes.sum() > 0  # the comparison means something only if neurons fire


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 1, 28, 28), np.float64), "float32"),
    (np.zeros((2, 3, 28, 28), np.float32), "shape"),
    (np.zeros((1, 28, 28), np.float32), "shape"),
    (np.zeros((0, 1, 28, 28), np.float32), "N >= 1"),
    (np.full((1, 1, 28, 28), np.nan, np.float32), "NaN"),
    (np.full((1, 1, 28, 28), np.inf, np.float32), "Inf"),
])
def test_runtimes_reject_bad_input(runtimes, bad, message):
    for rt in runtimes:
        with pytest.raises(InputError, match=message):
            rt(bad)


def test_broken_model_files_are_one_line_errors(serving_onnx, tmp_path):
    import onnx

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(serving_onnx.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="cannot be loaded"):
        OrtRuntime(truncated)
    bare = onnx.load(str(serving_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="lacks gee-deploy metadata"):
        OrtRuntime(tmp_path / "bare.onnx")
    streaming = onnx.load(str(serving_onnx))
    props = {p.key: p for p in streaming.metadata_props}
    if "gee.streaming" in props:
        props["gee.streaming"].value = "true"
    else:
        streaming.metadata_props.add(key="gee.streaming", value="true")
    onnx.save(streaming, str(tmp_path / "streaming.onnx"))
    with pytest.raises(ModelFileError, match="streaming graph"):
        OrtRuntime(tmp_path / "streaming.onnx")
    with pytest.raises(ModelFileError, match="suffix"):
        open_runtime(tmp_path / "model.bin")
    result = CliRunner().invoke(cli, ["bench", str(truncated), "--out", str(tmp_path / "b")], standalone_mode=False)
    assert "truncated.onnx cannot be loaded by onnxruntime" in str(result.exception)
    assert not (tmp_path / "b").exists()


def test_gpu_runtimes_say_what_is_missing(serving_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(RuntimeUnavailableError, match="CUDAExecutionProvider"):
        open_runtime(serving_onnx, "ort-cuda")


def test_without_onnxruntime_the_cli_names_the_extras(serving_onnx, tmp_path):
    """Neither gee-deploy[cpu] nor [gpu] installed: one `error:` line naming both, exit 2, nothing written."""
    import subprocess
    import sys

    script = ("import sys; sys.modules['onnxruntime'] = None  # as if no distribution provided the module\n"
              "from gee_deploy.cli import main; sys.argv = ['gee-deploy'] + sys.argv[1:]; main()")
    r = subprocess.run([sys.executable, "-c", script, "bench", str(serving_onnx), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: onnxruntime is not installed") and "gee-deploy[cpu]" in r.stderr \
        and "gee-deploy[gpu]" in r.stderr
    assert not (tmp_path / "b").exists()


def test_tensorrt_runtime_without_tensorrt(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed; the plan test below covers it")
    except ImportError:
        pass
    with pytest.raises(RuntimeUnavailableError, match="tensorrt"):
        open_runtime(tmp_path / "model.plan")


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_plan_matches_onnxruntime(serving_onnx, runtimes, data, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="needs the tensorrt package")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(serving_onnx.read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 1, 28, 28), (16, 1, 28, 28), (64, 1, 28, 28))
    config.add_optimization_profile(profile)
    plan = tmp_path / "tiny.plan"
    plan.write_bytes(bytes(builder.build_serialized_network(network, config)))
    ModelSpec.from_onnx(serving_onnx).write_sidecar(plan)  # what `export --format tensorrt` writes beside it
    rt = open_runtime(plan)
    logits, spikes = rt(data[0][:16])
    ref_logits, ref_spikes = runtimes[1](data[0][:16])
    assert np.abs(logits - ref_logits).max() < 1e-3
    assert np.array_equal(spikes, ref_spikes)


# ---- energy --------------------------------------------------------------------------------------------

def test_layer_table_reads_spikes_after_the_first_lif(tiny_checkpoint):
    from gee_deploy.checkpoint import load_model

    model = load_model(tiny_checkpoint)
    spec = describe(model)
    layers, names, sizes = spec.layers, spec.spiking_layers, spec.neurons_per_layer
    assert [r.input_is_spikes for r in layers] == [False] + [True] * (len(layers) - 1)
    assert [r.calls for r in layers] == [1] + [model.timesteps] * (len(layers) - 1)
    assert layers[0].macs == 32 * 1 * 16 * 14 * 14  # stem 32C3 + AP2 on 28x28: a 4x4 stride-2 conv
    assert layers[-1].macs == 256 * 10 and layers[-1].spiking_input_layer == names[-1]
    assert len(sizes) == len(names) == 4 and sizes[-1] == 256  # the hidden FC layer's neurons


def _layer(name: str, macs: int, reads: str | None, spike_macs: int, calls: int,
           variant: ExportVariant = ExportVariant.DENSE) -> LayerSpec:
    return LayerSpec(name=name, kind=LayerKind.CONV, variant=variant, macs=macs, input_is_spikes=reads is not None,
                     spiking_input_layer=reads, spike_macs=spike_macs, calls=calls)


def test_energy_is_eq17():
    layers = [_layer("stem", 1000, None, 1000, 1), _layer("conv", 500, "lif1", 500, 4),
              _layer("factorised", 300, "lif1", 100, 4, ExportVariant.FACTORISED)]
    per = energy_per_layer(layers, {"lif1": 0.1}, timesteps=4)
    assert per[0].energy_pj == pytest.approx(E_MAC_PJ * 1000)  # the stem runs once, not T times
    assert per[1].sops == pytest.approx(0.1 * 4 * 500)
    assert per[1].energy_pj == pytest.approx(E_AC_PJ * 0.1 * 4 * 500)
    assert per[2].op == "AC+MAC" and per[2].analog_macs == 200 * 4
    assert per[2].energy_pj == pytest.approx(E_AC_PJ * 0.1 * 4 * 100 + E_MAC_PJ * 200 * 4)
    with pytest.raises(ModelFileError, match="lif9"):
        energy_per_layer([_layer("conv", 500, "lif9", 500, 4)], {"lif1": 0.1}, 4)


def _fan_out_bounds(module, in_shape) -> tuple[float, float]:
    """Least and most synapses of one input neuron of ``module``, as fractions of eq. 17's uniform share.

    Eq. 17 spreads a layer's MACs evenly over its input neurons; zero padding gives border neurons fewer
    synapses, and a stride that skips the last rows or columns (a ConvPool on an odd map) gives the covered
    ones more, so the exact SynOp count lies between these fractions of eq. 17's count.
    """
    if isinstance(module, torch.nn.Linear) or len(in_shape) == 1:
        return 1.0, 1.0
    conv = module[0] if isinstance(module, ConvPool) else module
    k = conv.kernel_size if isinstance(conv.kernel_size, int) else conv.kernel_size[0]
    stride = conv.stride if isinstance(conv.stride, int) else conv.stride[0]
    pad = conv.padding if isinstance(conv.padding, int) else conv.padding[0]
    if isinstance(module, ConvPool):
        k, stride = k + 1, 2
    ones = torch.ones(1, 1, *in_shape[-2:], requires_grad=True)
    out = torch.nn.functional.conv2d(ones, torch.ones(1, 1, k, k), stride=stride, padding=pad)
    out.sum().backward()
    fan = ones.grad  # kernel taps that read each input pixel
    share = k * k * out[0, 0].numel() / fan.numel()  # eq. 17's taps per input pixel
    return fan.min().item() / share, fan.max().item() / share


def test_energy_cross_checked_with_spikingjelly(tiny_checkpoint, data):
    """MACs and SOPs of eq. 17 against spikingjelly's MAC and SynOp counters on the PyTorch model.

    spikingjelly counts every op it sees, so the genetic weight generation (batch-independent) is removed by
    counting batches of n and 2n samples. Its SynOps are exact per spike; eq. 17 spreads them uniformly over
    the input neurons, which is exact where every input neuron feeds the same number of MACs (no padding)
    and an upper bound where zero padding gives border neurons fewer.
    """
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    from gee_deploy.checkpoint import load_model
    from gee_deploy.neurons import SpikeRecorder

    model = load_model(tiny_checkpoint)
    spec = describe(model)
    layers, names, sizes = spec.layers, spec.spiking_layers, spec.neurons_per_layer
    modules = dict(model.named_modules())
    # the module that runs each layer: a ConvPool runs its conv as one fused stride-2 conv
    runs = {r.name: modules[r.name] for r in layers}
    runs.update({f"{n}.0": m for n, m in modules.items() if isinstance(m, ConvPool)})
    where = {m: n for n, m in modules.items()}
    x = torch.from_numpy(data[0][:16])
    counted = []
    for n in (8, 16):
        syn, mac = SynOpCounter(), MACCounter(extra_ignore_modules=[torch.nn.BatchNorm2d])
        with torch.no_grad(), DispatchCounterMode([syn, mac]):
            model(x[:n])
        prefix = type(model).__name__
        counted.append(({r.name: sum(syn.records[f"{prefix}.{where[runs[r.name]]}"].values()) for r in layers},
                        {r.name: sum(mac.records[f"{prefix}.{where[runs[r.name]]}"].values()) for r in layers}))
    (syn8, mac8), (syn16, mac16) = counted
    sj_sops = {k: syn16[k] - syn8[k] for k in syn16}  # samples 8..15
    sj_macs = {k: mac16[k] - mac8[k] for k in mac16}

    # Input firing rate and input shape of every layer on samples 8..15, and the LIF rates the report uses.
    seen, shapes = {}, {}

    def record(name, inp):
        seen[name], shapes[name] = inp.float().mean().item(), tuple(inp.shape[1:])

    hooks = [m.register_forward_hook(lambda mod, a, o, name=name: record(name, a[0])) for name, m in runs.items()]
    with torch.no_grad(), SpikeRecorder(model) as rec:
        model(x[8:])
    for h in hooks:
        h.remove()
    t = model.timesteps
    lif_rates = dict(zip(names, (rec.stacked().double().mean(0) / (torch.tensor(list(sizes)) * t)).tolist()))
    report = {e.name: e for e in energy_per_layer(layers, lif_rates, t)}
    input_rates = {r.spiking_input_layer: seen[r.name] for r in layers if r.input_is_spikes}
    uniform = {e.name: e for e in energy_per_layer(layers, input_rates, t)}

    stem = layers[0].name
    assert report[stem].op == "MAC" and sj_macs[stem] == 8 * report[stem].macs
    assert sj_sops[stem] == 0
    for r in layers[1:]:
        name = r.name
        assert sj_macs[name] == 0  # binary input: no MACs, only accumulates
        low, high = _fan_out_bounds(runs[name], shapes[name])
        assert low * 8 * uniform[name].sops * (1 - 1e-9) <= sj_sops[name] <= high * 8 * uniform[name].sops * (1 + 1e-9)
    classifier = layers[-1].name  # reads its LIF directly: the report's own rate is exact
    assert sj_sops[classifier] == pytest.approx(8 * report[classifier].sops, rel=1e-9)


# ---- bench and its report ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_report(tiny_checkpoint, serving_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(cli, ["bench", str(tiny_checkpoint), str(serving_onnx), "--out", str(out),
                                      "--batch-sizes", "1,4", "--limit", "300", "--threads", "1",
                                      "--min-time", "0.05", "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_bench_writes_report_and_prints_every_number(bench_report):
    out, printed = bench_report
    report = json.loads((out / "report.json").read_text())
    for name in ("report.md", "latency.png", "firing_rate.png", "energy.png"):
        assert (out / name).stat().st_size > 1000, name
    assert [(r["runtime"], r["batch"]) for r in report["latency"]] == [
        ("torch", 1), ("torch", 4), ("ort-cpu", 1), ("ort-cpu", 4)]
    for lat in report["latency"]:
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["iters"] >= 20
        assert lat["samples_per_s"] > 0
    ort = report["runtimes"][1]
    assert ort["runtime"] == "ort-cpu" and ort["parity"]["top1_agreement"] == 1.0
    assert ort["parity"]["spike_count_delta"] == 0.0
    lines = printed.strip().splitlines()
    assert len(lines) == 2 + 4 and lines[2].split()[:2] == ["torch", "1"] and lines[-1].split()[:2] == ["ort-cpu", "4"]
    assert "-" not in lines[-1].split()[2:]  # no blank column for the deployed runtime
    md = (out / "report.md").read_text()
    assert "| body.0 |" in md and "| fp32 |" in md and "Energy constants used (pJ): fp32 4.6 per MAC, 0.9 per SOP" in md
    assert report["machine"]["load_average"] >= 0 and "load average when the run started" in md


def _recomputed_energy(row: dict, timesteps: int) -> float:
    """Eq. 17 from a report row's raw numbers only: MACs, calls, spike MACs, spikes and neurons per layer."""
    t = timesteps
    rates = {k: row["spikes_per_layer"][k] / (row["neurons_per_layer"][k] * t) for k in row["spikes_per_layer"]}
    assert rates == pytest.approx(row["firing_rates"], rel=1e-12)
    energy = 0.0
    for e in row["energy"]["per_layer"]:
        if e["spiking_input_layer"] is None:
            energy += 4.6 * e["macs"] * e["calls"]
        else:
            energy += 0.9 * rates[e["spiking_input_layer"]] * t * e["spike_macs"]
            energy += 4.6 * (e["macs"] - e["spike_macs"]) * e["calls"]
    return energy


def test_bench_energy_equals_recomputation_from_report(bench_report):
    report = json.loads((bench_report[0] / "report.json").read_text())
    for r in report["runtimes"]:
        assert r["energy"]["energy_pj"] == pytest.approx(_recomputed_energy(r, report["timesteps"]), rel=1e-12)
    torch_e, ort_e = (r["energy"]["energy_pj"] for r in report["runtimes"])
    assert ort_e == pytest.approx(torch_e, rel=1e-3)  # same MACs; spikes equal up to float-rounding flips


def test_export_spec_matches_the_reference_spec(runtimes):
    """The exported graph's spec (read back from its metadata) and the PyTorch reference's spec describe the
    same network: the same spiking layers, neurons, MACs, calls and spike sources per layer."""
    ref, ort = runtimes
    assert ort.spec.spiking_layers == ref.spec.spiking_layers
    assert ort.spec.neurons_per_layer == ref.spec.neurons_per_layer
    keys = ("name", "macs", "calls", "input_is_spikes", "spiking_input_layer", "spike_macs")
    assert [{k: getattr(r, k) for k in keys} for r in ort.spec.layers] == \
        [{k: getattr(r, k) for k in keys} for r in ref.spec.layers]


SMALL_IMAGES = {"cifarnet": 8, "resnet18": 8, "resnet19": 8, "resnet34": 32, "vgg11": 32, "vgg16": 32}


@pytest.mark.parametrize("name", list_models())
def test_reference_spec_agrees_with_the_exporter_across_the_zoo(name):
    """Which LIF feeds which layer is data flow (ResNet shortcuts read the block input; average pooling
    makes spikes analog): the eager spec and the dense graph's metadata agree on every architecture."""
    from gee_deploy.export import build_onnx
    from gee_deploy.zoo import create_model

    torch.manual_seed(0)
    kw = {"image_size": SMALL_IMAGES[name]} if name in SMALL_IMAGES else {}
    model = create_model(name, genes=4, timesteps=2, num_classes=4, **kw).eval()
    eager = describe(model)
    proto, _ = build_onnx(model, "dense")
    exported = ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props}, "graph")
    keys = ("name", "kind", "macs", "calls", "input_is_spikes", "spiking_input_layer", "spike_macs", "dense_macs")
    assert [{k: getattr(r, k) for k in keys} for r in eager.layers] == \
        [{k: getattr(r, k) for k in keys} for r in exported.layers]
    assert eager.spiking_layers == exported.spiking_layers and eager.neurons_per_layer == exported.neurons_per_layer


def test_factorised_export_counts_its_post_spike_ops_as_macs(tiny_checkpoint, data, tmp_path):
    from gee_deploy.formats import export_model
    from gee_deploy.evaluation.bench import runtime_stats

    path = tmp_path / "fact.onnx"
    export_model(tiny_checkpoint, path, variant="factorised", samples=32)
    rt = OrtRuntime(path, threads=1)
    row = json.loads(json.dumps(runtime_stats(rt, evaluate(rt, *data))))
    mixed = [e for e in row["energy"]["per_layer"] if e["op"] == "AC+MAC"]
    assert mixed and all(0 < e["spike_macs"] < e["macs"] and e["analog_macs"] > 0 for e in mixed)
    assert row["energy"]["energy_pj"] == pytest.approx(_recomputed_energy(row, rt.spec.timesteps), rel=1e-12)


def test_bench_of_deployed_files_alone(serving_onnx, tmp_path):
    from gee_deploy.evaluation.bench import bench_options, run_bench
    from gee_deploy.evaluation.report import summary_table

    copy = tmp_path / "copy.onnx"
    copy.write_bytes(serving_onnx.read_bytes())
    report = run_bench([serving_onnx, copy], bench_options(batch_sizes=(2,), limit=16, threads=1, min_time=0.01))
    labels = [r["runtime"] for r in report["runtimes"]]
    assert labels == ["ort-cpu:tiny", "ort-cpu:copy"]
    assert all("parity" not in r and lat["speedup_vs_torch"] is None
               for r, lat in zip(report["runtimes"], report["latency"]))
    assert summary_table(report).splitlines()[2].split()[6] == "-"  # no reference: blank, not invented


def test_bench_bad_options(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["bench", str(tiny_checkpoint), "--out", str(tmp_path), "--runtimes", "ort-cpu"],
                      standalone_mode=False)
    assert "apply to none of the given files" in str(r.exception)
    r = runner.invoke(cli, ["bench", str(tiny_checkpoint), "--out", str(tmp_path), "--runtimes", "tvm"],
                      standalone_mode=False)
    assert "--runtimes takes comma-separated names from torch, ort-cpu" in str(r.exception)
    (tmp_path / "file").write_text("")
    r = runner.invoke(cli, ["bench", str(tiny_checkpoint), "--out", str(tmp_path / "file" / "b")],
                      standalone_mode=False)
    assert "is a file, not a directory" in str(r.exception)
    r = runner.invoke(cli, ["bench", str(tiny_checkpoint), "--out", str(tmp_path), "--batch-sizes", "1,x"])
    assert r.exit_code == 2 and r.stderr == "error: --batch-sizes must be an integer, got 'x'\n"


# ---- check ---------------------------------------------------------------------------------------------

def test_check_gates_list_every_failure():
    from dataclasses import replace

    rng = np.random.default_rng(0)
    same = Outputs(rng.normal(size=(1000, 10)).astype(np.float32), np.ones((1000, 2), np.float32),
                   rng.integers(0, 10, 1000))
    good = compare(same, same)
    assert (good.top1_agreement, good.accuracy_delta, good.spike_count_delta) == (1.0, 0.0, 0.0)
    assert all(c.ok for c in checks(good, Thresholds(), CHECK_GATES, speedup=5.0))
    bad = replace(good, top1_agreement=0.99, accuracy_delta=-0.02, accuracy_lost=20, accuracy_gained=0,
                  spike_count_delta=0.01)
    lines = [c.message for c in checks(bad, Thresholds(), CHECK_GATES, speedup=1.5) if not c.ok]
    assert len(lines) == 4
    assert [w.split()[0] for w in lines] == ["top-1", "accuracy", "spike-count", "onnxruntime"]


def test_check_passes_on_a_faithful_export(tiny_checkpoint, serving_onnx):
    r = CliRunner().invoke(cli, ["check", str(tiny_checkpoint), str(serving_onnx), "--limit", "64",
                                 "--min-speedup", "0"])
    assert r.exit_code == 0, r.output
    assert "top-1 agreement 100.0000%" in r.output and "check passed" in r.output
    assert "another checkpoint" not in r.output


def test_check_fails_with_one_line_per_regression(tiny_checkpoint, serving_onnx, tmp_path):
    broken = tmp_path / "broken.onnx"
    _edit_outputs(serving_onnx, broken, logit_shift=100.0, spike_scale=1.5)
    r = CliRunner().invoke(cli, ["check", str(tiny_checkpoint), str(broken), "--limit", "64",
                                 "--min-speedup", "1000"])
    assert r.exit_code == 1
    fails = [line for line in r.output.splitlines() if line.startswith("FAIL: ")]
    # all 64 predictions move to one class, but on synthetic labels that costs one sample of accuracy: the paired
    # accuracy gate (tests/test_parity.py) does not call that a loss; top-1 agreement does
    assert [f.split()[1] for f in fails] == ["top-1", "spike-count", "onnxruntime"], r.output


def test_bench_profile_ops_splits_the_graph_time_by_operator(serving_onnx, tmp_path):
    from gee_deploy.evaluation.bench import bench_options, run_bench
    from gee_deploy.evaluation.report import write_report

    report = run_bench([serving_onnx], bench_options(batch_sizes=(4,), limit=8, threads=1, min_time=0.01,
                                                     profile_ops=True))
    prof = report["runtimes"][0]["op_profile"]
    ops = {o["op"]: o for o in prof["ops"]}
    assert prof["batch"] == 4 and "Conv" in ops and "GreaterOrEqual" in ops  # the convs and the LIF threshold
    assert sum(o["share"] for o in prof["ops"]) == pytest.approx(1.0)
    assert all(o["ms_per_call"] >= 0 and o["nodes"] >= 1 for o in prof["ops"])
    write_report(report, tmp_path)
    assert "| Conv |" in (tmp_path / "report.md").read_text()


def test_load_warning_names_the_load_and_what_to_do():
    import os

    from gee_deploy.evaluation.bench import load_warning

    cpus = os.cpu_count() or 1
    assert load_warning(0.2, None) is None
    assert load_warning(cpus - 1, 1) is None or cpus == 1  # a single thread finds a free core
    busy = load_warning(cpus + 0.5, None)
    assert busy.startswith(f"warning: other processes kept {cpus + 0.5:.1f} of {cpus} CPUs busy") and \
        "consider --threads 1" in busy
    assert "a single thread still shares its core" in load_warning(cpus + 0.5, 1)


def test_busy_cpus_counts_what_the_cpus_do_now_not_the_minute_before(monkeypatch):
    """Two /proc/stat readings half a second apart: 3 of 4 jiffies busy on every CPU is 0.75 x the CPU count,
    whatever the load average says (right after a training run it still counts the run)."""
    import io

    import gee_deploy.evaluation.bench as bench

    readings = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 200 950 0 0 0 0 0 0\n"])
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(next(readings)))
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 4)
    assert bench.busy_cpus() == pytest.approx(4 * 250 / 400)


def test_pixels_outside_0_1_are_computed_as_given_and_overflowing_ones_refused():
    from gee_deploy.errors import InputError
    from gee_deploy.serving.codec import InvalidInput, tensor_from_values
    from gee_deploy.serving.runtimes import MAX_ABS_INPUT, validate_input

    spec = ModelSpec(timesteps=1, input_shape=(1, 2, 2), class_names=("a", "b"), spiking_layers=(),
                     neurons_per_layer=(), layers=())
    assert validate_input(np.full((1, 1, 2, 2), -5, np.float32), spec).min() == -5
    with pytest.raises(InputError, match=r"input holds 3e\+38: pixels are in \[0, 1\]"):
        validate_input(np.full((1, 1, 2, 2), 3e38, np.float32), spec)
    with pytest.raises(InvalidInput, match=r"^inputs\.0: input holds -2e\+06"):  # the HTTP/gRPC 400 names the field
        tensor_from_values([0.5, 0.5, 0.5, -2 * MAX_ABS_INPUT], [1, 1, 2, 2], "inputs.0", spec)
