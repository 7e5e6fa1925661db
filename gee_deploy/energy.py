"""Energy by the paper's eq. 17, from MACs per layer and the firing rates a runtime measured.

.. math:: E = E_{MAC} \\cdot FL^{1}_{conv} + E_{AC} \\cdot T \\cdot \\sum_l fr_l \\cdot FL_l

Layers that read analog values (the stem, computed once for all T steps) cost E_MAC = 4.6 pJ per MAC;
layers that read binary spikes cost E_AC = 0.9 pJ per synaptic operation, SOPs_l = fr_l T MACs_l, where
fr_l is the firing rate (spikes / (neurons x T)) of the LIF layer feeding layer l. In a factorised layer
only the first op reads spikes; the ops after it work on analog values and count as MACs.

Int8 layers (``LayerSpec.precision == "int8"``; docs/design.md, "Int8 layers") use the 8-bit constants of the
same table (Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm): 8-bit add 0.03 pJ per SOP, 8-bit
multiply + add 0.2 + 0.03 = 0.23 pJ per MAC. (The graph accumulates in int32, whose add the same table prices
at 0.1 pJ: we price the 8-bit add of the operands' width; :data:`CONSTANTS` names what a report used.)

The layer table is a :class:`~gee_deploy.spec.ModelSpec`'s ``layers``: an exported graph's (its metadata) or,
for the PyTorch reference, :func:`gee_deploy.walk.describe`'s. ``tests/test_serving.py`` checks both terms
against spikingjelly's MAC and SynOp counters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ModelFileError
from .kinds import LayerKind, Precision
from .spec import LayerSpec

__all__ = [
    "E_MAC_PJ",
    "E_AC_PJ",
    "E_MAC_INT8_PJ",
    "E_AC_INT8_PJ",
    "CONSTANTS",
    "CONSTANTS_SOURCE",
    "LayerEnergy",
    "firing_rates",
    "energy_per_layer",
    "total_energy",
]

E_MAC_PJ = 4.6  # 32-bit float multiply-accumulate, 45 nm (Horowitz 2014), as in the paper
E_AC_PJ = 0.9  # 32-bit float accumulate
E_MAC_INT8_PJ = 0.23  # 8-bit integer multiply (0.2) + add (0.03), 45 nm (Horowitz 2014)
E_AC_INT8_PJ = 0.03  # 8-bit integer add
# per precision: (pJ per MAC, pJ per SOP); their source, for reports to name
CONSTANTS: dict[Precision, tuple[float, float]] = {
    Precision.FP32: (E_MAC_PJ, E_AC_PJ),
    Precision.INT8: (E_MAC_INT8_PJ, E_AC_INT8_PJ),
}
CONSTANTS_SOURCE = "Horowitz, ISSCC 2014, 45 nm: fp32 mult 3.7 + add 0.9; int8 mult 0.2 + add 0.03 pJ"


@dataclass(frozen=True)
class LayerEnergy:
    """One weight layer's share of eq. 17, per sample."""

    name: str
    kind: LayerKind
    macs: int  # per sample per call of the layer
    calls: int  # calls per sample: 1 for the stem (computed once), T for body layers
    op: str  # "MAC" (reads analog values), "AC" (reads spikes), "AC+MAC" (factorised: only its first op reads spikes)
    spiking_input_layer: str | None  # the LIF feeding it (layers reading spikes)
    firing_rate: float | None  # of that LIF
    spike_macs: int  # MACs per call of the op that reads spikes (0 for analog layers)
    sops: float  # synaptic operations per sample: fr T spike_macs
    analog_macs: int  # MACs per sample on analog values: macs x calls, less the ops that read spikes
    energy_pj: float  # with the constants of the layer's precision
    precision: Precision = Precision.FP32
    energy_fp32_pj: float = 0.0  # the same operations at the fp32 constants (the paper's eq. 17)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def firing_rates(spike_counts: np.ndarray, neurons: Sequence[int], timesteps: int) -> np.ndarray:
    """Mean firing rate per spiking layer: spikes / (neurons x T), averaged over samples [N, L] -> [L]."""
    counts = np.asarray(spike_counts, dtype=np.float64)
    return counts.mean(axis=0) / (np.asarray(neurons, dtype=np.float64) * timesteps)


def energy_per_layer(layers: tuple[LayerSpec, ...], rates: dict[str, float], timesteps: int) -> list[LayerEnergy]:
    """Eq. 17 term by term. ``rates`` maps spiking layer name -> firing rate.

    A layer reading spikes costs E_AC per SOP of the op that reads them (``spike_macs``, all of ``macs`` for a
    dense layer); what else it computes (the later ops of a factorised layer) works on analog values and costs
    E_MAC per MAC on each of its ``calls``. A layer reading analog values costs E_MAC x macs x calls.
    E_MAC and E_AC are those of the layer's precision (:data:`CONSTANTS`).

    Raises:
        ModelFileError: a layer reads spikes of a layer that has no firing rate.
    """
    out = []
    for layer in layers:
        e_mac, e_ac = CONSTANTS[layer.precision]
        if not layer.input_is_spikes:
            analog = layer.macs * layer.calls
            out.append(
                LayerEnergy(
                    layer.name,
                    layer.kind,
                    layer.macs,
                    layer.calls,
                    "MAC",
                    None,
                    None,
                    0,
                    0.0,
                    analog,
                    e_mac * analog,
                    layer.precision,
                    E_MAC_PJ * analog,
                )
            )
            continue
        src = layer.spiking_input_layer
        if src not in rates:
            raise ModelFileError(f"layer {layer.name} reads spikes of {src!r}, which has no spike count")
        fr = float(rates[src])
        sops = fr * timesteps * layer.spike_macs  # eq. 17, SOPs term
        analog = (layer.macs - layer.spike_macs) * layer.calls
        out.append(
            LayerEnergy(
                layer.name,
                layer.kind,
                layer.macs,
                layer.calls,
                "AC+MAC" if analog else "AC",
                src,
                fr,
                layer.spike_macs,
                sops,
                analog,
                e_ac * sops + e_mac * analog,
                layer.precision,
                E_AC_PJ * sops + E_MAC_PJ * analog,
            )
        )
    return out


def total_energy(per_layer: list[LayerEnergy]) -> dict:
    """Totals per sample: energy in pJ (each layer at its precision's constants, and all at fp32's), MACs on
    analog values, SOPs on spikes, and the constants used."""
    used = sorted({e.precision for e in per_layer})
    return {
        "energy_pj": sum(e.energy_pj for e in per_layer),
        "energy_fp32_pj": sum(e.energy_fp32_pj for e in per_layer),
        "constants": {
            **{p: {"mac_pj": CONSTANTS[p][0], "ac_pj": CONSTANTS[p][1]} for p in used},
            "source": CONSTANTS_SOURCE,
        },
        "analog_macs": sum(e.analog_macs for e in per_layer),
        "sops": sum(e.sops for e in per_layer),
        "macs_per_sample": sum(e.macs * e.calls for e in per_layer),
    }
