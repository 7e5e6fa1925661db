"""Energy by the paper's eq. 17, from MACs per layer and the firing rates a runtime measured.

.. math:: E = E_{MAC} \\cdot FL^{1}_{conv} + E_{AC} \\cdot T \\cdot \\sum_l fr_l \\cdot FL_l

Layers that read analog values (the stem, computed once for all T steps) cost E_MAC = 4.6 pJ per MAC;
layers that read binary spikes cost E_AC = 0.9 pJ per synaptic operation, SOPs_l = fr_l T MACs_l, where
fr_l is the firing rate (spikes / (neurons x T)) of the LIF layer feeding layer l. In a factorised layer
only the first op reads spikes; the ops after it work on analog values and count as MACs (DESIGN section 8).

The layer table is a :class:`~gee_deploy.spec.ModelSpec`'s ``layers``: an exported graph's (its metadata) or,
for the PyTorch reference, :func:`gee_deploy.walk.describe`'s. ``tests/test_serving.py`` checks both terms
against spikingjelly's MAC and SynOp counters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ModelFileError
from .spec import LayerSpec

__all__ = ["E_MAC_PJ", "E_AC_PJ", "LayerEnergy", "firing_rates", "energy_per_layer", "total_energy"]

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


def firing_rates(spike_counts: np.ndarray, neurons: list[int], timesteps: int) -> np.ndarray:
    """Mean firing rate per spiking layer: spikes / (neurons x T), averaged over samples [N, L] -> [L]."""
    counts = np.asarray(spike_counts, dtype=np.float64)
    return counts.mean(axis=0) / (np.asarray(neurons, dtype=np.float64) * timesteps)


def energy_per_layer(layers: tuple[LayerSpec, ...], rates: dict[str, float], timesteps: int) -> list[LayerEnergy]:
    """Eq. 17 term by term. ``rates`` maps spiking layer name -> firing rate.

    A layer reading spikes costs E_AC per SOP of the op that reads them (``spike_macs``, all of ``macs`` for a
    dense layer); what else it computes (the later ops of a factorised layer) works on analog values and costs
    E_MAC per MAC on each of its ``calls``. A layer reading analog values costs E_MAC x macs x calls.

    Raises:
        ModelFileError: a layer reads spikes of a layer that has no firing rate.
    """
    out = []
    for layer in layers:
        if not layer.input_is_spikes:
            analog = layer.macs * layer.calls
            out.append(LayerEnergy(layer.name, layer.kind, layer.macs, layer.calls, "MAC", None, None, 0, 0.0, analog,
                                   E_MAC_PJ * analog))
            continue
        src = layer.spiking_input_layer
        if src not in rates:
            raise ModelFileError(f"layer {layer.name} reads spikes of {src!r}, which has no spike count")
        fr = float(rates[src])
        sops = fr * timesteps * layer.spike_macs  # eq. 17, SOPs term
        analog = (layer.macs - layer.spike_macs) * layer.calls
        out.append(LayerEnergy(layer.name, layer.kind, layer.macs, layer.calls, "AC+MAC" if analog else "AC", src,
                               fr, layer.spike_macs, sops, analog, E_AC_PJ * sops + E_MAC_PJ * analog))
    return out


def total_energy(per_layer: list[LayerEnergy]) -> dict:
    """Totals per sample: energy in pJ, MACs on analog values, SOPs on spikes."""
    return {"energy_pj": sum(e.energy_pj for e in per_layer),
            "analog_macs": sum(e.analog_macs for e in per_layer),
            "sops": sum(e.sops for e in per_layer),
            "macs_per_sample": sum(e.macs * e.calls for e in per_layer)}
