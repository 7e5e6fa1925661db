"""SpikingJelly and snntorch models for the NIR import's interop tests (tests/test_nir_import.py) and
``benchmarks/nir_import_parity.py``.

Each framework's model is built from that framework's own layers, optionally trained a little, written with the
framework's own NIR exporter, and run by the framework itself for T steps with the image repeated at every step
(direct encoding): the reference the converted ONNX graph is compared with.

* SpikingJelly 2.0: multi-step ``layer.Conv2d`` / ``neuron.LIFNode`` (tau = 2, v_th = 1, hard reset to 0, which
  fires on v >= v_th) / ``layer.AvgPool2d`` / ``layer.Flatten`` / ``layer.Linear``; exporter
  ``spikingjelly.activation_based.nir_exchange.export_to_nir`` with an example input [T, N, C, H, W].
* snntorch 1.0: ``torch.nn`` layers and ``snn.Leaky`` with reset to zero (NIR's LIF resets to v_reset; snntorch's
  default reset by subtraction has no NIR form and its exporter writes v_reset = 0 anyway) and per-neuron beta and
  threshold (snntorch 1.0's exporter with scalar ones writes shapeless LIF nodes that fail its own type
  inference); exporter ``snntorch.export_nir.export_to_nir`` with ``ignore_dims=[0]`` (the batch).
"""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

FRAMEWORKS = ("spikingjelly", "snntorch")
CONV, HIDDEN = (8, 16), 32  # channels of the two convs, width of the hidden spiking layer
GAIN = 4.0  # on He init: every layer of the untrained nets fires on Fashion-MNIST (10-30% of neurons per step)
BETA = 0.9  # snntorch's membrane decay per step (its tutorials' value)


def build(framework: str, seed: int = 0, pool: str = "avg") -> nn.Module:
    """Conv -> LIF -> pool -> Conv -> LIF -> pool -> Flatten -> Linear -> LIF -> Linear, for 1 x 28 x 28 inputs.

    ``pool``: "avg" (AvgPool2d) or, SpikingJelly only, "sum" (written as AvgPool2d by its exporter, which maps no
    sum pooling; kept for symmetry).
    """
    torch.manual_seed(seed)
    c1, c2 = CONV
    if framework == "spikingjelly":
        from spikingjelly.activation_based import functional, layer, neuron

        lif = lambda: neuron.LIFNode(tau=2.0, detach_reset=True)  # noqa: E731
        net = nn.Sequential(
            layer.Conv2d(1, c1, 3, padding=1),
            lif(),
            layer.AvgPool2d(2),
            layer.Conv2d(c1, c2, 3, padding=1),
            lif(),
            layer.AvgPool2d(2),
            layer.Flatten(),
            layer.Linear(c2 * 7 * 7, HIDDEN),
            lif(),
            layer.Linear(HIDDEN, 10),
        )
        functional.set_step_mode(net, "m")
        return _kaiming(net)
    if framework == "snntorch":
        import snntorch as snn

        def leaky(*shape):
            return snn.Leaky(
                beta=torch.full(shape, BETA), threshold=torch.ones(shape), init_hidden=True, reset_mechanism="zero"
            )

        return _kaiming(
            nn.Sequential(
                nn.Conv2d(1, c1, 3, padding=1),
                leaky(c1, 28, 28),
                nn.AvgPool2d(2),
                nn.Conv2d(c1, c2, 3, padding=1),
                leaky(c2, 14, 14),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(c2 * 7 * 7, HIDDEN),
                leaky(HIDDEN),
                nn.Linear(HIDDEN, 10),
            )
        )
    raise ValueError(f"unknown framework {framework!r}")


def _kaiming(net: nn.Module) -> nn.Module:
    """He-normal weights (He et al. 2015) times :data:`GAIN`, so every layer of an untrained net fires (torch's
    default init leaves a LIF with v_th = 1 silent on [0, 1] images, and pooling thins the spikes further)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            m.weight.data *= GAIN
    return net


def _neurons(framework: str, net: nn.Module) -> list[nn.Module]:
    if framework == "spikingjelly":
        from spikingjelly.activation_based import neuron

        return [m for m in net.modules() if isinstance(m, neuron.BaseNode)]
    import snntorch as snn

    return [m for m in net.modules() if isinstance(m, snn.Leaky)]


def forward(
    framework: str, net: nn.Module, x: torch.Tensor, timesteps: int, counts: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """The framework's own run of ``net`` on ``x`` [N, 1, 28, 28] for ``timesteps`` steps: the last layer's output
    averaged over the steps [N, 10]. ``counts``, when given, receives each spiking layer's spikes per sample."""
    neurons = _neurons(framework, net)
    totals = [torch.zeros(len(x)) for _ in neurons]

    def recorder(i):
        def hook(module, args, out):
            spikes = (out[0] if isinstance(out, tuple) else out).detach()
            if framework == "spikingjelly":  # multi-step: [T, N, ...]
                spikes = spikes.transpose(0, 1)
            totals[i] += spikes.flatten(1).sum(1)

        return hook

    hooks = [m.register_forward_hook(recorder(i)) for i, m in enumerate(neurons)] if counts is not None else []
    try:
        if framework == "spikingjelly":
            from spikingjelly.activation_based import functional

            functional.reset_net(net)
            y = net(x.unsqueeze(0).expand(timesteps, *x.shape)).mean(0)  # [T, N, ...] in, [T, N, 10] out
        else:
            from snntorch import utils

            utils.reset(net)
            y = sum(net(x) for _ in range(timesteps)) / timesteps
    finally:
        for h in hooks:
            h.remove()
    if counts is not None:
        counts.extend(totals)
    return y


def train(
    framework: str,
    net: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    timesteps: int,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """``steps`` Adam steps of surrogate-gradient training on ``images`` [N, 1, 28, 28] in [0, 1]; eval mode after."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen).numpy()
        loss = nn.functional.cross_entropy(
            forward(framework, net, torch.from_numpy(images[idx]), timesteps), torch.from_numpy(labels[idx]).long()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def run(
    framework: str, net: nn.Module, images: np.ndarray, timesteps: int, batch_size: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """Logits [S, 10] and spike counts [S, L] of the framework's own run on ``images``."""
    logits, spikes = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            counts: list[torch.Tensor] = []
            logits.append(
                forward(framework, net, torch.from_numpy(images[i : i + batch_size]), timesteps, counts).numpy()
            )
            spikes.append(torch.stack(counts, 1).numpy())
    return np.concatenate(logits), np.concatenate(spikes)


def export(framework: str, net: nn.Module, path: Path) -> Path:
    """Write ``net`` to ``path`` with the framework's own NIR exporter."""
    if framework == "spikingjelly":
        from spikingjelly.activation_based.nir_exchange import export_to_nir

        export_to_nir(net, torch.rand(2, 1, 1, 28, 28), save_path=path)  # example input [T, N, C, H, W]
    else:
        from snntorch.export_nir import export_to_nir

        nir.write(path, export_to_nir(net, torch.rand(1, 1, 28, 28), ignore_dims=[0]))
    return path


# the flags that make `gee-deploy export` compute what each framework computes (docs/nir.md)
FLAGS = {"spikingjelly": ["--dt", "1e-4", "--threshold-rule", "ge"], "snntorch": ["--dt", "1e-4"]}
