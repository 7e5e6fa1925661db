"""Int8 weight quantisation: codes, straight-through gradient, which layers, checkpoints, the quantize command."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from gee_deploy.checkpoint import load_model
from gee_deploy.cli import cli
from gee_deploy.errors import ConfigError
from gee_deploy.quantisation import (QMAX, attach_quantisers, fake_quantise, int8_weight, quantisable_modules,
                                     quantise_weight, quantised_layers, spike_reading_layers)
from gee_deploy.zoo import create_model, list_models
from test_export import small_model


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


def test_forward_uses_the_codes_int8_weight_returns():
    model, _ = small_model("smallnet", 8)  # BatchNorms calibrated so that every layer fires
    layers = spike_reading_layers(model)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32 = model(x)
    attach_quantisers(model, layers)
    assert quantised_layers(model) == layers
    seen = {}
    mods = quantisable_modules(model)
    for n in layers:
        mods[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, (a[0], o)))
    with torch.no_grad():
        int8 = model(x)
    assert not torch.equal(fp32, int8)
    for n in layers:
        q, s = int8_weight(mods[n])
        inp, out = seen[n]
        assert inp.sum() > 0, n
        m = mods[n]
        if out.dim() == 4:
            expect = torch.nn.functional.conv2d(inp, q.float() * s.view(-1, 1, 1, 1), None, m.stride, m.padding)
        else:
            expect = torch.nn.functional.linear(inp, q.float() * s.view(-1, 1), m.bias)
        assert torch.equal(out, expect), n


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
    again = CliRunner().invoke(cli, ["quantize", str(out), "--out", str(tmp_path / "q2.pt")])
    assert again.exit_code == 2 and again.stderr.startswith("error: ") and "already int8 fine-tuned" in again.stderr
    assert not (tmp_path / "q2.pt").exists()


@pytest.mark.parametrize("option,value", [("--batch-size", "0"), ("--train-limit", "-1"), ("--test-limit", "-1")])
def test_quantize_refuses_counts_out_of_range_before_any_work(tiny_checkpoint, tmp_path, option, value):
    out = tmp_path / "q.pt"
    r = CliRunner().invoke(cli, ["quantize", str(tiny_checkpoint), "--out", str(out), option, value])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {option} must be an integer") and not out.exists()
