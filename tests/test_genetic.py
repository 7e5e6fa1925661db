"""The genetic encoding (eq. 1-3): generated weights, parameter counts, sharing, scale."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gee_deploy import create_model
from gee_deploy.genetic import INITS, GeneticConv2d, GeneticLinear, Genome, eq2_parameters, kaiming_std, weight_scale


def _layer(c_in=5, c_out=7, k=3, g=4, seed=0):
    torch.manual_seed(seed)
    e_in = nn.Parameter(torch.randn(c_in, k * k, g))
    e_out = nn.Parameter(torch.randn(c_out, k * k, g))
    gm = nn.Parameter(torch.randn(g, g))
    return GeneticConv2d(e_in, e_out, gm, k, padding=k // 2)


def test_weight_is_the_per_tap_product():
    layer = _layer()
    e_in, e_out, gm = layer.e_in.detach(), layer.e_out.detach(), layer.gene_matrix.detach()
    expected = torch.empty(7, 5, 9)
    for o in range(7):
        for i in range(5):
            for p in range(9):
                expected[o, i, p] = e_in[i, p] @ gm @ e_out[o, p]
    expected = (expected * layer.scale).reshape(7, 5, 3, 3)
    torch.testing.assert_close(layer.weight, expected, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(layer(x), torch.nn.functional.conv2d(x, expected, padding=1), rtol=1e-4, atol=1e-5)


def test_linear_uses_the_centre_tap_of_a_3x3_population():
    torch.manual_seed(0)
    e_in, e_out, gm = (nn.Parameter(torch.randn(6, 9, 3)), nn.Parameter(torch.randn(4, 1, 3)),
                       nn.Parameter(torch.randn(3, 3)))
    layer = GeneticLinear(e_in, e_out, gm)
    expected = layer.scale * e_out[:, 0].detach() @ gm.detach().T @ e_in[:, 4].detach().T
    torch.testing.assert_close(layer.weight, expected)


@pytest.mark.parametrize("c_in,c_out,k,g", [(5, 7, 3, 4), (64, 128, 3, 16), (32, 10, 1, 8)])
def test_layer_parameters_follow_eq2(c_in, c_out, k, g):
    layer = _layer(c_in, c_out, k, g)
    unique = sum(p.numel() for p in layer.parameters())
    assert unique == layer.own_parameters() == eq2_parameters(c_in, c_out, k, g) == g * (c_in * k * k + g + c_out * k * k)


def test_scale_gives_kaiming_std_for_unit_variance_factors():
    layer = _layer(c_in=128, c_out=128, k=3, g=64, seed=1)
    std = layer.weight.std().item()
    assert std == pytest.approx(kaiming_std(128 * 9), rel=0.15)


@pytest.mark.parametrize("genes", [8, 32])
def test_paper_init_gives_w_std_g_and_kaiming_init_the_kaiming_std(genes):
    """init = "paper" is eq. 1 without a constant: W = E_in G E_out^T with unit normals has std g at every
    fan-in; init = "kaiming" scales the same product down to sqrt(2 / fan_in)."""
    stds = {}
    for init in INITS:
        torch.manual_seed(3)
        model = create_model("smallnet", genes=genes, timesteps=1, init=init)
        stds[init] = [(m.weight.std().item(), m.e_in.shape[0] * m.kernel_size ** 2)
                      for m in model.modules() if isinstance(m, GeneticConv2d)]
    for (paper, fan_in), (kaiming, _) in zip(stds["paper"], stds["kaiming"]):
        assert paper == pytest.approx(genes, rel=0.25)
        assert kaiming == pytest.approx(kaiming_std(fan_in), rel=0.25)
        assert paper / kaiming == pytest.approx(genes / kaiming_std(fan_in), rel=0.35)
    assert weight_scale("paper", 288, genes) == 1.0
    assert weight_scale("kaiming", 288, genes) == pytest.approx(math.sqrt(2 / 288) / genes)


def test_paper_init_draws_unclipped_encodings():
    torch.manual_seed(0)
    paper, kaiming = Genome(16, "paper"), Genome(16, "kaiming")
    for genome in (paper, kaiming):
        genome.population("wide", 4096, 9)
    assert paper.encodings["wide"].abs().max() > 3.5  # P(|z| > 3.5) ~ 5e-4 over 589,824 draws
    assert kaiming.encodings["wide"].abs().max() <= 3.0


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init must be one of kaiming, paper"):
        create_model("smallnet", genes=4, init="xavier")
    with pytest.raises(ValueError, match="init must be one of"):
        weight_scale("xavier", 9, 4)


def test_init_survives_a_checkpoint(tmp_path):
    """scale is a non-persistent buffer: the model a checkpoint rebuilds must carry its init (model_args)."""
    from gee_deploy.checkpoint import Checkpoint, load_model, save_checkpoint

    model = create_model("smallnet", genes=4, timesteps=1, init="paper")
    assert model.model_args["init"] == "paper"
    save_checkpoint(tmp_path / "m.pt", Checkpoint(model_name=model.model_name, model_args=model.model_args,
                                                  state_dict=model.state_dict()))
    rebuilt = load_model(tmp_path / "m.pt")
    convs = [(m, r) for m, r in zip(model.modules(), rebuilt.modules()) if isinstance(m, GeneticConv2d)]
    assert convs and all(r.scale.item() == 1.0 for _, r in convs)
    for m, r in convs:
        torch.testing.assert_close(r.weight, m.weight)


def test_beta1_and_g_magnitude_still_change_w():
    """No renormalisation by sampled values: doubling E_in doubles W, tripling G triples it."""
    layer = _layer()
    w = layer.weight.detach().clone()
    with torch.no_grad():
        layer.e_in_full.mul_(2)
        layer.gene_matrix.mul_(3)
    torch.testing.assert_close(layer.weight.detach(), 6 * w)


def test_consecutive_layers_share_their_population_encoding():
    model = create_model("smallnet", genes=4, timesteps=2)
    convs = [m for m in model.modules() if isinstance(m, GeneticConv2d)]
    for a, b in zip(convs, convs[1:]):
        assert a.e_out_full is b.e_in_full  # eq. 3: E_{i+1} is layer i's output and layer i+1's input
    assert all(c.gene_matrix is model.genome.gene_matrix for c in convs)  # one global G


def test_residual_shortcut_reads_centre_taps_and_writes_the_block_population():
    model = create_model("resnet18", genes=4, timesteps=1, num_classes=3)
    block = model.body[3]  # body = [LIF, s0b0, s0b1, s1b0, ...]: s1b0 downsamples with a 1x1 shortcut
    shortcut = block.shortcut[0]
    assert shortcut.kernel_size == 1
    assert shortcut.e_out_full is block.conv2[0].e_out_full
    torch.testing.assert_close(shortcut.e_in, shortcut.e_in_full[:, 4:5])
    identity_block = model.body[1]
    assert isinstance(identity_block.shortcut, nn.Identity)
    assert identity_block.conv2[0].e_out_full is identity_block.conv1[0].e_in_full  # residual add: same population


def test_a_kernel_size_foreign_to_its_population_gets_a_private_encoding():
    model = create_model("resnet34", genes=4, timesteps=1, num_classes=3, image_size=32)
    stem = model.stem[0]
    assert stem.kernel_size == 7 and stem.e_out_full.shape[1] == 49
    assert "stem_k7" in model.genome.encodings and stem.e_out_full is model.genome.encodings["stem_k7"]
    assert stem.e_in_full is model.genome.encodings["input"] and stem.e_in_full.shape[1] == 49


def test_weight_is_generated_once_per_forward_for_all_timesteps(monkeypatch):
    model = create_model("smallnet", genes=4, timesteps=4)
    calls = []
    original = GeneticConv2d.generate

    def counting(self):
        calls.append(self)
        return original(self)

    monkeypatch.setattr(GeneticConv2d, "generate", counting)
    model(torch.rand(3, 1, 28, 28))
    convs = [m for m in model.modules() if isinstance(m, GeneticConv2d)]
    assert len(calls) == len(convs)


def test_gradients_reach_every_encoding_and_g():
    model = create_model("smallnet", genes=4, timesteps=2).train()
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert model.genome.gene_matrix.grad is not None and model.genome.gene_matrix.grad.abs().sum() > 0
    for name, e in model.genome.encodings.items():
        assert e.grad is not None and e.grad.abs().sum() > 0, name


def test_genome_rejects_bad_gene_count_and_duplicate_population():
    with pytest.raises(ValueError):
        Genome(0)
    g = Genome(3)
    g.population("a", 4, 9)
    with pytest.raises(ValueError):
        g.population("a", 4, 9)
    assert math.isclose(kaiming_std(50), math.sqrt(2 / 50))
