"""The int8 export: exact uint8 spikes x int8 weights, every zoo model, fallbacks, options and metadata."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
import torch
from click.testing import CliRunner
from torch import nn

from gee_deploy.cli import cli
from gee_deploy.energy import E_AC_INT8_PJ, E_AC_PJ, energy_per_layer
from gee_deploy.export import build_onnx
from gee_deploy.formats import export_loaded
from gee_deploy.export.configs import INT8_MIN_MACS, INT8_PTQ_THRESHOLDS, validation_thresholds
from gee_deploy.export.errors import UnknownOptionError
from gee_deploy.export.int8 import emit_int8, emit_int8_nhwc, int8_layer, patch_taps
from gee_deploy.export.tensorrt import compatibility_problems
from gee_deploy.export.graph import GraphBuilder, tensor_info
from gee_deploy.neurons import SpikeRecorder
from gee_deploy.ort_session import create_session
from gee_deploy.quantisation import (attach_quantisers, quantisable_modules, quantise_weight, spike_reading_layers,
                                     stem_layer)
from gee_deploy.spec import ModelSpec
from gee_deploy.zoo import list_models
from gee_deploy.zoo.base import ConvPool
from test_export import FAST, small_model, spec_of


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: many small ops run faster on one thread


def _layer_graph(layer, in_shape, emit=emit_int8):
    g = GraphBuilder()
    c, h, w = in_shape
    y = emit(g, "x", layer, in_shape, "layer")
    g.op("Identity", [y], out_names=["y"])
    x_shape = ["n", c, h, w] if emit is emit_int8 else ["n", h, w, c]
    proto = g.model([tensor_info("x", x_shape, TensorProto.UINT8)], [tensor_info("y", ["n"])], 18, {})
    return create_session(proto.SerializeToString())


CONV_GEOMETRIES = [
    (5, 7, 3, 1, 1, 6),  # gathered 3x3 patches, padded
    (4, 6, 4, 2, 1, 7),  # stride divides the kernel (odd map)
    (6, 5, 1, 2, 0, 5),  # a 1x1 stride-2 shortcut
    (6, 5, 1, 1, 0, 5),  # a 1x1 stride-1 conv: no gathering
    (8, 9, 3, 1, 0, 3),  # kernel covers the input: one MatMulInteger
    (3, 4, 5, 2, 2, 9)]


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,size", CONV_GEOMETRIES)
def test_uint8_spikes_times_int8_weights_is_the_exact_integer_sum(c_in, c_out, k, stride, padding, size):
    """The property the int8 variant rests on: 0/1 inputs as uint8 are exact and the int32 sum is exact, so the
    layer's output is float32(exact integer sum) * scale + bias, bit for bit."""
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, bias=False)
    bn = nn.BatchNorm2d(c_out)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3), bn.weight.data.uniform_(-2, 2)
    bn.bias.data.uniform_(-1, 1)
    layer = int8_layer(conv, bn.eval())
    spikes = (torch.rand(3, c_in, size, size) < 0.3).to(torch.uint8)
    got = _layer_graph(layer, (c_in, size, size)).run(None, {"x": spikes.numpy()})[0]
    codes = layer.q.value.transpose(3, 2, 0, 1)  # [k, k, Cin, Cout] -> [Cout, Cin, k, k]
    assert layer.q.shape == (k, k, c_in, c_out)
    acc = torch.nn.functional.conv2d(spikes.double(), torch.from_numpy(codes.copy()).double(), stride=stride,
                                     padding=padding).numpy()  # integers: exact in float64
    want = acc.astype(np.float32) * layer.scale.value.reshape(-1, 1, 1) + layer.bias.value.reshape(-1, 1, 1)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    q, _ = quantise_weight(conv.weight.float())
    assert np.array_equal(codes, q.numpy())  # the BatchNorm fold left the codes alone


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,size", CONV_GEOMETRIES)
def test_the_nhwc_conv_is_the_nchw_conv_transposed(c_in, c_out, k, stride, padding, size):
    """emit_int8_nhwc (what the writer runs between int8 convs) computes emit_int8's output, bit for bit."""
    layer = int8_layer(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), None)
    spikes = (torch.rand(3, c_in, size, size) < 0.3).to(torch.uint8).numpy()
    want = _layer_graph(layer, (c_in, size, size)).run(None, {"x": spikes})[0]
    got = _layer_graph(layer, (c_in, size, size), emit_int8_nhwc).run(
        None, {"x": np.ascontiguousarray(spikes.transpose(0, 2, 3, 1))})[0]
    assert np.array_equal(got.transpose(0, 3, 1, 2), want)


def test_pooled_layer_quantises_the_fused_kernel_it_runs():
    model, _ = small_model("smallnet", 6)
    pool = next(m for m in model.modules() if isinstance(m, ConvPool) and m is not model.stem[0])
    layer = int8_layer(pool[0], None, pool)
    assert layer.kernel_size == pool.kernel_size == 4 and layer.stride == 2
    codes = layer.q.value.transpose(3, 2, 0, 1)  # [k, k, Cin, Cout] -> [Cout, Cin, k, k]
    assert np.array_equal(codes, quantise_weight(pool.quantisation_source())[0].numpy())
    # the source is the float64-generated kernel rounded once: within float32 rounding of the kernel that runs
    torch.testing.assert_close(pool.quantisation_source(), pool.fused_weight())


@pytest.mark.parametrize("name", list_models())
def test_int8_export_of_every_zoo_model_validates(name, tmp_path):
    """Every spike-reading layer int8, every other float32; with the quantisers attached (what a fine-tuned
    checkpoint carries) the graph computes what the model computes and validates under the fp32 limits.
    (Post-training int8 of these random, chaotic nets moves samples by design: its limits are for trained ones.)"""
    model, images = small_model(name, 6)
    spiking = set(spike_reading_layers(model))
    attach_quantisers(model, sorted(spiking))
    report = export_loaded(model, tmp_path / "int8.onnx", variant="int8", images=images, validation=FAST)
    spec = spec_of(onnx.load(str(tmp_path / "int8.onnx")))
    assert spec.variant == "int8" and spec.storage == report.storage
    for layer in spec.layers:
        assert layer.precision == ("int8" if layer.name in spiking else "fp32"), layer.name
        # the scales are in the metadata of a folded file; a genetic file's graph computes them
        assert (layer.weight_scales is not None) == (layer.precision == "int8" and spec.storage == "folded")
        if layer.precision == "int8":
            assert layer.input_is_spikes and (spec.storage == "genetic" or len(layer.weight_scales) > 0)
    assert min(report.validation["spikes_per_layer_deployed"]) > 0
    assert report.validation["top1_agreement"] >= FAST.thresholds.min_top1_agreement


@pytest.mark.parametrize("name", ["smallnet", "resnet19"])
@pytest.mark.parametrize("form", ["integer", "qdq"])
def test_a_quantised_model_and_its_int8_graph_agree_bit_for_bit(name, form):
    """Stem and spike-reading layers quantised: the graph's stem output, every spike and the logits equal the
    PyTorch model's exactly, for both storages (a runtime that folded the stem's scale into its weights, as
    onnxruntime's Conv-Mul fusion would with a plain float weight, moves the stem's last bits: caught here)."""
    model, _ = small_model(name, 6, timesteps=2)
    stem = stem_layer(model)
    attach_quantisers(model, [stem, *spike_reading_layers(model)])
    images = torch.rand(16, model.in_channels, model.image_size, model.image_size,
                        generator=torch.Generator().manual_seed(1))
    seen = {}
    module = quantisable_modules(model)[stem]
    module.register_forward_hook(lambda m, a, o: None if "stem" in seen else seen.update(stem=o))  # these images
    with torch.no_grad(), SpikeRecorder(model) as rec:
        ref = model(images)
    for storage in ("folded", "genetic"):
        proto, spec = build_onnx(model, "int8", int8_form=form, storage=storage)
        assert spec.layers[0].name == stem and spec.layers[0].precision == "int8"
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(stem))  # the stem's scale-and-bias output
        logits, counts, stem_out = create_session(proto.SerializeToString()).run(None, {"input": images.numpy()})
        assert np.array_equal(stem_out, seen["stem"].numpy()), storage
        assert np.array_equal(counts, rec.stacked().numpy()), storage  # every spike of every layer and sample
        assert np.array_equal(logits, ref.numpy()), storage


def test_an_fp32_stem_stays_float32_in_a_post_training_int8_export():
    model, _ = small_model("smallnet", 6, timesteps=2)
    _, spec = build_onnx(model, "int8")
    assert spec.layers[0].precision == "fp32" and not spec.layers[0].input_is_spikes


def _qdq_nodes(proto):
    """The compute graph's QuantizeLinear / DequantizeLinear (of a folded file: the weight subgraph is folded)."""
    return [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


@pytest.mark.parametrize("name", ["smallnet", "resnet19"])
def test_qdq_form_computes_what_the_integer_form_computes_bit_for_bit(name):
    """Unit scales: whichever kernel runs the QDQ Conv / Gemm (onnxruntime's float conv here), its sums are the
    integer form's exact integer sums, then the same float32 scale and bias: the same logits and spikes."""
    model, _ = small_model(name, 6, timesteps=2)
    images = torch.rand(8, model.in_channels, model.image_size, model.image_size,
                        generator=torch.Generator().manual_seed(2)).numpy()
    for storage in ("folded", "genetic"):
        outs = {}
        for form in ("integer", "qdq"):
            proto, spec = build_onnx(model, "int8", storage=storage, int8_form=form)
            ops = {n.op_type for n in proto.graph.node}
            assert ("MatMulInteger" in ops) == (form == "integer") and ("DequantizeLinear" in ops) == (form == "qdq")
            outs[form] = create_session(proto.SerializeToString()).run(None, {"input": images})
        assert all(np.array_equal(a, b) for a, b in zip(outs["integer"], outs["qdq"])), storage
        assert outs["qdq"][1].sum() > 0


def test_qdq_form_is_signed_int8_spikes_at_unit_scale_and_the_int8_codes():
    """What TensorRT's explicit quantisation reads: QuantizeLinear -> DequantizeLinear pairs on the spikes with
    scale 1 and an int8 zero point 0, and each weight the layer's int8 codes behind a DequantizeLinear at scale 1
    (kept as int8 initializers by the folding, never folded to float)."""
    model, _ = small_model("smallnet", 6)
    proto, spec = build_onnx(model, "int8", storage="folded", int8_form="qdq")
    values = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = _qdq_nodes(proto)
    for n in nodes:
        scale, zero = values[n.input[1]], values[n.input[2]]  # per tensor: 0-D
        assert scale.shape == zero.shape == () and scale == 1.0 and zero.dtype == np.int8 and zero == 0
    weights = [n.input[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in values]
    int8_layers = [l for l in spec.layers if l.precision == "int8"]
    assert len(weights) == len(int8_layers) and all(values[w].dtype == np.int8 for w in weights)
    first = next(m for m in model.modules() if isinstance(m, ConvPool) and m is not model.stem[0])
    codes = values[f"{int8_layers[0].name}.weight_int8"]  # [Cout, Cin, k, k]
    assert np.array_equal(codes, quantise_weight(first.quantisation_source())[0].numpy())
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) == len({l.spiking_input_layer for l in int8_layers})
    assert all(len(l.weight_scales) > 0 for l in int8_layers)


@pytest.mark.parametrize("storage", ["folded", "genetic"])
def test_tensorrt_static_check_passes_a_qdq_int8_export(storage):
    model, _ = small_model("resnet19", 6)
    qdq, _ = build_onnx(model, "int8", storage=storage, int8_form="qdq")
    assert compatibility_problems(qdq) == []
    integer, _ = build_onnx(model, "int8", storage=storage, int8_form="integer")
    assert any("MatMulInteger" in p for p in compatibility_problems(integer))
    attach_quantisers(model, [stem_layer(model), *spike_reading_layers(model)])  # and a quantised stem's codes
    quantised, _ = build_onnx(model, "int8", storage=storage, int8_form="qdq")
    assert compatibility_problems(quantised) == []


def test_openvino_runs_the_qdq_graph_as_onnxruntime_does():
    """OpenVINO's CPU plugin (f32 precision hint) through onnxruntime's plugin EP: the same logits and spikes."""
    import onnxruntime as ort

    from gee_deploy.ort_session import openvino_session_options, openvino_unavailable

    if (why := openvino_unavailable()) is not None:
        pytest.skip(why)

    model, _ = small_model("smallnet", 6, timesteps=4)
    attach_quantisers(model, spike_reading_layers(model))
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), SpikeRecorder(model) as rec:
        ref = model(images)
    proto, _ = build_onnx(model, "int8", storage="genetic", int8_form="qdq")
    session = ort.InferenceSession(proto.SerializeToString(), openvino_session_options(threads=1))
    logits, counts = session.run(None, {"input": images.numpy()})
    assert np.array_equal(counts, rec.stacked().numpy()) and np.abs(logits - ref.numpy()).max() < 1e-5


def test_layers_reading_analog_values_stay_float32():
    """A pooled head's classifier reads an average of spikes (not binary): documented fp32 fallback."""
    model, _ = small_model("resnet19", 6)
    _, spec = build_onnx(model, "int8")
    analog = [l for l in spec.layers if not l.input_is_spikes]
    assert len(analog) >= 2 and all(l.precision == "fp32" for l in analog)
    assert any(l.precision == "int8" for l in spec.layers)


def test_auto_allow_int8_picks_the_large_spike_reading_layers_of_any_geometry():
    """SmallNet (stride-2 ConvPools, a whole-input conv, a tiny classifier) and ResNet-19 (3x3 stride-1 convs,
    1x1 stride-2 shortcuts, linear layers reading pooled analog values): int8 exactly where a layer reads
    spikes and has at least INT8_MIN_MACS per call."""
    for name in ("smallnet", "resnet19"):
        model, _ = small_model(name, 6)
        _, spec = build_onnx(model, "auto", allow_int8=True)
        for layer in spec.layers:
            want = layer.input_is_spikes and layer.dense_macs >= INT8_MIN_MACS
            assert (layer.precision == "int8") == want, (name, layer.name)
        assert {l.precision for l in spec.layers} == {"fp32", "int8"}, name
    _, plain = build_onnx(model, "auto")
    assert {l.precision for l in plain.layers} == {"fp32"}
    with pytest.raises(UnknownOptionError, match="--allow-int8"):
        build_onnx(model, "dense", allow_int8=True)


def test_int8_layer_metadata_round_trips():
    model, _ = small_model("smallnet", 6)
    proto, spec = build_onnx(model, "int8")
    again = ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props}, "graph")
    assert again == spec and any(l.weight_scales for l in again.layers)


def test_thresholds_per_variant():
    assert validation_thresholds(False, False) == validation_thresholds(True, True)  # fp32's
    assert validation_thresholds(True, False) == INT8_PTQ_THRESHOLDS
    assert INT8_PTQ_THRESHOLDS.max_accuracy_delta == 0.003 and INT8_PTQ_THRESHOLDS.max_spike_delta == 0.005


def test_energy_uses_int8_constants_for_int8_layers():
    model, _ = small_model("smallnet", 6)
    _, fp32 = build_onnx(model, "dense")
    _, int8 = build_onnx(model, "int8")
    rates = {name: 0.1 for name in fp32.spiking_layers}
    e32 = {e.name: e for e in energy_per_layer(fp32.layers, rates, fp32.timesteps)}
    e8 = {e.name: e for e in energy_per_layer(int8.layers, rates, int8.timesteps)}
    for layer in int8.layers:
        if layer.precision == "int8":
            assert e8[layer.name].energy_pj == pytest.approx(e32[layer.name].energy_pj * E_AC_INT8_PJ / E_AC_PJ)
        else:
            assert e8[layer.name].energy_pj == e32[layer.name].energy_pj


def test_cli_rejects_allow_int8_with_a_fixed_variant(tiny_checkpoint, tmp_path):
    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"),
                                 "--variant", "dense", "--allow-int8"], standalone_mode=False)
    assert isinstance(r.exception, UnknownOptionError) and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args,match", [
    (["--variant", "dense", "--int8-form", "qdq"], "writes none"),
    (["--variant", "int8", "--int8-form", "integer", "--format", "tensorrt"], "TensorRT cannot run"),
])
def test_cli_refuses_an_int8_form_that_cannot_apply(tiny_checkpoint, tmp_path, args, match):
    out = tmp_path / ("m.plan" if "tensorrt" in args else "m.onnx")
    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(out)] + args, standalone_mode=False)
    assert isinstance(r.exception, UnknownOptionError) and match in str(r.exception) and not out.exists()


def test_tensorrt_takes_int8_in_the_qdq_form(tiny_checkpoint, tmp_path):
    """--format tensorrt no longer refuses int8: its default form is QDQ, and without TensorRT the one line says so."""
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    from gee_deploy.export.errors import TensorRTUnavailableError

    r = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "m.plan"), "--variant",
                                 "int8"], standalone_mode=False)
    assert isinstance(r.exception, TensorRTUnavailableError) and not (tmp_path / "m.plan").exists()


@pytest.mark.parametrize("name", ["smallnet", "resnet19", "vgg11"])
def test_one_gemm_per_step_and_band_computes_what_one_gemm_for_all_steps_computes(name, monkeypatch):
    """The integer form's per-step (and per-band) int8 GEMMs of big maps are rows of the one GEMM: with every
    int8 conv run step by step, in whole steps or in bands of one output row, and with none, the graph gives the
    same logits and spike counts bit for bit (residual adds and max pools included)."""
    import gee_deploy.export.int8 as int8
    import gee_deploy.export.writer as writer

    model, _ = small_model(name, 6, timesteps=3)
    images = torch.rand(5, model.in_channels, model.image_size, model.image_size,
                        generator=torch.Generator().manual_seed(2)).numpy()
    outputs, gemms = [], []
    for step_min, band_min in ((2**62, 2**62), (0, 2**62), (0, 1)):
        monkeypatch.setattr(writer, "STEP_GEMM_MIN_OUTPUTS", step_min)
        monkeypatch.setattr(int8, "BAND_MIN_OUTPUTS", band_min)
        proto, _ = build_onnx(model, "int8", int8_form="integer")
        gemms.append([n.op_type for n in proto.graph.node].count("MatMulIntegerToFloat"))
        outputs.append(create_session(proto.SerializeToString()).run(None, {"input": images}))
    assert gemms[0] < gemms[1] < gemms[2]  # one GEMM per layer, per step, per step and band
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("hp,wp,k,s,chunks", [(6, 6, 3, 1, 1), (6, 6, 3, 1, 2), (9, 7, 4, 2, 2), (5, 5, 1, 1, 1)])
def test_patch_taps_index_every_output_pixels_taps(hp, wp, k, s, chunks):
    g = GraphBuilder()
    taps = patch_taps(g, (hp, wp), k, s, chunks, "t")
    outs = [g.op("Identity", [t], out_names=[f"y{i}"]) for i, t in enumerate(taps)]
    proto = g.model([], [onnx.helper.make_empty_tensor_value_info(o) for o in outs], 18, {})
    got = np.concatenate([a.reshape(-1) for a in create_session(proto.SerializeToString()).run(None, {})])
    ho, wo = (hp - k) // s + 1, (wp - k) // s + 1
    expect = [(r * s + i) * wp + c * s + j for r in range(ho) for c in range(wo) for i in range(k) for j in range(k)]
    assert got.tolist() == expect
