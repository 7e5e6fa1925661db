"""LIF: the exportable eval path equals spikingjelly's training path; spike recording."""
from __future__ import annotations

import pytest
import torch

from gee_deploy.neurons import LIF, SeqToBatch, SpikeRecorder, lif_reference


def test_reference_recurrence_by_hand():
    x = torch.tensor([[1.5], [1.5], [0.2], [3.0]])  # [T=4, N=1]
    # H1 = 0.75 (no spike) ; H2 = 0.75 + (1.5 - 0.75)/2 = 1.125 -> spike, V=0 ; H3 = 0.1 ; H4 = 0.1 + 2.9/2 = 1.55 -> spike
    assert lif_reference(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_training_path_matches_eval_path():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 3, 5, 5) * 2
    lif = LIF()
    train_spikes = lif.train()(x.clone().requires_grad_())
    eval_spikes = lif.eval()(x)
    assert torch.equal(train_spikes.detach(), eval_spikes)
    assert 0 < eval_spikes.mean() < 1


def test_surrogate_gradient_flows():
    x = (torch.randn(3, 4, 10) * 2).requires_grad_()
    LIF().train()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_wrong_shape_names_it():
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        LIF()(torch.zeros(4, 5))


def test_recorder_counts_spikes_per_sample():
    net = torch.nn.Sequential(LIF(), SeqToBatch(torch.nn.Identity()), LIF()).eval()
    x = torch.randn(3, 2, 6) * 3
    with SpikeRecorder(net) as rec:
        out = net(x)
    first = lif_reference(x)
    assert rec.stacked().shape == (2, 2)
    torch.testing.assert_close(rec.stacked()[:, 0], first.sum(dim=(0, 2)))
    torch.testing.assert_close(rec.stacked()[:, 1], out.sum(dim=(0, 2)))
    assert rec.sizes == [6, 6]
    assert all(not layer._forward_hooks for layer in rec.layers)  # hooks removed after the block
    assert not any(k.startswith("_rec") for layer in rec.layers for k in vars(layer))  # no state injected


def test_recorder_counts_in_float32_under_half_precision():
    """bf16 holds integers exactly only up to 256: counts of half-precision spikes must not be summed in bf16."""
    lif = LIF().eval()
    x = torch.full((4, 2, 1000), 3.0, dtype=torch.bfloat16)  # every neuron fires at every step
    with SpikeRecorder(torch.nn.Sequential(lif)) as rec:
        lif(x)
    assert rec.counts[0].dtype == torch.float32 and rec.counts[0].tolist() == [4000.0, 4000.0]
