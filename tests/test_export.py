"""Export: folding, factorised forms, the graph contract, validation, streaming, Triton, TensorRT, bad input."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from gee_deploy.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from gee_deploy.cli import cli
from gee_deploy.export import ExportValidationError, build_onnx
from gee_deploy.formats import export_loaded
from gee_deploy.export.configs import VARIANTS, ValidationConfig
from gee_deploy.export.factorised import emit_factorised, factorised_cost
from gee_deploy.export.folding import dense_kernel, emit_dense, fold_layer
from gee_deploy.export.weights import WeightOps
from gee_deploy.export.graph import GraphBuilder, tensor_info
from gee_deploy.export.tensorrt import compatibility_problems, to_float16
from gee_deploy.export.validate import validate_export
from gee_deploy.genetic import Genome, GeneticConv2d, GeneticLinear
from gee_deploy.ort_session import create_session
from gee_deploy.parity import Thresholds
from gee_deploy.testing import lively
from gee_deploy.spec import BATCH_DIM, INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS, ModelSpec, sidecar_path
from gee_deploy.walk import weight_macs
from gee_deploy.zoo import create_model, list_models

# small sizes: each model exports and validates in seconds on one CPU thread
SMALL = {"smallnet": {}, "cifarnet": dict(image_size=8), "resnet18": dict(image_size=8),
         "resnet19": dict(image_size=8), "resnet34": dict(image_size=32), "vgg11": dict(image_size=32),
         "vgg16": dict(image_size=32)}
# Random deep nets calibrated to fire are chaotic: one float32 rounding difference can flip one spike and
# cascade through 30 layers, so a few samples may differ; a wrong fold or tap order changes every sample.
FAST = ValidationConfig(Thresholds(min_match=0.75, min_top1_agreement=0.75, max_spike_delta=0.01), samples=4,
                        batch_size=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: many small ops run faster on one thread


def small_model(name: str, genes: int | None, timesteps: int = 2) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    kw = {"in_channels": 3, **SMALL[name]} if name != "smallnet" else {}
    model = create_model(name, genes=genes, timesteps=timesteps, num_classes=4, **kw)
    images = torch.rand(8, model.in_channels, model.image_size, model.image_size)
    return lively(model, images), images[:FAST.samples]


def spec_of(proto: onnx.ModelProto) -> ModelSpec:
    return ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props}, "graph")


# ---- folding and factorised forms: exact per layer -------------------------------------------------------

def _genetic_conv(c_in, c_out, k, stride, padding, genes=3):
    genome = Genome(genes)
    genome.population("a", c_in, k * k)
    genome.population("b", c_out, k * k)
    conv = GeneticConv2d(genome.encodings["a"], genome.encodings["b"], genome.gene_matrix, k, stride, padding)
    bn = nn.BatchNorm2d(c_out)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3), bn.weight.data.uniform_(-2, 2)
    bn.bias.data.uniform_(-1, 1)
    return conv, bn.eval()


@pytest.mark.parametrize("c_in,c_out,k,stride,padding", [(5, 7, 3, 1, 1), (4, 6, 3, 2, 1), (6, 5, 1, 2, 0),
                                                         (4, 8, 3, 1, 0), (3, 4, 5, 2, 2)])
def test_dense_and_factorised_forms_equal_the_genetic_conv_and_bn(c_in, c_out, k, stride, padding):
    torch.manual_seed(k * 10 + stride)
    conv, bn = _genetic_conv(c_in, c_out, k, stride, padding)
    x = (torch.rand(3, c_in, 9, 9) < 0.3).float()  # spikes
    with torch.no_grad():
        ref = bn(conv(x)).numpy()
        w64 = torch.einsum("ipa,ab,opb->oip", conv.e_in.double(), conv.gene_matrix.double(), conv.e_out.double())
        w64 = (w64 * float(conv.scale)).reshape(c_out, c_in, k, k)  # eq. 1 in float64
        ref64 = F.batch_norm(F.conv2d(x.double(), w64, None, stride, padding),
                             bn.running_mean.double(), bn.running_var.double(), bn.weight.double(),
                             bn.bias.double(), False, 0.0, bn.eps).numpy()
    f = fold_layer(conv, bn)
    kernel, _ = dense_kernel(WeightOps(), f, "l")  # float32 [Cout, Cin, k, k]
    folded = F.conv2d(x.double(), torch.from_numpy(kernel.value).double(), torch.from_numpy(f.bias.value), stride,
                      padding).numpy()
    assert kernel.dtype == np.float32 and np.abs(folded - ref64).max() < 1e-5 * max(1.0, np.abs(ref64).max())
    cost = factorised_cost(f, tuple(x.shape[1:]), tuple(ref.shape[1:]))
    assert cost.form == ("shift-first" if stride > 1 or padding < k // 2 else "pointwise-first")
    for form in ("dense", "factorised"):
        g = GraphBuilder()
        y = emit_factorised(g, "x", f, cost, ref.shape[1:], "l") if form == "factorised" else emit_dense(g, "x", f, "l")
        g.op("Identity", [y], out_names=["y"])
        proto = g.model([tensor_info("x", ["n", *x.shape[1:]])], [tensor_info("y", ["n", *ref.shape[1:]])], 18, {})
        onnx.checker.check_model(proto, full_check=True)
        (got,) = create_session(proto.SerializeToString()).run(None, {"x": x.numpy()})
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-5 * max(1.0, np.abs(ref).max()), form


@pytest.mark.parametrize("k,size", [(3, 9), (3, 8), (1, 7), (5, 10)])
def test_pooled_forms_equal_conv_pool_then_bn(k, size):
    """A ConvPool's conv: dense = one (k+1)x(k+1) stride-2 Conv, factorised = conv + AveragePool; BN folded."""
    from gee_deploy.zoo.base import ConvPool

    torch.manual_seed(k + size)
    conv, bn = _genetic_conv(4, 6, k, 1, k // 2)
    x = (torch.rand(3, 4, size, size) < 0.3).float()
    with torch.no_grad():
        ref = bn(F.avg_pool2d(conv(x), 2)).numpy()
        assert np.abs(bn(ConvPool(conv)(x)).numpy() - ref).max() < 1e-5
    f = fold_layer(conv, bn, pooled=True)
    out_shape = ref.shape[1:]
    cost = factorised_cost(f, tuple(x.shape[1:]), out_shape)
    unpooled = factorised_cost(fold_layer(conv, bn), tuple(x.shape[1:]), (6, size, size))
    assert cost.form == "pointwise-first" and cost.macs == unpooled.macs
    assert cost.moved == unpooled.moved + 6 * size * size  # AveragePool reads the conv output
    assert weight_macs(ConvPool(conv), out_shape) == 6 * 4 * (k + 1) ** 2 * out_shape[1] * out_shape[2]
    for form in ("dense", "factorised"):
        g = GraphBuilder()
        y = emit_factorised(g, "x", f, cost, out_shape, "l") if form == "factorised" else emit_dense(g, "x", f, "l")
        g.op("Identity", [y], out_names=["y"])
        proto = g.model([tensor_info("x", ["n", *x.shape[1:]])], [tensor_info("y", ["n", *out_shape])], 18, {})
        onnx.checker.check_model(proto, full_check=True)
        ops = [n.op_type for n in proto.graph.node]
        assert ("AveragePool" in ops) == (form == "factorised")
        (got,) = create_session(proto.SerializeToString()).run(None, {"x": x.numpy()})
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-5 * max(1.0, np.abs(ref).max()), form


def test_factorised_macs_match_the_design_formula():
    conv, bn = _genetic_conv(16, 32, 3, 1, 1, genes=4)
    f = fold_layer(conv, bn)
    cost = factorised_cost(f, (16, 8, 8), (32, 8, 8))
    assert cost.macs == 9 * 4 * (16 + 32) * 64  # k^2 g (Cin + Cout) per output pixel
    assert cost.spike_macs == 16 * 9 * 4 * 64
    assert weight_macs(conv, (32, 8, 8)) == 16 * 32 * 9 * 64
    lin = GeneticLinear(torch.randn(10, 1, 4), torch.randn(6, 1, 4), torch.randn(4, 4))
    fl = fold_layer(lin)
    assert factorised_cost(fl, (10,), (6,)).macs == 4 * (10 + 6)
    with torch.no_grad():
        x = torch.randn(2, 10)
        weight, _ = dense_kernel(WeightOps(), fl, "l")  # [Cout, Cin]
        assert np.allclose(x.double().numpy() @ weight.value.T + fl.bias.value, lin(x).numpy(), atol=1e-5)


# ---- every architecture, both twins ----------------------------------------------------------------------

@pytest.mark.parametrize("genes", [6, None], ids=["genetic", "dense-twin"])
@pytest.mark.parametrize("name", list_models())
def test_zoo_exports_validate_and_honour_the_contract(name, genes, tmp_path):
    model, images = small_model(name, genes)
    variants = ["dense", "factorised"] if genes else ["dense"]
    for variant in variants:
        out = tmp_path / f"{name}_{variant}.onnx"
        report = export_loaded(model, out, variant=variant, images=images, validation=FAST)
        proto = onnx.load(str(out))
        assert not proto.graph.initializer or all(not t.external_data for t in proto.graph.initializer)
        onnx.checker.check_model(proto, full_check=True)
        assert [i.name for i in proto.graph.input] == [INPUT_NAME]
        assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
        spec = spec_of(proto)
        assert spec.timesteps == model.timesteps and spec.variant == variant and spec.num_classes == model.num_classes
        assert spec.input_shape == (model.in_channels, model.image_size, model.image_size)
        spiking = spec.spiking_layers
        lifs = [n for n, m in model.named_modules() if type(m).__name__ == "LIF"]
        assert sorted(spiking) == sorted(lifs)
        layers = spec.layers
        weight_layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear,
                                                                                GeneticConv2d, GeneticLinear))]
        assert sorted(l.name for l in layers) == sorted(weight_layers)
        assert layers[0].name.startswith("stem.") and not layers[0].input_is_spikes and layers[0].calls == 1
        assert all(l.spiking_input_layer in spiking for l in layers if l.input_is_spikes)
        want = "dense" if (variant == "dense" or not genes) else "factorised"
        assert {l.variant for l in layers} == {want}
        # the parity is not trivial: every spiking layer fired
        assert len(report.validation["spikes_per_layer_deployed"]) == len(spiking)
        assert min(report.validation["spikes_per_layer_deployed"]) > 0
        assert report.validation["top1_agreement"] >= FAST.thresholds.min_top1_agreement
        assert report.tensorrt_problems == []  # the static TensorRT check passes every export


def test_auto_picks_the_cheaper_form_per_layer(tmp_path):
    model, images = small_model("smallnet", genes=4)
    proto, info = build_onnx(model, "auto")
    assert {l.variant for l in info.layers} == {"dense", "factorised"}  # the 1-channel stem stays dense
    for layer in info.layers:
        assert layer.macs == (layer.factorised_macs if layer.variant == "factorised" else layer.dense_macs)
        if layer.variant == "factorised":
            assert layer.factorised_macs < layer.dense_macs
    report = export_loaded(model, tmp_path / "auto.onnx", variant="auto", images=images, validation=FAST)
    assert report.macs_per_sample < report.dense_macs_per_sample


def test_auto_with_profile_measures_each_layer_and_still_validates(tmp_path, monkeypatch):
    from gee_deploy.export import choose

    timed = []
    real = choose.layer_latency
    monkeypatch.setattr(choose, "layer_latency", lambda f, form, *a, **k: timed.append(form) or real(f, form, *a, **k))
    model, images = small_model("smallnet", genes=4)
    report = export_loaded(model, tmp_path / "p.onnx", variant="auto", profile=True, images=images, validation=FAST)
    assert {l.variant for l in report.layers} <= {"dense", "factorised"}
    genetic = [l for l in report.layers if l.factorised_macs is not None]
    assert genetic and sorted(timed) == sorted(["dense", "factorised"] * len(genetic))  # both forms timed per layer


# ---- validation reports every failure --------------------------------------------------------------------

def test_validation_collects_every_failure_and_exits_1(tmp_path):
    model, images = small_model("smallnet", genes=4)
    proto, _ = build_onnx(model, "dense")
    other, _ = small_model("smallnet", genes=4)
    for bn in [m for m in other.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.bias.data += 0.7  # a different model: more spikes, other logits
    with pytest.raises(ExportValidationError) as e:
        validate_export(other, proto.SerializeToString(), images, torch.zeros(len(images), dtype=torch.long), FAST)
    err = e.value
    assert err.exit_code == 1
    assert len(err.failures) >= 2  # matching samples and spike totals at least, reported together
    assert "total spike count rel diff" in str(err) and "samples matching" in str(err)


def test_validation_names_wrong_output_names():
    model, images = small_model("smallnet", genes=4)
    proto, _ = build_onnx(model, "dense")
    proto.graph.output[0].name = "scores"
    for n in proto.graph.node:
        n.output[:] = ["scores" if o == LOGITS else o for o in n.output]
    with pytest.raises(ExportValidationError, match="output names"):
        validate_export(model, proto.SerializeToString(), images, None, FAST)


# ---- streaming ---------------------------------------------------------------------------------------------

def test_streaming_export_matches_the_unrolled_graph_over_t_calls(tmp_path):
    model, images = small_model("resnet18", genes=4, timesteps=3)
    out = tmp_path / "stream.onnx"
    report = export_loaded(model, out, variant="auto", streaming=True, images=images, validation=FAST)
    proto = onnx.load(str(out))
    spec = spec_of(proto)
    states = spec.state_inputs
    assert spec.streaming and len(states) == len(spec.spiking_layers) and all(l.calls == 1 for l in spec.layers)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME] + states
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES) + spec.state_outputs
    assert report.streaming_validation["max_spike_count_diff"] == 0.0
    # one call is one step: feeding zeros twice differs from carrying the state (the state matters)
    sess = create_session(str(out))
    x = images.numpy()
    zeros = {i.name: np.zeros([len(x)] + list(i.shape[1:]), np.float32) for i in sess.get_inputs()[1:]}
    first = sess.run(None, {INPUT_NAME: x, **zeros})
    carried = sess.run(None, {INPUT_NAME: x, **dict(zip(states, first[2:]))})
    assert not np.array_equal(first[1], carried[1])


# ---- Triton and TensorRT -----------------------------------------------------------------------------------

def test_triton_repository_layout_and_config(tmp_path):
    model, images = small_model("smallnet", genes=4)
    model.model_name = "smallnet"
    report = export_loaded(model, tmp_path / "repo", fmt="triton", images=images, validation=FAST, max_batch_size=32)
    model_dir = tmp_path / "repo" / "smallnet"
    assert report.out == str(model_dir)
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())  # as Triton
    assert config.name == "smallnet" and config.max_batch_size == 32 and config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [(INPUT_NAME, [1, 28, 28])]
    assert (SPIKE_COUNTS, [4]) in [(t.name, list(t.dims)) for t in config.output]  # 4 spiking layers
    proto = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert spec_of(proto).model_name == "smallnet"
    assert ModelSpec.from_artefact(model_dir) == spec_of(proto)  # the sidecar beside the repository's graph
    # exporting again replaces the model directory atomically (no leftovers)
    export_loaded(model, tmp_path / "repo", fmt="triton", images=images, validation=FAST)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["smallnet"]


def test_tensorrt_static_check_passes_our_graphs_and_flags_problems():
    model, _ = small_model("smallnet", genes=4)
    for variant in VARIANTS:
        proto, _ = build_onnx(model, variant)
        problems = compatibility_problems(proto)
        if VARIANTS[variant].int8 != "never":  # TensorRT's int8 is QDQ only; MatMulInteger is onnxruntime's
            assert problems and all("MatMulInteger" in p for p in problems)
        else:
            assert problems == []
    proto, _ = build_onnx(model, "dense")
    assert compatibility_problems(to_float16(proto)) == []
    bad, _ = build_onnx(model, "dense")
    bad.graph.node[0].op_type = "CenterCropPad"
    bad.graph.initializer[0].data_type = onnx.TensorProto.DOUBLE
    bad.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8  # a static batch
    bad.graph.output[1].type.tensor_type.shape.dim[1].dim_param = "layers"
    problems = " | ".join(compatibility_problems(bad))
    assert "CenterCropPad" in problems and "DOUBLE" in problems
    assert "input: axis 0 is not a dynamic batch axis" in problems and "spike_counts: axes [1]" in problems


def test_float16_conversion_keeps_float32_io_and_close_values():
    model, images = small_model("smallnet", genes=4)
    proto, _ = build_onnx(model, "dense")
    half = to_float16(proto)
    onnx.checker.check_model(half, full_check=True)
    got = create_session(half.SerializeToString()).run(None, {INPUT_NAME: images.numpy()})
    ref = create_session(proto.SerializeToString()).run(None, {INPUT_NAME: images.numpy()})
    assert got[0].dtype == np.float32 and got[0].shape == ref[0].shape
    assert (got[0].argmax(1) == ref[0].argmax(1)).mean() >= 0.75  # fp16 flips some spikes; close, not exact


@pytest.mark.tensorrt
def test_tensorrt_plan_builds(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    model, images = small_model("smallnet", genes=4)
    export_loaded(model, tmp_path / "m.plan", fmt="tensorrt", images=images, validation=FAST)
    assert (tmp_path / "m.plan").stat().st_size > 0 and (tmp_path / "m.plan.cache").exists()
    assert ModelSpec.from_artefact(tmp_path / "m.plan") == ModelSpec.from_sidecar(sidecar_path(tmp_path / "m.plan"))


# ---- the CLI on a real checkpoint, and bad input -----------------------------------------------------------

def run_cli(args, capsys) -> tuple[int, str, str]:
    from gee_deploy.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_says_when_samples_exceed_the_test_split(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, err = run_cli(["export", str(tiny_checkpoint), "--out", str(out), "--samples", "100000"], capsys)
    assert code == 0, err
    held = int(stdout.split("validated on ")[1].split()[0])
    assert held < 100000
    assert f"note: --samples 100000: the synthetic test split holds {held} images; validated on all" in stdout


def test_cli_exports_the_checkpoint_with_its_metadata(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, err = run_cli(["export", str(tiny_checkpoint), "--out", str(out), "--samples", "32"], capsys)
    assert code == 0, err
    assert "validated on 32 samples" in stdout
    spec = ModelSpec.from_onnx(out)
    ckpt = load_checkpoint(tiny_checkpoint)
    assert spec.checkpoint_sha256 == file_sha256(tiny_checkpoint)
    assert spec.timesteps == 2 and spec.input_shape == (1, 28, 28)
    assert spec.model_name == "smallnet" and spec.dataset == ckpt.dataset.name
    assert spec.class_names == ckpt.dataset.classes
    assert spec.model_args == {k: list(v) if isinstance(v, tuple) else v for k, v in ckpt.model_args.items()}


def test_cli_tensorrt_without_tensorrt_is_one_line_and_exit_2(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    out = tmp_path / "m.plan"
    code, _, err = run_cli(["export", str(tiny_checkpoint), "--out", str(out), "--format", "tensorrt"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "TensorRT is not installed" in err
    assert not out.exists()


def _bad_inputs(tiny_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    wrong = tmp_path / "wrong.pt"
    ckpt = load_checkpoint(tiny_checkpoint)
    save_checkpoint(wrong, replace(ckpt, state_dict={k: v for k, v in ckpt.state_dict.items() if "stem" not in k}))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    good = str(tiny_checkpoint)
    return {
        "truncated": ([str(truncated)], "is truncated: a torch.save archive without its end"),
        "not-a-checkpoint": ([str(text)], "not a gee-deploy checkpoint"),
        "missing": ([str(tmp_path / "nope.pt")], "not found"),
        "other-architecture": ([str(wrong)], "does not match"),
        "unknown-variant": ([good, "--variant", "sparse"], "'sparse' is not one of 'dense', 'factorised', 'auto'"),
        "unknown-format": ([good, "--format", "tflite"], "'tflite' is not one of 'onnx', 'triton', 'tensorrt', 'nir'"),
        "bad-opset": ([good, "--opset", "11"], "--opset must be an integer in [18, "),
        "unwritable": ([good, "--samples", "8"], "cannot write"),
        "out-is-a-directory": ([good, "--samples", "8"], "is a directory"),
    }, blocker


@pytest.mark.parametrize("case", ["truncated", "not-a-checkpoint", "missing", "other-architecture",
                                  "unknown-variant", "unknown-format", "bad-opset", "unwritable",
                                  "out-is-a-directory"])
def test_bad_input_is_one_line_nonzero_exit_and_no_file(case, tiny_checkpoint, tmp_path, capsys):
    cases, blocker = _bad_inputs(tiny_checkpoint, tmp_path)
    args, message = cases[case]
    out = {"unwritable": blocker / "model.onnx", "out-is-a-directory": tmp_path}.get(case, tmp_path / "m.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(["export", *args, "--out", str(out)], capsys)
    assert code != 0
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp files left


def test_export_json_says_ok_and_refuses_a_sample_count_below_one(tiny_checkpoint, tmp_path):
    import json

    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(out), "--json", "--samples", "32"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True and out.exists()
    for bad in ("0", "-5"):
        r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "n.onnx"), "--samples", bad])
        assert r.exit_code == 2 and "--samples" in r.output and not (tmp_path / "n.onnx").exists()


def test_export_json_failure_prints_a_json_document_and_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    import json

    import gee_deploy.export.options as options

    # an unmeetable top-1 limit makes the real validation fail
    monkeypatch.setattr(options, "validation_thresholds", lambda *a: Thresholds(min_top1_agreement=1.01))
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(out), "--json"], standalone_mode=False)
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and any("top-1 agreement" in f for f in doc["failures"]) and "check" in doc["error"]
    assert isinstance(r.exception, ExportValidationError) and not out.exists()
