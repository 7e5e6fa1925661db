"""Int8 weight quantisation: codes, straight-through gradient, which layers, checkpoints, the quantize command."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from gee_deploy.checkpoint import load_checkpoint, load_model
from gee_deploy.cli import cli
from gee_deploy.errors import ConfigError
from gee_deploy.quantisation import (QMAX, TORCH_OPS, InputCodes, attach_quantisers, fake_quantise, int8_codes,
                                     int8_weight, quantisable_modules, quantise_weight, quantised_layers,
                                     spike_reading_layers, stem_layer)
from gee_deploy.zoo import create_model, list_models
from test_export import small_model


def _codes_in(backend: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`int8_codes` of ``w`` [..., Cout] run on one backend: torch, numpy (the folding), or ONNX operators
    evaluated by onnxruntime (``genetic`` storage)."""
    from gee_deploy.export.graph import GraphBuilder, tensor_info
    from gee_deploy.export.weights import Tensor, WeightOps
    from gee_deploy.ort_session import create_session

    if backend == "torch":
        q, s = int8_codes(TORCH_OPS, torch.from_numpy(w))
        return q.numpy(), s.numpy()
    if backend == "numpy":
        q, s = int8_codes(WeightOps(), Tensor(w))
        return q.value, s.value
    graph = GraphBuilder()
    ops = WeightOps(graph)
    q, s = int8_codes(ops, ops.constant(w, "w", np.float32))
    graph.op("Identity", [q.name], out_names=["q"])
    graph.op("Identity", [s.name], out_names=["s"])
    proto = graph.model([], [tensor_info("q", list(q.shape), onnx.TensorProto.INT8), tensor_info("s", list(s.shape))],
                        18, {})
    got = create_session(proto.SerializeToString()).run(None, {})
    assert np.array_equal(got[0], q.value) and np.array_equal(got[1], s.value)  # the graph and its numpy value
    return got[0], got[1]


@pytest.mark.parametrize("backend", ["torch", "numpy", "onnx"])
def test_the_int8_rule_is_symmetric_per_channel_max_over_127_round_half_even_clip_127(backend):
    """The one definition of the codes (:func:`int8_codes`) in each backend it runs on, against the scheme written
    out: s_o = max |w_o| / 127 (1 for an all-zero channel), q = clamp(round half to even(w / s_o), -127, 127)."""
    unit = 2.0 ** -7  # scales that are powers of two keep w / s exact, so ties are ties
    ties = np.array([127, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -125.5])
    cols = [ties * unit, np.zeros(8), np.array([-127, 63.5, 64.5, 0.25, -1, 0, 3, -2]) * 8.0,
            np.random.default_rng(0).normal(0, 0.3, 8)]
    w = np.stack(cols, axis=-1).astype(np.float32).reshape(2, 4, 4)  # [..., Cout]: 4 output channels
    q, s = _codes_in(backend, w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and q.shape == w.shape and s.shape == (4,)
    q = q.reshape(8, 4)
    assert q[:, 0].tolist() == [127, 2, -4, 0, 0, 2, 126, -126] and s[0] == np.float32(unit)
    assert q[:, 1].tolist() == [0] * 8 and s[1] == 1.0
    assert q[:, 2].tolist() == [-127, 64, 64, 0, -1, 0, 3, -2] and s[2] == np.float32(8.0)
    r = cols[3].astype(np.float32)
    want_s = np.float32(np.abs(r).max()) / np.float32(QMAX)
    assert s[3] == want_s and q[:, 3].tolist() == np.clip(np.rint(r / want_s), -QMAX, QMAX).astype(int).tolist()
    assert np.abs(q[:, 3]).max() == QMAX


def test_codes_are_int8_per_output_channel_and_round_to_nearest():
    w = torch.randn(16, 8, 3, 3) * torch.logspace(-3, 1, 16).view(-1, 1, 1, 1)  # channels of very different scale
    w[3] = 0.0
    q, s = quantise_weight(w)
    assert q.dtype == torch.int8 and s.shape == (16,)
    per_channel = q.reshape(16, -1).abs().amax(1)
    assert per_channel[3] == 0 and s[3] == 1.0  # an all-zero channel stays zero
    assert torch.all(per_channel[torch.arange(16) != 3] == QMAX)  # each channel's largest |w| maps to +-127
    err = (q.float() * s.view(-1, 1, 1, 1) - w).abs()
    assert torch.all(err <= s.view(-1, 1, 1, 1) / 2 * (1 + 1e-6))


def test_batchnorm_scale_keeps_the_codes():
    """BN multiplies output channel o by b_o: the codes of W b_o are those of W (sign into q), scale s_o |b_o|."""
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    b = torch.tensor([2.0, 0.5, -4.0, 0.25, 1.0, -1.0, 8.0, 0.125], dtype=torch.float64)  # exact in binary
    q, s = quantise_weight(w)
    qb, sb = quantise_weight(w * b.view(-1, 1, 1, 1))
    assert torch.equal(qb, q * torch.sign(b).view(-1, 1, 1, 1).to(torch.int8))
    assert torch.equal(sb, s * b.abs())


def test_fake_quantise_forward_is_q_s_and_gradient_passes_straight_through():
    w = torch.randn(6, 5, requires_grad=True)
    y = fake_quantise(w)
    q, s = quantise_weight(w)
    assert torch.equal(y.detach(), q.float() * s.view(-1, 1))
    (y * torch.arange(30.0).view(6, 5)).sum().backward()
    assert torch.equal(w.grad, torch.arange(30.0).view(6, 5))


@pytest.mark.parametrize("name", list_models())
def test_spike_reading_layers_are_every_layer_but_those_reading_analog_values(name):
    model = create_model(name, timesteps=2)
    layers = spike_reading_layers(model)
    analog = [n for n in quantisable_modules(model) if n not in layers]
    assert analog and analog[0].startswith("stem")  # the stem reads the image
    for n in analog[1:]:  # anything else analog sits behind an average pool (a pooled head's classifier)
        assert not n.startswith("stem")
    assert len(layers) >= 2


def test_spike_reading_layers_do_not_depend_on_the_weights():
    """A network whose deep layers never fire still reads spikes there (zeros are spikes too)."""
    model = create_model("smallnet", genes=8, timesteps=2)
    before = spike_reading_layers(model)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert spike_reading_layers(model) == before


def _hooked(model, layers):
    seen = {}
    mods = quantisable_modules(model)
    for n in layers:
        mods[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, (a[0], o)))
    return mods, seen


def test_training_forward_uses_q_s_the_codes_int8_weight_returns():
    model, _ = small_model("smallnet", 8)  # BatchNorms calibrated so that every layer fires
    layers = spike_reading_layers(model)
    attach_quantisers(model, layers)
    assert quantised_layers(model) == layers
    mods, seen = _hooked(model, layers)
    model.train()
    with torch.no_grad():
        model(torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    for n in layers:
        q, s = int8_weight(mods[n])
        inp, out = seen[n]
        m = mods[n]
        if out.dim() == 4:
            expect = torch.nn.functional.conv2d(inp, q.float() * s.view(-1, 1, 1, 1), None, m.stride, m.padding)
        else:
            expect = torch.nn.functional.linear(inp, q.float() * s.view(-1, 1), m.bias)
        assert torch.equal(out, expect), n


def test_eval_forward_is_the_exact_integer_sum_times_the_folded_scale_plus_bias():
    """In eval a quantised layer computes float32(sum q x) * scale + bias with its BatchNorm folded in (what the
    int8 export computes), checked against a float64 numpy computation of the same definition."""
    model, _ = small_model("smallnet", 8)
    layers = spike_reading_layers(model)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32 = model(x)
    attach_quantisers(model, layers)
    mods, seen = _hooked(model, layers)
    model.eval()
    with torch.no_grad():
        int8 = model(x)
    assert not torch.equal(fp32, int8)
    batchnorms = {n: b for n, b in ((n, getattr(mods[n].quantiser, "batchnorm")) for n in layers)}
    assert sum(b is not None for b in batchnorms.values()) >= 3
    for n in layers:
        q, s = int8_weight(mods[n])
        inp, out = seen[n]
        assert inp.sum() > 0 and set(inp.unique().tolist()) <= {0.0, 1.0}, n
        m = mods[n]
        op = (lambda a, w: torch.nn.functional.conv2d(a, w, None, m.stride, m.padding)) if out.dim() == 4 else (
            lambda a, w: torch.nn.functional.linear(a, w))
        sums = op(inp.double(), q.double()).numpy()  # integers, exact in float64
        bn = batchnorms[n]
        gamma, beta, mean, var = (np.ones(len(s)), np.zeros(len(s)), np.zeros(len(s)), np.ones(len(s)) - 1e-5) \
            if bn is None else (t.detach().double().numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
        eps = 1e-5 if bn is None else bn.eps
        bn_scale = gamma / np.sqrt(var + eps)
        bias = -mean * bn_scale + beta
        if getattr(m, "bias", None) is not None:
            bias = bias + bn_scale * m.bias.detach().double().numpy()
        scale32 = (s.double().numpy() * bn_scale).astype(np.float32)
        shape = (1, -1) + (1,) * (sums.ndim - 2)
        expect = sums.astype(np.float32) * scale32.reshape(shape) + bias.astype(np.float32).reshape(shape)
        assert np.array_equal(out.numpy(), expect), n
        if bn is not None:  # the BatchNorm after it passes its input through in eval
            assert torch.equal(bn(out), out)


def test_a_quantised_stem_reads_centred_8bit_codes():
    model, _ = small_model("smallnet", 8)
    stem = stem_layer(model)
    attach_quantisers(model, [stem] + spike_reading_layers(model))
    codes = model.input_codes
    assert isinstance(codes, InputCodes)
    from gee_deploy.walk import describe  # PyTorch's own spec says which layers run int8 (energy reads it)
    precision = {l.name: l.precision for l in describe(model).layers}
    assert precision == {n: "int8" if n in quantised_layers(model) else "fp32" for n in precision}
    assert precision[stem] == "int8"
    x = torch.tensor([0.0, 1 / 255, 0.5, 128 / 255, 1.0, 7.0, -3.0]).view(1, 1, 1, 7)
    assert codes(x).flatten().tolist() == [-128.0, -127.0, 0.0, 0.0, 127.0, 127.0, -128.0]  # z = round(127.5) = 128
    mods, seen = _hooked(model, [stem])
    model.eval()
    with torch.no_grad():
        model(torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3)))
    inp, _ = seen[stem]
    assert torch.equal(inp, torch.round(inp)) and inp.abs().max() <= 255
    q, s = int8_weight(mods[stem])  # codes of W / (255 std)
    w = mods[stem].quantisation_source()
    assert codes.weight_scale.tolist() == [np.float32(1 / 127.5)]  # 1 / (255 std), std 0.5
    q_plain, _ = quantise_weight(w * codes.weight_scale.view(1, -1, 1, 1))
    assert torch.equal(q, q_plain)


def test_a_stem_whose_sums_could_leave_float32s_integers_is_refused():
    model = create_model("smallnet", genes=8, timesteps=1, in_channels=40)  # 40 x 4 x 4 taps x 255 x 127 > 2^24
    with pytest.raises(ConfigError, match="exceed float32's exact integers"):
        attach_quantisers(model, [stem_layer(model)])
    assert model.input_codes is None


def test_plain_layers_are_refused_with_one_clear_message():
    model = create_model("cifarnet", genes=None, timesteps=2)
    with pytest.raises(ConfigError, match="supports genetic layers"):
        attach_quantisers(model, spike_reading_layers(model))
    with pytest.raises(ConfigError, match="not a weight layer"):
        attach_quantisers(model, ["body.nope"])


@pytest.mark.slow
def test_quantize_command_writes_a_checkpoint_that_rebuilds_its_int8_model(tiny_checkpoint, tmp_path):
    out = tmp_path / "q.pt"
    r = CliRunner().invoke(cli, ["quantize", str(tiny_checkpoint), "--out", str(out), "--epochs", "0.5",
                                 "--test-limit", "64", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "int8 fine-tuned" in r.output and out.is_file()
    model = load_model(out)
    assert tuple(quantised_layers(model)) == model.checkpoint.quantisation.layers
    assert model.checkpoint.metrics["ptq_test_acc"] >= 0.0
    assert model.checkpoint.quantisation.layers[0] == stem_layer(model)  # the stem reads 8-bit input codes
    assert isinstance(model.input_codes, InputCodes)
    onnx_path = tmp_path / "q.onnx"
    r = CliRunner().invoke(cli, ["export", str(out), "--out", str(onnx_path), "--variant", "int8", "--samples", "16"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["check", str(out), str(onnx_path), "--limit", "32", "--min-speedup", "0"])
    assert r.exit_code == 0 and "max logit diff 0.00e+00" in r.output, r.output
    layers = len(model.checkpoint.quantisation.layers)
    assert f"ort-cpu (f32, {layers} int8 layers)" in r.output  # float ops f32, the int8 layers int8
    nir = CliRunner().invoke(cli, ["export", str(out), "--format", "nir", "--out", str(tmp_path / "q.nir")])
    assert nir.exit_code == 2 and nir.stderr.startswith("error: NIR has no rounding primitive"), nir.output
    assert len(nir.stderr.strip().splitlines()) == 1 and not (tmp_path / "q.nir").exists()
    again = CliRunner().invoke(cli, ["quantize", str(out), "--out", str(tmp_path / "q2.pt")])
    assert again.exit_code == 2 and again.stderr.startswith("error: ") and "already int8 fine-tuned" in again.stderr
    assert not (tmp_path / "q2.pt").exists()


@pytest.mark.parametrize("option,value", [("--batch-size", "0"), ("--train-limit", "-1"), ("--test-limit", "-1")])
def test_quantize_refuses_counts_out_of_range_before_any_work(tiny_checkpoint, tmp_path, option, value):
    out = tmp_path / "q.pt"
    r = CliRunner().invoke(cli, ["quantize", str(tiny_checkpoint), "--out", str(out), option, value])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {option} must be an integer") and not out.exists()


@pytest.fixture(scope="module")
def augmented_checkpoint(tmp_path_factory):
    """A tiny checkpoint of a dataset with augmentation (fashion-mnist-mini: random crops and flips)."""
    from conftest import tiny_recipe
    from gee_deploy.training import train

    out = tmp_path_factory.mktemp("augmented_run")
    train(tiny_recipe(data={"name": "fashion-mnist-mini", "train_limit": 128, "test_limit": 32}), out, progress=False)
    return out / "best.pt"


def test_quantize_is_repeatable_bit_for_bit(augmented_checkpoint, tmp_path):
    """The same command twice: the same fine-tuned parameters and accuracies (its data order and augmentation
    draws seeded, whatever the global RNG held before: a fresh process starts it anywhere)."""
    from gee_deploy.training.quantize import quantize

    runs = []
    for i in range(2):
        torch.manual_seed(1234 + i)
        out = tmp_path / f"q{i}.pt"
        quantize(augmented_checkpoint, out, epochs=2.0, train_limit=128, test_limit=32, threads=1, progress=False)
        runs.append(load_checkpoint(out))
    a, b = runs
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.metrics["test_acc"] == b.metrics["test_acc"]


def test_quantize_summary_says_when_the_fine_tune_lost_to_post_training_int8_and_when_a_time_is_estimated():
    from gee_deploy.training.quantize import QuantizeReport

    report = QuantizeReport("q.pt", ["a"], 0.79, 0.787, 0.783, 0.05, 0.05, 0.5, 31, 3.0, 5.0, 703.0, True)
    text = report.summary()
    assert "note: the fine-tune ended below the int8 model without it (0.7830 < 0.7870)" in text
    assert "703 s, estimated as its epochs x its last epoch's time" in text
    better = QuantizeReport("q.pt", ["a"], 0.79, 0.78, 0.79, 0.05, 0.05, 0.5, 31, 3.0, 5.0, 192.0, False).summary()
    assert "note:" not in better and "of the original training's 192 s)" in better
