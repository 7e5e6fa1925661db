"""`gee-deploy export MODEL.nir`: other frameworks' NIR files in, validated unrolled ONNX out, agreeing with the
framework's own model; every node type against the spec-only executor; refusals; bench and serve on the result."""
from __future__ import annotations

import contextlib
import io

import h5py
import nir
import numpy as np
import onnx
import pytest
import torch

from gee_deploy.testing import nir_frameworks as nf
from gee_deploy.data import load_test_arrays
from gee_deploy.export.validate import run_graph
from gee_deploy.nir.executor import read_nir
from gee_deploy.ort_session import create_session
from gee_deploy.spec import ModelSpec

from test_cli import run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: many small ops run faster on one thread

T = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 real Fashion-MNIST images (the embedded mini set) in [0, 1], saved as a .npy for --images."""
    images = load_test_arrays("fashion-mnist-mini", limit=32)[0]
    path = tmp_path_factory.mktemp("nir_in") / "images.npy"
    np.save(path, images)
    return images, path


@pytest.fixture(scope="module", params=nf.FRAMEWORKS)
def framework_file(request, tmp_path_factory):
    """A framework's model (He init, so every layer fires) and its own NIR export."""
    fw = request.param
    net = nf.build(fw).eval()
    path = nf.export(fw, net, tmp_path_factory.mktemp(fw) / f"{fw}.nir")
    return fw, net, path


def _export(capsys, path, out, *args):
    return run(["export", str(path), "--out", str(out), *map(str, args)], capsys)


def _onnx(path, x):
    _, (logits, spikes) = run_graph(create_session(str(path)), x, 64)
    return logits, spikes


def test_framework_exports_convert_and_agree_with_the_framework(framework_file, data, tmp_path, capsys):
    """Each framework's own NIR file, converted with its flags (docs/nir.md), computes what the framework's model
    computes on real images: same top-1, same spikes per layer, logits within float32 rounding."""
    fw, net, path = framework_file
    images, npy = data
    out = tmp_path / "m.onnx"
    code, stdout, err = _export(capsys, path, out, "--timesteps", T, "--images", npy, *nf.FLAGS[fw])
    assert code == 0, err
    assert f"validated on {len(images)} samples: top-1 agreement 1.0000" in stdout
    want_logits, want_spikes = nf.run(fw, net, images, T)
    logits, spikes = _onnx(out, images)
    assert (logits.argmax(1) == want_logits.argmax(1)).all()
    assert want_spikes.sum() > 1000 and (want_spikes.sum(0) > 0).all()  # every layer fires: not a trivial match
    assert np.abs(spikes.sum(0) - want_spikes.sum(0)).max() <= 1e-4 * want_spikes.sum()
    np.testing.assert_allclose(logits, want_logits, atol=1e-3)
    spec = ModelSpec.from_onnx(out)
    assert spec.timesteps == T and len(spec.spiking_layers) == 3 and spec.input_shape == (1, 28, 28)
    assert [l.kind for l in spec.layers] == ["conv", "conv", "linear", "linear"]
    assert [l.calls for l in spec.layers] == [1, T, T, T]  # the stem conv reads the static image once
    assert [l.input_is_spikes for l in spec.layers] == [False, False, False, True]  # pooling makes spikes analog
    assert spec.layers[1].macs == 16 * 14 * 14 * 8 * 9 and spec.model_args["dt"] == 1e-4


def test_int8_variant_keeps_the_int8_limits(framework_file, data, tmp_path, capsys):
    fw, net, path = framework_file
    images, npy = data
    out = tmp_path / "m8.onnx"
    code, _, err = _export(capsys, path, out, "--timesteps", T, "--images", npy, "--variant", "int8", *nf.FLAGS[fw])
    assert code == 0, err
    spec = ModelSpec.from_onnx(out)
    assert [l.precision for l in spec.layers] == ["fp32", "fp32", "fp32", "int8"]
    assert any(n.op_type == "MatMulIntegerToFloat" for n in onnx.load(str(out)).graph.node)
    want_logits, want_spikes = nf.run(fw, net, images, T)
    logits, spikes = _onnx(out, images)
    assert (logits.argmax(1) == want_logits.argmax(1)).mean() >= 0.95
    assert abs(spikes.sum() - want_spikes.sum()) <= 5e-3 * want_spikes.sum()


def _on_threshold_net():
    """SpikingJelly: Linear (2 I) -> LIFNode (tau 2) -> Linear; an input of 1 puts the membrane exactly on 1."""
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(3, 3, bias=False), neuron.LIFNode(tau=2.0), layer.Linear(3, 2))
    net[0].weight.data = 2 * torch.eye(3)
    functional.set_step_mode(net, "m")
    return net.eval()


def test_threshold_rule_ge_is_spikingjelly_and_gt_is_nir(tmp_path, capsys):
    """SpikingJelly fires on v >= v_th, NIR on v > v_th: a membrane exactly on the threshold tells them apart."""
    net = _on_threshold_net()
    path = tmp_path / "sj.nir"
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    export_to_nir(net, torch.rand(2, 1, 3), save_path=path)
    x = np.array([[1.0, 0.5, 1.5]], np.float32)
    counts = []
    with torch.no_grad():
        from spikingjelly.activation_based import functional

        functional.reset_net(net)
        hook = net[1].register_forward_hook(lambda m, a, o: counts.append(o.sum().item()))
        net(torch.from_numpy(x).expand(T, 1, 3))
        hook.remove()
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    got = {}
    for rule in ("ge", "gt"):
        code, _, err = _export(capsys, path, tmp_path / f"{rule}.onnx", "-T", T, "--dt", "1e-4",
                               "--threshold-rule", rule, "--images", npy)
        assert code == 0, err
        got[rule] = _onnx(tmp_path / f"{rule}.onnx", x)[1].sum()
    assert got["ge"] == counts[0] and got["gt"] < counts[0]


@pytest.mark.parametrize("kind", ["IFNode", "CUBALIFNode"])
def test_spikingjelly_if_and_cuba_lif_nodes(kind, data, tmp_path, capsys):
    """SpikingJelly's IF (NIR IF, r = 1 / dt) and CUBA-LIF (NIR CubaLIF) nodes, converted, match SpikingJelly."""
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(0)
    make = {"IFNode": lambda: neuron.IFNode(),
            "CUBALIFNode": lambda: neuron.CUBALIFNode(c_decay=0.5, v_decay=0.75)}[kind]
    net = torch.nn.Sequential(layer.Conv2d(1, 4, 3, padding=1, stride=2), make(), layer.Flatten(),
                              layer.Linear(4 * 14 * 14, 16), make(), layer.Linear(16, 10))
    nf._kaiming(net)
    functional.set_step_mode(net, "m")
    net.eval()
    path = tmp_path / "sj.nir"
    export_to_nir(net, torch.rand(2, 1, 1, 28, 28), save_path=path)
    images, npy = data
    out = tmp_path / "m.onnx"
    code, _, err = _export(capsys, path, out, "-T", T, "--images", npy, *nf.FLAGS["spikingjelly"])
    assert code == 0, err
    with torch.no_grad():
        functional.reset_net(net)
        counts = []
        hooks = [m.register_forward_hook(lambda m, a, o: counts.append(o.sum().item()))
                 for m in net if isinstance(m, neuron.BaseNode)]
        want = net(torch.from_numpy(images).expand(T, *images.shape)).mean(0).numpy()
        for h in hooks:
            h.remove()
    logits, spikes = _onnx(out, images)
    assert sum(counts) > 100 and spikes.sum(0).tolist() == counts
    np.testing.assert_allclose(logits, want, atol=1e-4)


def test_sequence_input_feeds_one_frame_per_step(data, tmp_path, capsys):
    """--input sequence takes [N, T, C, H, W] (event-camera style), and matches SpikingJelly fed frame by frame."""
    fw = "spikingjelly"
    net = nf.build(fw).eval()
    path = nf.export(fw, net, tmp_path / "sj.nir")
    images = data[0][:8]
    gen = np.random.default_rng(0)
    seq = (images[:, None] * gen.uniform(0.5, 1.5, (8, T, 1, 1, 1))).astype(np.float32)  # [N, T, 1, 28, 28]
    npy = tmp_path / "seq.npy"
    np.save(npy, seq)
    out = tmp_path / "seq.onnx"
    code, _, err = _export(capsys, path, out, "-T", T, "--input", "sequence", "--images", npy, *nf.FLAGS[fw])
    assert code == 0, err
    assert ModelSpec.from_onnx(out).input_shape == (T, 1, 28, 28)
    from spikingjelly.activation_based import functional

    with torch.no_grad():
        functional.reset_net(net)
        want = net(torch.from_numpy(seq).transpose(0, 1)).mean(0).numpy()
    logits, _ = _onnx(out, seq)
    np.testing.assert_allclose(logits, want, atol=1e-4)
    static = net(torch.from_numpy(images).expand(T, *images.shape)).mean(0).detach().numpy()
    assert np.abs(static - want).max() > 1e-2  # the frames did differ


def _graph_of_every_node(tmp_path) -> tuple:
    """Input -> Conv2d -> LIF -> SumPool2d -> Scale -> CubaLIF -> AvgPool2d -> Flatten -> Linear -> IF ->
    Affine -> LI -> Output, plus a skip edge summed into the IF: every supported node type, by hand. Two nodes
    have names that trip tools: 'if' (a Python keyword: nirtorch) and 'logits' (our output's name)."""
    gen = np.random.default_rng(0)
    full = lambda shape, v: np.full(shape, v, np.float32)  # noqa: E731
    s1, s2 = (4, 8, 8), (4, 4, 4)
    nodes = {
        "input": nir.Input(input_type=np.array([2, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=gen.normal(0, 1, (4, 2, 3, 3)).astype(np.float32),
                           stride=1, padding=1, dilation=1, groups=1, bias=full(4, 0.2)),
        "lif": nir.LIF(tau=full(s1, 2e-3), r=full(s1, 10.0), v_leak=full(s1, 0.1), v_threshold=full(s1, 0.5),
                       v_reset=full(s1, -0.1)),
        "sum": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "scale": nir.Scale(scale=gen.uniform(0.5, 1.5, s2).astype(np.float32)),
        "cuba": nir.CubaLIF(tau_syn=full(s2, 2e-3), tau_mem=full(s2, 4e-3), r=full(s2, 2.0), v_leak=full(s2, 0.0),
                            v_threshold=full(s2, 0.3), v_reset=full(s2, 0.0), w_in=full(s2, 5.0)),
        "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0, end_dim=-1),
        "lin": nir.Linear(weight=gen.normal(0, 1, (16, 16)).astype(np.float32)),
        "skip": nir.Affine(weight=gen.normal(0, 0.5, (16, 16)).astype(np.float32), bias=full(16, 0.1)),
        "if": nir.IF(r=full(16, 1e3), v_threshold=full(16, 1.0), v_reset=full(16, 0.0)),
        "logits": nir.Affine(weight=gen.normal(0, 1, (5, 16)).astype(np.float32), bias=full(5, 0.0)),
        "li": nir.LI(tau=full(5, 3e-3), r=full(5, 1.0), v_leak=full(5, 0.0)),
        "output": nir.Output(output_type=np.array([5])),
    }
    edges = [("input", "conv"), ("conv", "lif"), ("lif", "sum"), ("sum", "scale"), ("scale", "cuba"),
             ("cuba", "avg"), ("avg", "flat"), ("flat", "lin"), ("flat", "skip"), ("lin", "if"), ("skip", "if"),
             ("if", "logits"), ("logits", "li"), ("li", "output")]
    path = tmp_path / "every.nir"
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": 1e-3}))
    return path


@pytest.mark.parametrize("rule", ["gt", "ge"])
def test_every_supported_node_against_the_spec_only_executor(rule, tmp_path, capsys):
    """Hand-written graph of every supported node type, dt from the file's metadata, random inputs: the ONNX
    graph matches the executor (validation passes) and every spiking node fires."""
    path = _graph_of_every_node(tmp_path)
    out = tmp_path / "every.onnx"
    code, stdout, err = _export(capsys, path, out, "-T", 6, "--threshold-rule", rule, "--samples", 32, "--json")
    assert code == 0, err
    import json

    report = json.loads(stdout)
    assert any("random inputs uniform in [0, 1) of shape [2, 8, 8]" in n for n in report["notes"])
    assert report["validation"]["top1_agreement"] == 1.0 and report["validation"]["max_spike_count_diff"] == 0
    spec = ModelSpec.from_onnx(out)
    assert spec.spiking_layers == ("lif", "cuba", "if") and spec.neurons_per_layer == (256, 64, 16)
    assert spec.model_args["dt"] == 1e-3
    x = np.random.default_rng(1).uniform(0, 1, (32, 2, 8, 8)).astype(np.float32)
    assert (_onnx(out, x)[1].sum(0) > 0).all()
    assert {l.name: l.input_is_spikes for l in spec.layers} == {"conv": False, "lin": False, "skip": False,
                                                                "logits": True}


def test_triton_repository_from_a_nir_file(tmp_path, capsys):
    path = _graph_of_every_node(tmp_path)
    repo = tmp_path / "repo"
    code, stdout, err = _export(capsys, path, repo, "-T", 3, "--format", "triton", "--samples", 8)
    assert code == 0, err
    (model_dir,) = [p for p in repo.iterdir() if p.is_dir()]
    spec = ModelSpec.from_artefact(model_dir)
    assert spec.timesteps == 3 and spec.spiking_layers == ("lif", "cuba", "if")
    assert (model_dir / "config.pbtxt").is_file() and (model_dir / "1" / "model.onnx").is_file()


def _write(tmp_path, *nodes, edges=None, metadata=None, name="g.nir"):
    """Input [3] -> nodes... -> Output [3] (or the node dict ``nodes[0]`` with ``edges``), without NIR's type check."""
    if edges is None:
        named = {"input": nir.Input(input_type=np.array([3])),
                 **{type(n).__name__.lower(): n for n in nodes}, "output": nir.Output(output_type=np.array([3]))}
        edges = list(zip(named, list(named)[1:]))
    else:
        named = nodes[0]
    path = tmp_path / name
    nir.write(path, nir.NIRGraph(nodes=named, edges=edges, type_check=False,
                                 metadata=metadata if metadata is not None else {"dt": 1e-4}))
    return path


def _lif(n):
    return nir.LIF(tau=np.full(n, 2e-4), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n))


def _bad_graphs(tmp_path):
    delay = _write(tmp_path, nir.Affine(weight=np.eye(3), bias=np.zeros(3)), nir.Delay(delay=np.ones(3)), _lif(3),
                   name="delay.nir")
    conv1d = _write(tmp_path, nir.Conv1d(input_shape=3, weight=np.ones((1, 1, 3)), stride=1, padding=1, dilation=1,
                                         groups=1, bias=np.zeros(1)), _lif(3), name="c1.nir")
    cyc_nodes = {"input": nir.Input(input_type=np.array([3])), "lif": _lif(3), "rec": nir.Linear(weight=np.eye(3)),
                 "output": nir.Output(output_type=np.array([3]))}
    cycle = _write(tmp_path, cyc_nodes, edges=[("input", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")],
                   name="cycle.nir")
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    rleaky = torch.nn.Sequential(torch.nn.Linear(4, 3), snn.RLeaky(beta=0.9, V=torch.ones(3), all_to_all=False,
                                                                   init_hidden=True))
    with contextlib.redirect_stdout(io.StringIO()):
        recurrent = tmp_path / "rleaky.nir"
        nir.write(recurrent, export_to_nir(rleaky, torch.rand(1, 4), ignore_dims=[0]))
    inner = nir.NIRGraph.from_list(nir.Affine(weight=np.eye(3), bias=np.zeros(3)))
    nested = _write(tmp_path, {"input": nir.Input(input_type=np.array([3])), "sub": inner, "lif": _lif(3),
                               "output": nir.Output(output_type=np.array([3]))},
                    edges=[("input", "sub"), ("sub", "lif"), ("lif", "output")], name="nested.nir")
    shapeless = {"input": nir.Input(input_type=np.array([], dtype=np.int64)), "lif": _lif(3),
                 "output": nir.Output(output_type=np.array([3]))}
    no_shape = _write(tmp_path, shapeless, edges=[("input", "lif"), ("lif", "output")], name="noshape.nir")
    ok = _write(tmp_path, nir.Affine(weight=np.eye(3), bias=np.zeros(3)), _lif(3), name="ok.nir")
    truncated = tmp_path / "trunc.nir"
    truncated.write_bytes(ok.read_bytes()[:300])
    foreign = tmp_path / "foreign.nir"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("weights", data=np.ones(3))
    no_dt = _write(tmp_path, nir.Affine(weight=np.eye(3), bias=np.zeros(3)), _lif(3), metadata={}, name="nodt.nir")
    resting = _write(tmp_path, nir.Affine(weight=np.eye(3), bias=np.zeros(3)),
                     nir.LIF(tau=np.full(3, 2e-4), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3),
                             v_reset=np.full(3, -0.1)), name="reset.nir")
    return {
        "delay": ([delay, "-T", "2"], "node 'delay' is a NIR Delay node"),
        "conv1d": ([conv1d, "-T", "2"], "is a NIR Conv1d node"),
        "cycle": ([cycle, "-T", "2"], "is on a cycle (a recurrent connection)"),
        "nested": ([nested, "-T", "2"], "node 'sub' is a nested NIR subgraph"),
        "snntorch-rleaky": ([recurrent, "-T", "2"], "is on a cycle (a recurrent connection)"),
        "no-shape": ([no_shape, "-T", "2"], "declares no shape"),
        "truncated": ([truncated, "-T", "2"], "not a readable NIR file"),
        "foreign": ([foreign, "-T", "2"], "not a readable NIR file"),
        "no-timesteps": ([ok], "pass --timesteps"),
        "zero-timesteps": ([ok, "-T", "0"], "--timesteps must be an integer in [1, 1024], got 0"),
        "negative-dt": ([ok, "-T", "2", "--dt", "-1"], "--dt must be a finite number in (0, 1000]"),
        "no-dt": ([no_dt, "-T", "2"], "states no dt in its metadata: pass --dt"),
        "rule": ([ok, "-T", "2", "--threshold-rule", "gte"], "'gte' is not one of 'gt', 'ge'"),
        "variant": ([ok, "-T", "2", "--variant", "factorised"], "--variant 'factorised' does not apply"),
        "streaming": ([resting, "-T", "2", "--streaming"], "node 'lif' rests at v_reset != 0; a streaming graph's"),
        "images-shape": ([ok, "-T", "2", "--images", tmp_path / "bad.npy"], "the graph takes [S, 3]"),
        "images-empty": ([ok, "-T", "2", "--images", tmp_path / "empty.npy"], "is not a readable .npy array"),
        "images-text": ([ok, "-T", "2", "--images", tmp_path / "text.npy"], "not in numpy's .npy format"),
        "images-npz": ([ok, "-T", "2", "--images", tmp_path / "arrays.npz"], "is an archive"),
        "format-nir": ([ok, "-T", "2", "--format", "nir"], "is named like an ONNX file but --format nir writes"),
    }


@pytest.mark.parametrize("case", ["delay", "conv1d", "cycle", "nested", "snntorch-rleaky", "no-shape", "truncated",
                                  "foreign",
                                  "no-timesteps", "zero-timesteps", "negative-dt", "no-dt", "rule", "variant",
                                  "streaming", "images-shape", "images-empty", "images-text", "images-npz",
                                  "format-nir"])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((2, 4), np.float32))
    (tmp_path / "empty.npy").write_bytes(b"")  # numpy raises EOFError, which click would turn into an interrupt
    (tmp_path / "text.npy").write_text("0.1 0.2 0.3\n")
    np.savez(tmp_path / "arrays.npz", x=np.zeros((2, 3), np.float32))
    args, message = _bad_graphs(tmp_path)[case]
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    code, _, err = run(["export", *map(str, args), "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    if case in ("delay", "conv1d", "cycle", "nested", "snntorch-rleaky"):
        assert "supported node types: Input, Output, Affine" in err or "feed-forward graphs of Input" in err
    assert not list(out.parent.iterdir())


def test_nir_options_with_a_checkpoint_are_refused(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run(["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "-T", "4"], capsys)
    assert code == 2 and err == "error: --timesteps applies only to a .nir input\n"


def test_snntorch_importer_loads_our_nir_export(tiny_checkpoint, tmp_path, capsys):
    """Our NIR export writes Flatten over dims -3..-1, which snntorch 1.0's importer (NIR dims taken as torch dims)
    reads as NIR means it; with 0..-1 it folded the batch into the features and failed. Fed raw pixels (the file's
    first node normalises them), it gives the checkpoint's top-1."""
    from snntorch import utils
    from snntorch.import_nir import import_from_nir

    from gee_deploy.checkpoint import load_model

    out = tmp_path / "ours.nir"
    code, _, err = run(["export", str(tiny_checkpoint), "--format", "nir", "--out", str(out), "--samples", "16"],
                       capsys)
    assert code == 0, err
    graph = read_nir(out)
    flat = [n for n in graph.nodes.values() if isinstance(n, nir.Flatten)]
    assert flat and all(int(n.start_dim) < 0 and int(n.end_dim) == -1 for n in flat)
    spec = ModelSpec.from_metadata(graph.metadata, str(out))
    images = torch.from_numpy(load_test_arrays("fashion-mnist-mini", limit=64)[0])
    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints its threshold rescaling
        net = import_from_nir(graph)
    with torch.no_grad():
        utils.reset(net)
        state, total = None, 0.0
        for _ in range(spec.timesteps):
            y, state = net(images, state)
            total = total + y
        ref = load_model(tiny_checkpoint)(images)
    agree = ((total / spec.timesteps).argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree >= 0.999  # snntorch rescales r dt / tau = 1/2 into the threshold: a membrane may round otherwise


@pytest.fixture(scope="module")
def converted(tmp_path_factory, data):
    """The snntorch model converted to ONNX, beside its NIR file."""
    net = nf.build("snntorch").eval()
    d = tmp_path_factory.mktemp("conv")
    path = nf.export("snntorch", net, d / "st.nir")
    from gee_deploy.export.options import export_options
    from gee_deploy.nir.convert import convert_nir
    from gee_deploy.nir.options import NIRImportOptions

    convert_nir(path, d / "st.onnx", export_options(), NIRImportOptions(timesteps=T, dt=1e-4, images=data[1]))
    return path, d / "st.onnx"


def test_bench_uses_the_nir_file_as_reference(converted, tmp_path):
    from gee_deploy.evaluation.bench import bench_options, run_bench

    path, onnx_path = converted
    report = run_bench([onnx_path, path], bench_options(dataset="fashion-mnist-mini", limit=16, batch_sizes=(2,),
                                                        min_time=0.0, threads=1))
    nir_row, ort_row = report["runtimes"]
    assert nir_row["kind"] == "nir" and ort_row["kind"] == "ort-cpu"
    assert ort_row["parity"]["top1_agreement"] == 1.0 and ort_row["parity"]["spike_count_delta"] == 0
    assert ort_row["spikes_per_sample"] > 0 and ort_row["energy"]["energy_pj"] > 0
    assert nir_row["energy"]["energy_pj"] == pytest.approx(ort_row["energy"]["energy_pj"])
    with pytest.raises(Exception, match="is a reference only"):
        run_bench([path], bench_options(dataset="fashion-mnist-mini", limit=4, batch_sizes=(1,), min_time=0.0))


def test_check_takes_the_nir_file_as_reference(converted, capsys):
    path, onnx_path = converted
    code, stdout, err = run(["check", str(path), str(onnx_path), "--dataset", "fashion-mnist-mini", "--limit", "16",
                             "--min-speedup", "0"], capsys)
    assert code == 0, err
    assert "top-1 agreement 100.0000%" in stdout and "spike-count delta 0.0000%" in stdout and "warning" not in err


def test_serve_answers_tritonclient(converted, data):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from gee_deploy.serving.runtimes import OrtRuntime
    from gee_deploy.serving.server import InferenceServer, ServeConfig
    from gee_deploy.spec import INPUT_NAME, LOGITS, SPIKE_COUNTS

    runtime = OrtRuntime(converted[1], threads=1)
    x = data[0][:4]
    want_logits, want_spikes = runtime(x)
    with InferenceServer(runtime, ServeConfig(name="st", port=0, grpc_port=0, max_batch=8, max_delay_ms=2,
                                                      max_body_bytes=1 << 20, drain_s=1)) as srv:
        client = httpclient.InferenceServerClient(srv.url)
        inp = httpclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("st", [inp])
        assert np.array_equal(result.as_numpy(LOGITS), want_logits)
        assert np.array_equal(result.as_numpy(SPIKE_COUNTS), want_spikes)
        client.close()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        inp = grpcclient.InferInput(INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert np.array_equal(client.infer("st", [inp]).as_numpy(LOGITS), want_logits)
        client.close()


def test_robustness_takes_the_nir_file_as_reference(converted):
    from gee_deploy.evaluation.robustness import robustness_options, run_robustness

    path, onnx_path = converted
    report = run_robustness([path, onnx_path], robustness_options(ratio=0.5, ratios=(0.0, 0.5), limit=16, threads=1,
                                                                  dataset="fashion-mnist-mini", batch_size=8))
    nir_row, ort_row = report["models"]
    assert (nir_row["runtime"], ort_row["runtime"]) == ("nir", "ort-cpu")
    assert all(p["top1_agreement_vs_reference"] == 1.0 for p in ort_row["points"])
    with pytest.raises(Exception, match="is a reference only"):
        run_robustness([path], robustness_options(dataset="fashion-mnist-mini", limit=4))


def test_our_own_nir_export_comes_back_as_the_model(tiny_checkpoint, serving_onnx, tmp_path, capsys):
    """A NIR file written by `gee-deploy export --format nir` records T, the classes and the dataset, and its
    first node normalises the raw input: converted back without options, the graph takes pixels in [0, 1] like
    the model's own export (the normalisation once: not a layer, not applied again), and its logits and spikes
    on real images are the model's."""
    from gee_deploy.checkpoint import load_model

    nir_path, back = tmp_path / "ours.nir", tmp_path / "back.onnx"
    code, _, err = run(["export", str(tiny_checkpoint), "--format", "nir", "--out", str(nir_path), "--samples", "16"],
                       capsys)
    assert code == 0, err
    code, out, err = run(["export", str(nir_path), "--out", str(back)], capsys)
    assert code == 0, err
    assert "as the file records" in out and "the file's node 'input_norm' normalises them" in out
    model, ours = load_model(tiny_checkpoint), ModelSpec.from_onnx(str(serving_onnx))
    spec = ModelSpec.from_onnx(str(back))
    assert (spec.timesteps, spec.class_names, spec.dataset) == (ours.timesteps, ours.class_names, ours.dataset)
    assert [l.name for l in spec.layers] == [l.name for l in ours.layers] and "input_mean" not in spec.model_args
    assert f"test images of {ours.dataset}, the file's dataset" in out  # validated on real images, not noise
    images = load_test_arrays("fashion-mnist-mini", limit=64)[0]
    logits, spikes = _onnx(back, images)
    ref_logits, ref_spikes = _onnx(serving_onnx, images)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(images)).numpy()
    assert (logits.argmax(1) == torch_logits.argmax(1)).mean() >= 0.98
    assert abs(spikes.sum() / ref_spikes.sum() - 1) < 0.01 and np.abs(logits - ref_logits).max() < 0.5
