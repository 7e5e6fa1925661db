"""NIR export: the LIF / threshold mapping, the independent executor, every zoo model, another framework's importer."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gee_deploy.cli import cli
from gee_deploy.checkpoint import load_model
from gee_deploy.data import load_test_arrays
from gee_deploy.errors import GeeError, ModelFileError
from gee_deploy.export import ExportValidationError
from gee_deploy.formats import export_loaded
from gee_deploy.export.configs import ValidationConfig
from gee_deploy.errors import UnsupportedModuleError
from gee_deploy.nir.writer import DT, NIR_METADATA, NORMALISE, nir_threshold, write_nir
from gee_deploy.nir.validate import IMPORTERS, NIRExecutor, nir_inputs, read_nir, run_nir, validate_nir
from gee_deploy.neurons import TAU, V_RESET, V_THRESHOLD, lif_reference
from gee_deploy.parity import Thresholds
from gee_deploy.spec import LOGITS, SPIKE_COUNTS, ModelSpec
from gee_deploy.zoo import create_model, list_models

from test_cli import run
from gee_deploy.testing import lively
from test_export import FAST, SMALL, _bad_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: many small ops run faster on one thread


def _lif_graph(shape: tuple[int, ...], v_threshold: float) -> nir.NIRGraph:
    """Input -> LIF (our mapping) -> Output, written by hand."""
    full = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731
    lif = nir.LIF(tau=full(TAU * DT), r=full(1.0), v_leak=full(V_RESET), v_threshold=full(v_threshold),
                  v_reset=full(V_RESET))
    return nir.NIRGraph.from_list(lif)


def _run_steps(graph: nir.NIRGraph, x_seq: torch.Tensor) -> torch.Tensor:
    """The executor's output at each step of x_seq [T, N, ...] -> [T, N, ...]."""
    run = NIRExecutor(graph, DT)
    state, out = None, []
    for x in x_seq:
        y, state = run.module(x, state)
        out.append(y)
    return torch.stack(out)


def test_lif_mapping_is_our_lif_bit_for_bit():
    """tau = 2 dt, r = 1, v_leak = v_reset = 0 and the nudged threshold give exactly our spikes, including inputs
    that put the membrane exactly on the threshold, where NIR's v > v_th and our v >= v_th part ways."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, 50, generator=gen) * 1.5 + 0.8  # [T, N, neurons]
    x[0, :, :5] = 2.0  # h_0 = 2 / tau = 1.0 exactly: fires for us, and must for NIR
    x[1, :, 5:10] = 2.0  # after a silent step too
    ours = lif_reference(x)
    assert ours[0, :, :5].all()
    got = _run_steps(_lif_graph((50,), nir_threshold(V_THRESHOLD)), x)
    assert torch.equal(got, ours)
    # without the nudge, NIR's strict comparison drops exactly the spikes that land on the threshold
    plain = _run_steps(_lif_graph((50,), V_THRESHOLD), x)
    assert not plain[0, :, :5].any()
    assert 0 < (plain != ours).sum() < ours.numel()


def test_nir_threshold_is_one_float32_ulp_below():
    t = np.float32(nir_threshold(1.0))
    assert t < np.float32(1.0) and np.nextafter(t, np.float32(2.0)) == np.float32(1.0)


def test_executor_layers_follow_the_nir_spec():
    """Affine adds its bias (nirtorch 2.6's default map drops it), Flatten counts NIR's batchless dims,
    SumPool2d sums, AvgPool2d averages, Conv2d convolves with stride and padding."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 6, 6, generator=gen)
    w_conv, b_conv = torch.randn(4, 2, 3, 3, generator=gen), torch.randn(4, generator=gen)
    w_aff, b_aff = torch.randn(5, 4 * 2 * 2, generator=gen), torch.randn(5, generator=gen)
    nodes = [nir.Conv2d(input_shape=(6, 6), weight=w_conv.numpy(), stride=1, padding=1, dilation=1, groups=1,
                        bias=b_conv.numpy()),
             nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
             nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([0, 0])),
             nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0, end_dim=-1),
             nir.Affine(weight=w_aff.numpy(), bias=b_aff.numpy())]
    got = _run_steps(nir.NIRGraph.from_list(*nodes), x.unsqueeze(0))[0]
    y = torch.nn.functional.conv2d(x, w_conv, b_conv, padding=1)
    y = torch.nn.functional.avg_pool2d(y, 2) * 4
    y = torch.nn.functional.avg_pool2d(y, 2, stride=1)
    want = y.flatten(1) @ w_aff.T + b_aff
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_executor_names_unmapped_nodes():
    graph = nir.NIRGraph.from_list(nir.CubaLI(tau_syn=np.ones(3), tau_mem=np.ones(3), r=np.ones(3),
                                              v_leak=np.zeros(3)))
    with pytest.raises(UnsupportedModuleError, match="CubaLI"):
        NIRExecutor(graph, DT)


def _model(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **{**SMALL[name], **kw})
    images = torch.rand(8, model.in_channels, model.image_size, model.image_size)
    return lively(model, images), images


def _has_max_pool(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_round_trips_or_is_refused_in_one_line(name, tmp_path):
    """Models NIR can express: written, read back from the file and run by the NIR executor, they match the
    PyTorch model (random calibrated deep nets are chaotic, hence FAST's tolerances, as for ONNX). Models
    that max-pool spikes: one line naming the module and why, and no file."""
    model, images = _model(name)
    out = tmp_path / f"{name}.nir"
    if _has_max_pool(model):
        with pytest.raises(UnsupportedModuleError) as e:
            export_loaded(model, out, fmt="nir", images=images, validation=FAST)
        msg = str(e.value)
        assert "\n" not in msg and "MaxPool2d" in msg and "NIR has no max-pooling" in msg and name in msg
        assert not out.exists()
        return
    report = export_loaded(model, out, fmt="nir", images=images, validation=FAST)
    assert report.validation["top1_agreement"] >= FAST.thresholds.min_top1_agreement
    graph = read_nir(out)
    spec, dt, mean, std = nir_inputs(graph, str(out))
    assert spec.timesteps == model.timesteps and dt == DT
    assert mean is None and std is None  # the graph normalises its raw input itself
    assert len(spec.spiking_layers) == sum(isinstance(n, nir.LIF) for n in graph.nodes.values())
    assert set(graph.inputs) == {"input"} and list(graph.nodes["input"].input_type["input"]) == \
        [model.in_channels, model.image_size, model.image_size]
    assert list(graph.output_type.values())[0].tolist() == [model.num_classes]
    assert not any(isinstance(n, (nir.Scale,)) for n in graph.nodes.values())
    checked = {row[0] for row in report.validation["checks"]}
    assert all(f"top-1 agreement in {fw}'s NIR importer" in checked for fw in IMPORTERS)


def test_the_first_node_normalises_the_raw_input():
    """Input -> a 1 x 1 conv of weight diag(1 / std), bias -mean / std -> the stem: the file takes pixels in [0, 1]
    in any framework; on raw images it computes the model's normalised input within a float32 rounding."""
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=3, image_size=8, mean=(0.4914, 0.4822, 0.4465),
                         std=(0.2470, 0.2435, 0.2616))
    graph, spec = write_nir(model)
    assert graph.edges.count(("input", NORMALISE)) == 1 and sum(s == "input" for s, _ in graph.edges) == 1
    assert [d for s, d in graph.edges if s == NORMALISE] == [spec.layers[0].name]  # the stem conv
    norm = graph.nodes[NORMALISE]
    assert isinstance(norm, nir.Conv2d) and norm.weight.shape == (3, 3, 1, 1)
    assert np.array_equal(norm.weight[:, :, 0, 0], np.diag(np.diag(norm.weight[:, :, 0, 0])))
    x = torch.rand(16, 3, 8, 8)
    got = torch.nn.functional.conv2d(x, torch.from_numpy(norm.weight), torch.from_numpy(norm.bias))
    torch.testing.assert_close(got, (x - model.mean) / model.std, rtol=0, atol=1e-6)
    meta = json.loads(graph.metadata[NIR_METADATA["normalisation"]])
    assert meta == {"node": NORMALISE, "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    assert NIR_METADATA["mean"] not in graph.metadata  # an earlier reader refuses the file instead of normalising twice


def test_resnet_residual_adds_are_two_edges_into_one_lif():
    model, _ = _model("resnet18")
    graph, spec = write_nir(model)
    into = {}
    for src, dst in graph.edges:
        into.setdefault(dst, []).append(src)
    # every block's second LIF sums its conv2 path and its shortcut (identity: the block input's LIF)
    block_ends = [n for n in spec.spiking_layers if n.endswith("lif2")]
    assert block_ends and all(len(into[n]) == 2 for n in block_ends)
    assert any(isinstance(graph.nodes[s], nir.LIF) for n in block_ends for s in into[n])  # an identity shortcut


def test_dense_twin_and_genetic_fold_to_the_same_node_types(tmp_path):
    for genes in (None, 8):
        model, images = _model("smallnet", genes=genes)
        graph, _ = write_nir(model)
        kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
        assert kinds == ["Affine", "Conv2d", "Flatten", "Input", "LIF", "Output"]  # the normalisation: a Conv2d
        report = validate_nir(model, graph, images, None, ValidationConfig(samples=8, batch_size=8))
        assert report.max_abs_diff[SPIKE_COUNTS] == 0


@pytest.fixture(scope="module")
def cli_nir(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported by `gee-deploy export --format nir`."""
    out = tmp_path_factory.mktemp("nir") / "tiny.nir"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--format", "nir", "--out", str(out),
                                      "--samples", "64"])
    assert result.exit_code == 0, result.output
    return out, load_model(tiny_checkpoint)


def test_cli_writes_a_nir_file_with_the_model_spec(cli_nir):
    out, model = cli_nir
    graph = read_nir(out)
    spec = ModelSpec.from_metadata(graph.metadata, str(out))
    assert spec.num_classes == model.num_classes and spec.variant == "dense" and spec.timesteps == model.timesteps
    assert spec.layers[0].name.startswith("stem") and spec.layers[0].calls == 1
    assert json.loads(graph.metadata[NIR_METADATA["normalisation"]])["mean"] == model.mean.flatten().tolist()


@pytest.fixture(scope="module")
def real_nir(tmp_path_factory):
    """A SmallNet calibrated on 1000 real Fashion-MNIST test images (every layer fires), exported to NIR."""
    images, labels = (torch.from_numpy(a) for a in load_test_arrays("fashion-mnist-mini"))
    torch.manual_seed(0)
    model = lively(create_model("smallnet", genes=8), images[:256])
    out = tmp_path_factory.mktemp("nir") / "real.nir"
    export_loaded(model, out, fmt="nir", images=images[:64], validation=ValidationConfig(samples=64))
    return out, model, images, labels


def test_nudged_threshold_gives_our_spikes_on_real_images(real_nir):
    """On 1000 real Fashion-MNIST images, every NIR LIF node (v > 1 - 2^-24, the spec's rule) emits exactly the
    spikes our LIF (:func:`lif_reference`, v >= 1) emits for the same input currents, at every step; and the
    whole file agrees with the PyTorch model within the export's limits (the few samples that differ owe it to
    BatchNorm folding's float32 rounding, as in the ONNX export, not to the neuron)."""
    out, model, images, labels = real_nir
    graph = read_nir(out)
    run = NIRExecutor(graph, DT)
    currents = {name: [] for name in run.lif_modules}
    spikes = {name: [] for name in run.lif_modules}

    def record(name):
        def hook(module, args, out):
            currents[name].append(args[0])
            spikes[name].append(out[0])
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in run.lif_modules.items()]
    spec = nir_inputs(graph, str(out))[0]
    run.run(images, spec.timesteps)
    for h in hooks:
        h.remove()
    fired = 0
    for name in run.lif_modules:
        ours = lif_reference(torch.stack(currents[name]))  # [T, N, ...]
        assert torch.equal(torch.stack(spikes[name]), ours), name
        fired += int(ours.sum())
    assert fired > 0 and len(currents) == len(spec.spiking_layers)
    report = validate_nir(model, graph, images, labels, ValidationConfig(batch_size=250))
    assert report.stats.top1_agreement >= 0.999 and report.stats.spike_count_delta < 1e-5


def test_spikingjelly_importer_runs_our_file_on_raw_pixels(real_nir):
    """Another framework's NIR importer (SpikingJelly 2.0's, from PyPI) loads the file with its default dt and,
    fed raw pixels in [0, 1], reproduces the model's logits (its LIFNode fires on >= the nudged threshold: differs
    from us only on a membrane exactly at 1 - 2^-24)."""
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    out, model, images, _ = real_nir
    net = import_from_nir(out)  # dt = 1e-4 by default, as we write
    with torch.no_grad():
        state, total = None, 0.0
        for _ in range(model.timesteps):
            y, state = net(images[:200], state)
            total = total + y
        ref = model(images[:200])
    torch.testing.assert_close(total / model.timesteps, ref, rtol=0, atol=1e-5)


def _framework_logits(framework: str, path, images: torch.Tensor, timesteps: int) -> torch.Tensor:
    """What a user of ``framework`` does with our file: its own NIR importer, raw ``images`` fed at each of the
    T steps, the output averaged over the steps."""
    if framework == "snntorch":
        from snntorch import utils
        from snntorch.import_nir import import_from_nir

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its threshold rescaling per LIF
            net = import_from_nir(nir.read(path))
        utils.reset(net)
    else:
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        net = import_from_nir(path)  # dt = 1e-4 by default, as we write
    with torch.no_grad():
        state, total = None, 0.0
        for _ in range(timesteps):
            y, state = net(images, state)
            total = total + y
    return total / timesteps


def _importers_agree(path, model, images: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        want = model(images).argmax(1)
    return {fw: (_framework_logits(fw, path, images, model.timesteps).argmax(1) == want).float().mean().item()
            for fw in IMPORTERS}


def test_other_frameworks_run_the_cli_export_on_raw_pixels(cli_nir):
    """`gee-deploy export CKPT --out m.nir`, loaded by snntorch's and SpikingJelly's own importers and fed raw
    pixels in [0, 1] like every other artefact: the checkpoint's top-1 on every image (before the normalisation was
    a node of the graph, raw pixels gave 15.6% agreement in snntorch)."""
    out, model = cli_nir
    images = torch.from_numpy(load_test_arrays("fashion-mnist-mini", limit=128)[0])
    agree = _importers_agree(out, model, images)
    assert all(a >= 0.999 for a in agree.values()), agree


@pytest.mark.slow
def test_other_frameworks_agree_with_the_demo_checkpoint_on_1000_test_images(tmp_path, capsys):
    """The README's demo checkpoint (one epoch) exported to NIR; snntorch's and SpikingJelly's importers on the
    first 1,000 real Fashion-MNIST test images, raw: top-1 agreement with the checkpoint >= 99.9%."""
    try:
        images = torch.from_numpy(load_test_arrays("fashion-mnist", None, 1000)[0])
    except GeeError as e:
        pytest.skip(f"Fashion-MNIST test split not on this machine: {e}")
    code, _, err = run(["train", "demo", "--out", str(tmp_path / "demo"), "--quiet", "--set", "train.epochs=1"],
                       capsys)
    assert code == 0, err
    out = tmp_path / "demo.nir"
    code, stdout, err = run(["export", str(tmp_path / "demo" / "best.pt"), "--out", str(out)], capsys)
    assert code == 0, err
    assert all(f"{fw}'s own NIR importer" in stdout for fw in IMPORTERS), stdout
    agree = _importers_agree(out, load_model(tmp_path / "demo" / "best.pt"), images)
    assert all(a >= 0.999 for a in agree.values()), agree


OLD_NIR = Path(__file__).parent / "data" / "smallnet-w4-nir-9b2b4e4.nir"  # normalisation in the metadata only


def test_a_file_written_before_the_normalisation_node_still_validates(tmp_path):
    """Written by gee-deploy 9b2b4e4 (a SmallNet of widths 4/8/8, hidden 16, 4 genes, T = 4, calibrated on the
    mini set; its state dict beside it): the Input node takes normalised images and ``nir.input_mean`` /
    ``nir.input_std`` say so. It still validates against the model it came from (executor and both frameworks'
    importers fed the normalised images the file takes), and imports as a graph that takes raw pixels."""
    model = create_model("smallnet", widths=(4, 8, 8), hidden=16, genes=4)
    model.load_state_dict(torch.load(OLD_NIR.with_suffix(".state.pt"), weights_only=True))
    model.eval()
    graph = read_nir(OLD_NIR)
    assert NORMALISE not in graph.nodes and NIR_METADATA["mean"] in graph.metadata
    _, _, mean, std = nir_inputs(graph, str(OLD_NIR))
    assert torch.equal(mean, model.mean) and torch.equal(std, model.std)
    images, labels = (torch.from_numpy(a) for a in load_test_arrays("fashion-mnist-mini", limit=128))
    report = validate_nir(model, graph, images, labels, ValidationConfig(samples=128))
    assert report.stats.top1_agreement == 1.0 and report.stats.spike_count_delta == 0
    assert report.stats.spikes_reference > 1000  # a network that fires
    assert {f"top-1 agreement in {fw}'s NIR importer" for fw in IMPORTERS} <= {r[0] for r in report.rows}
    from gee_deploy.export.options import export_options
    from gee_deploy.export.validate import run_graph
    from gee_deploy.nir.convert import convert_nir
    from gee_deploy.nir.options import NIRImportOptions
    from gee_deploy.ort_session import create_session

    back = tmp_path / "old.onnx"
    convert_nir(OLD_NIR, back, export_options(), NIRImportOptions())
    _, (logits, _) = run_graph(create_session(str(back)), images.numpy(), 64)
    with torch.no_grad():
        want = model(images)
    assert (logits.argmax(1) == want.argmax(1).numpy()).mean() == 1.0
    assert ModelSpec.from_onnx(str(back)).model_args["input_mean"] == model.mean.flatten().tolist()


def test_failed_validation_lists_every_check_and_writes_nothing(tmp_path):
    model, images = _model("smallnet")
    out = tmp_path / "m.nir"
    impossible = ValidationConfig(Thresholds(atol=-1.0, max_spike_delta=-1.0), samples=8, batch_size=8)
    with pytest.raises(ExportValidationError) as e:
        export_loaded(model, out, fmt="nir", images=images, validation=impossible)
    assert len(e.value.failures) == 2 and "samples matching" in str(e.value) and "spike-count delta" in str(e.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_tampered_weight_fails_validation():
    model, images = _model("smallnet")
    graph, _ = write_nir(model)
    graph.nodes["body.7.1"].weight = graph.nodes["body.7.1"].weight * 1.5
    report = validate_nir(model, graph, images, None, ValidationConfig(samples=8, batch_size=8),
                          raise_on_failure=False)
    assert not report.ok and report.max_abs_diff[LOGITS] > 1e-3


@pytest.mark.parametrize("args, message", [
    (["--variant", "factorised"], "--variant factorised does not apply to --format nir"),
    (["--streaming"], "--streaming does not apply to --format nir"),
    (["--opset", "18"], "--opset does not apply to --format nir"),
])
def test_cli_refuses_onnx_only_options(tiny_checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "m.nir"
    code, _, err = run(["export", str(tiny_checkpoint), "--format", "nir", "--out", str(out), *args], capsys)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not out.exists()


def test_corrupt_or_foreign_files_fail_in_one_line(tmp_path):
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ModelFileError, match="not a readable NIR file"):
        read_nir(bad)
    with pytest.raises(ModelFileError, match="not found"):
        read_nir(tmp_path / "missing.nir")
    foreign = tmp_path / "foreign.nir"  # a valid NIR graph from elsewhere: no gee metadata to run it by
    nir.write(foreign, _lif_graph((3,), 1.0))
    with pytest.raises(ModelFileError, match="lacks gee-deploy metadata"):
        run_nir(read_nir(foreign), torch.zeros(1, 3), 1, str(foreign))


@pytest.mark.parametrize("case", ["truncated", "other-architecture", "unwritable", "out-is-a-directory"])
def test_bad_input_to_nir_export_is_one_line_and_no_file(case, tiny_checkpoint, tmp_path, capsys):
    cases, blocker = _bad_inputs(tiny_checkpoint, tmp_path)
    args, message = cases[case]
    out = {"unwritable": blocker / "model.nir", "out-is-a-directory": tmp_path}.get(case, tmp_path / "m.nir")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["export", *args, "--format", "nir", "--out", str(out)], capsys)
    assert code != 0 and err.startswith("error: ") and err.strip().count("\n") == 0 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
