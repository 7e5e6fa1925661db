"""Energy by the paper's eq. 17, from MACs per layer and the firing rates a runtime measured.

.. math:: E = E_{MAC} \\cdot FL^{1}_{conv} + E_{AC} \\cdot T \\cdot \\sum_l fr_l \\cdot FL_l

Layers that read analog values (the stem, computed once for all T steps) cost E_MAC = 4.6 pJ per MAC;
layers that read binary spikes cost E_AC = 0.9 pJ per synaptic operation, SOPs_l = fr_l T MACs_l, where
fr_l is the firing rate (spikes / (neurons x T)) of the LIF layer feeding layer l. In a factorised layer
only the first op reads spikes; the ops after it work on analog values and count as MACs (DESIGN section 8).

The layer table (``name, kind, macs, calls, input_is_spikes, spiking_input_layer, spike_macs``) comes from
the ONNX graph's ``gee.layers`` metadata, or, for the PyTorch reference, from :func:`layer_table`, which
traces one forward. ``tests/test_serving.py`` checks both terms against spikingjelly's MAC and SynOp counters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..genetic import GeneticConv2d, GeneticLinear
from ..neurons import SPIKE_PRESERVING
from ..zoo.base import ConvPool

__all__ = ["E_MAC_PJ", "E_AC_PJ", "LayerEnergy", "layer_table", "firing_rates", "energy_per_layer", "total_energy"]

E_MAC_PJ = 4.6  # 32-bit float multiply-accumulate, 45 nm (Horowitz 2014), as in the paper
E_AC_PJ = 0.9  # 32-bit float accumulate


@dataclass(frozen=True)
class LayerEnergy:
    """One weight layer's share of eq. 17, per sample."""

    name: str
    kind: str
    macs: int  # per sample per call of the layer
    calls: int  # calls per sample: 1 for the stem (computed once), T for body layers
    op: str  # "MAC" (reads analog values), "AC" (reads spikes), "AC+MAC" (factorised: only its first op reads spikes)
    spiking_input_layer: str | None  # the LIF feeding it (layers reading spikes)
    firing_rate: float | None  # of that LIF
    spike_macs: int  # MACs per call of the op that reads spikes (0 for analog layers)
    sops: float  # synaptic operations per sample: fr T spike_macs
    analog_macs: int  # MACs per sample on analog values: macs x calls, less the ops that read spikes
    energy_pj: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of each weight layer as it runs: a ConvPool stands for its conv (and keeps its name)."""
    kinds = (nn.Conv2d, nn.Linear, GeneticConv2d, GeneticLinear)
    pooled = {f"{n}.0": m for n, m in model.named_modules() if isinstance(m, ConvPool)}
    return [(n, pooled.get(n, m)) for n, m in model.named_modules() if isinstance(m, kinds)]


def _macs_per_item(module: nn.Module, out: torch.Tensor) -> int:
    """MACs for one item of the call's batch axis (one sample at one timestep in the body); a ConvPool
    describes the fused (k+1) x (k+1) conv it runs."""
    if isinstance(module, nn.Linear) or out.dim() == 2:
        return int(module.in_features * module.out_features)
    k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
    groups = getattr(module, "groups", 1)
    return int(out[0].numel() * (module.in_channels // groups) * k[0] * k[1])


@torch.no_grad()
def layer_table(model: nn.Module) -> tuple[list[dict], list[str], list[int]]:
    """Trace one forward of ``model`` and describe its weight layers as the ONNX ``gee.layers`` does.

    Spikes are followed by data flow, not by call order: every LIF output is tagged with the LIF's name,
    views of it (``SeqToBatch``'s flatten, slicing) share its storage and keep the tag, and modules that keep
    spikes binary (max-pooling, flatten) pass it on. A weight layer whose input carries a tag reads that
    LIF's spikes (so a ResNet shortcut reads the block's input, not the LIF that ran just before it).
    ``calls`` is how often a layer runs per sample: the batch axis it sees is N for the stem, T x N in the body.

    Returns:
        (layers, spiking layer names, neurons per sample of each spiking layer)
    """
    from ..neurons import LIF, SpikeRecorder

    rows: list[dict] = []
    source: dict[int, str] = {}  # storage address -> LIF name
    alive: list[torch.Tensor] = []  # tagged tensors stay referenced, so no later tensor reuses their storage

    def tag(t: torch.Tensor, name: str) -> None:
        source[t.untyped_storage().data_ptr()] = name
        alive.append(t)

    def src(t: torch.Tensor) -> str | None:
        return source.get(t.untyped_storage().data_ptr())

    def on_weight(mod, args, out, name):
        spikes_of = src(args[0])
        macs = _macs_per_item(mod, out)
        rows.append({"name": name, "kind": type(mod).__name__, "variant": "eager", "macs": macs,
                     "input_is_spikes": spikes_of is not None, "spiking_input_layer": spikes_of,
                     "spike_macs": macs, "calls": out.shape[0] // len(x_in)})

    def on_preserving(mod, args, out):
        if src(args[0]) is not None:
            tag(out, src(args[0]))

    hooks = [m.register_forward_hook(lambda mod, a, o, name=name: on_weight(mod, a, o, name))
             for name, m in _weight_layers(model)]
    for name, module in model.named_modules():
        if isinstance(module, LIF):
            hooks.append(module.register_forward_hook(lambda mod, a, o, name=name: tag(o, name)))
        elif isinstance(module, SPIKE_PRESERVING):
            hooks.append(module.register_forward_hook(on_preserving))
    c, s = model.in_channels, model.image_size
    x_in = torch.rand(2, c, s, s, generator=torch.Generator().manual_seed(0))
    try:
        with SpikeRecorder(model) as rec:
            model(x_in)
    finally:
        for h in hooks:
            h.remove()
    return rows, list(rec.names), list(rec.sizes)


def firing_rates(spike_counts: np.ndarray, neurons: list[int], timesteps: int) -> np.ndarray:
    """Mean firing rate per spiking layer: spikes / (neurons x T), averaged over samples [N, L] -> [L]."""
    counts = np.asarray(spike_counts, dtype=np.float64)
    return counts.mean(axis=0) / (np.asarray(neurons, dtype=np.float64) * timesteps)


def energy_per_layer(layers: list[dict], rates: dict[str, float], timesteps: int) -> list[LayerEnergy]:
    """Eq. 17 term by term. ``rates`` maps spiking layer name -> firing rate.

    A layer reading spikes costs E_AC per SOP of the op that reads them (``spike_macs``, all of ``macs`` for a
    dense layer); what else it computes (the later ops of a factorised layer) works on analog values and costs
    E_MAC per MAC on each of its ``calls``. A layer reading analog values costs E_MAC x macs x calls.
    """
    out = []
    for layer in layers:
        macs = int(layer["macs"])
        spikes = bool(layer.get("input_is_spikes"))
        calls = int(layer.get("calls", timesteps if spikes else 1))
        if not spikes:
            analog = macs * calls
            out.append(LayerEnergy(layer["name"], layer.get("kind", ""), macs, calls, "MAC", None, None, 0, 0.0, analog,
                                   E_MAC_PJ * analog))
            continue
        src = layer.get("spiking_input_layer")
        if src not in rates:
            from ..errors import ModelFileError

            raise ModelFileError(f"layer {layer['name']} reads spikes of {src!r}, which has no spike count")
        fr = float(rates[src])
        spike_macs = int(layer.get("spike_macs", macs))
        sops = fr * timesteps * spike_macs  # eq. 17, SOPs term
        analog = (macs - spike_macs) * calls
        out.append(LayerEnergy(layer["name"], layer.get("kind", ""), macs, calls, "AC+MAC" if analog else "AC", src,
                               fr, spike_macs, sops, analog, E_AC_PJ * sops + E_MAC_PJ * analog))
    return out


def total_energy(per_layer: list[LayerEnergy]) -> dict:
    """Totals per sample: energy in pJ, MACs on analog values, SOPs on spikes."""
    return {"energy_pj": sum(e.energy_pj for e in per_layer),
            "analog_macs": sum(e.analog_macs for e in per_layer),
            "sops": sum(e.sops for e in per_layer),
            "macs_per_sample": sum(e.macs * e.calls for e in per_layer)}
