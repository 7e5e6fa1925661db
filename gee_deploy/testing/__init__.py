"""What the test suite and the benchmarks share, as ``numpy.testing`` and ``torch.testing`` serve theirs.

Shipped with the package so that ``benchmarks/`` (which measures at full size what tests check in miniature)
imports it like any user would, without putting ``tests/`` on ``sys.path``:

* :func:`lively`: an untrained zoo model whose every layer fires (parity of random nets is otherwise trivial).
* :mod:`.nir_frameworks`: SpikingJelly and snntorch reference models for the NIR import (imports those
  frameworks inside its functions; snntorch is in the ``test`` extra).
"""

from __future__ import annotations

from torch import nn

__all__ = ["lively"]


def lively(model: nn.Module, images) -> nn.Module:
    """Random BatchNorm affines, then running stats calibrated on ``images`` [N, C, H, W], so every layer fires;
    returns ``model`` in eval mode.

    Untrained nets at random init go silent after a layer or two, which would make parity trivial. A
    train-mode pass with momentum 1 sets running stats to the batch stats of the final affines.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for bn in bns:
        bn.weight.data = torch.rand(bn.num_features, generator=gen) * 0.7 + 0.8
        bn.bias.data = torch.rand(bn.num_features, generator=gen) * 0.6 + 0.6
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()
