"""NeuroBench (neurobench 2.3.0) itself on our models, for tests/test_neurobench.py and benchmarks/neurobench_parity.py.

NeuroBench measures a torch module through ``TorchModel``: its static metrics read the module's parameters and its
Linear / Conv layers; its workload metrics hook the Linear / Conv layers and the registered activation modules
(ours: :class:`gee_deploy.neurons.LIF`; SpikingJelly's ``neuron.LIFNode``). Two things keep it from seeing a zoo
model's weights as they run, so :func:`dense_equivalent` writes them as plain layers first:

* a genetic layer computes W = s E_in G E_out^T itself (not an ``nn.Conv2d`` / ``nn.Linear``: NeuroBench counts
  no weights and no ops for it), and
* a conv + 2x2 average pool runs as one fused (k+1) x (k+1) stride-2 conv (:class:`gee_deploy.zoo.base.ConvPool`),
  whose inner 3x3 conv is never called.

The T-step loop: our LIF and SpikingJelly's multi-step nodes run all T steps in one call on [T, N, ...]; the
image is fed at every step (direct encoding) and, as in the deployed graph, the layers before the first neuron
run once on it (:class:`StemOnce`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gee_deploy.genetic import GeneticConv2d, GeneticLinear
from gee_deploy.zoo.base import ConvPool

STATIC = ("Footprint", "ConnectionSparsity", "ParameterCount")
WORKLOAD = ("ClassificationAccuracy", "ActivationSparsity", "SynapticOperations", "MembraneUpdates")


def dense_equivalent(model: nn.Module) -> nn.Module:
    """A copy of zoo model ``model`` whose weight layers are ``nn.Conv2d`` / ``nn.Linear`` holding the weights that
    run (a genetic layer's W, a ConvPool's fused kernel); everything else is the same modules."""
    twin = copy.deepcopy(model).eval()
    pools = {name for name, m in twin.named_modules() if isinstance(m, ConvPool)}
    for name, m in list(twin.named_modules()):
        new: nn.Module
        if isinstance(m, ConvPool):
            conv = m.conv
            bias = getattr(conv, "bias", None)
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, m.kernel_size, m.stride, m.padding, bias=bias is not None
            )
            fused.weight.data = m.running_weight().detach().clone()
            if isinstance(bias, torch.Tensor) and fused.bias is not None:  # pooled conv + b: b averages to b
                fused.bias.data = bias.detach().clone()
            new = fused
        elif isinstance(m, GeneticConv2d) and name.rpartition(".")[0] not in pools:
            dense_conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=False)
            dense_conv.weight.data = m.weight.detach().clone()
            new = dense_conv
        elif isinstance(m, GeneticLinear):
            linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            linear.weight.data = m.weight.detach().clone()
            if m.bias is not None and linear.bias is not None:  # both or neither (bias= above)
                linear.bias.data = m.bias.detach().clone()
            new = linear
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, new)
    return twin


class StemOnce(nn.Module):
    """A multi-step SpikingJelly ``nn.Sequential`` run as the deployed graph runs it: its layers before the first
    neuron once on the image [N, C, H, W] (as a 1-step sequence), the result repeated over T, the rest multi-step;
    returns the output averaged over T [N, classes]."""

    def __init__(self, net: nn.Sequential, timesteps: int, neuron_type: type):
        super().__init__()
        first = next(i for i, m in enumerate(net) if isinstance(m, neuron_type))
        self.stem, self.body, self.timesteps = net[:first], net[first:], timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self.body)
        stem = self.stem(x.unsqueeze(0))  # [1, N, ...]
        return self.body(stem.expand(self.timesteps, *stem.shape[1:])).mean(0)


def run_neurobench(
    net: nn.Module, images: np.ndarray, labels: np.ndarray, activation: type, batch_size: int = 1
) -> dict:
    """NeuroBench's ``Benchmark.run`` on ``net`` over ``images`` with ``activation`` registered: the results dict
    (static metrics, then workload metrics, by class name), and ``Benchmark.save_benchmark_results``' JSON
    layout. ``batch_size`` 1 keeps every float32 output sum NeuroBench's op counts take exact (below 2^24)."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (
        ActivationSparsity,
        ClassificationAccuracy,
        MembraneUpdates,
        SynapticOperations,
    )
    from neurobench.models import TorchModel

    model = TorchModel(net)
    model.add_activation_module(activation)
    loader = DataLoader(TensorDataset(torch.from_numpy(images), torch.from_numpy(labels).long()), batch_size=batch_size)
    bench = Benchmark(
        model,
        loader,
        [],
        [lambda preds: preds.argmax(-1)],
        [
            [Footprint, ConnectionSparsity, ParameterCount],
            [ClassificationAccuracy, ActivationSparsity, SynapticOperations, MembraneUpdates],
        ],
    )
    with torch.no_grad():
        results = bench.run(quiet=True)
    bench.workload_metric_manager.cleanup_hooks(model)
    return results
