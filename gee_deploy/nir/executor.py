"""Run a NIR graph with an executor that knows only the NIR spec (the reference for NIR export and import).

The executor is nirtorch's interpreter (``nirtorch.nir_to_torch``: it wires the file's nodes and edges into a
``torch.fx`` graph, summing the inputs of a node that has several, and carries each stateful node's state
between calls) with node maps written from the NIR primitives' definitions (the ``nir`` package's node
docstrings, neuroir.org/docs/primitives), not from our model code. The neuron ODEs are integrated with forward
Euler over one step ``dt`` (docs/nir.md, "Time"), every neuron starting at rest (v = v_reset, synaptic current 0;
an LI at v = 0):

* ``LIF``: :math:`\\tau \\dot v = (v_{leak} - v) + R I`, so
  :math:`v_t = v_{t-1} + \\frac{dt}{\\tau}((v_{leak} - v_{t-1}) + R I_t)`; it fires :math:`z_t = [v_t > v_{th}]`
  (strictly greater, as NIR defines it; ``threshold_rule="ge"`` fires on :math:`\\ge`, the rule of SpikingJelly)
  and then sets :math:`v_t = v_{reset}` where it fired.
* ``IF``: :math:`\\dot v = R I`, so :math:`v_t = v_{t-1} + (dt\\,R) I_t`; fire and reset as LIF.
* ``LI``: LIF's membrane without firing; its output is v.
* ``CubaLIF``: :math:`\\tau_{syn} \\dot I = -I + w_{in} S` then :math:`\\tau_{mem} \\dot v = (v_{leak} - v) + R I`
  with the current of the same step, :math:`I_t = I_{t-1} + \\frac{dt}{\\tau_{syn}}(-I_{t-1} + w_{in} S_t)`;
  fire and reset as LIF.
* ``Affine`` (y = W x + b), ``Linear``, ``Scale`` (y = s x), ``Conv2d``, ``AvgPool2d``, ``SumPool2d`` (sum over
  the window, zero padding), ``Flatten`` (NIR dims exclude the batch: dim d is torch dim d + 1).

Factors such as dt / tau and dt R are computed in float64 from the file and rounded to float32 once.

nirtorch's own default maps are not used for two reasons found in nirtorch 2.6: its ``Affine`` map assigns the
bias to ``weight.bias`` (the layer keeps its random initial bias), and its ``Flatten`` map passes NIR's
batchless dims to ``torch.nn.Flatten`` unchanged (NIR dim 0 would flatten the batch).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError, UnsupportedModuleError
from ..spec import ModelSpec

__all__ = ["THRESHOLD_RULES", "SPIKING_NODES", "read_nir", "NIRExecutor", "euler_factor", "run_spec"]

THRESHOLD_RULES = ("gt", "ge")  # fire on v > v_th (NIR) or v >= v_th (SpikingJelly, gee-deploy)
SPIKING_NODES = (nir.LIF, nir.IF, nir.CubaLIF)


def read_nir(path: str | os.PathLike) -> nir.NIRGraph:
    """The NIR graph in ``path``; :class:`ModelFileError` (one line) when missing, truncated or not NIR.

    NIR's own type inference is not run on reading: frameworks write types it rejects (snntorch 1.0: shapeless
    LIF parameters) for graphs that run, and the readers here work out and check every shape themselves.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p} not found")
    try:
        graph = nir.read(p, type_check=False)
    except Exception as e:  # h5py OSError on a truncated file, KeyError/ValueError on a foreign HDF5 layout
        raise ModelFileError(
            f"{p} is not a readable NIR file (truncated or corrupt?): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(graph, nir.NIRGraph):
        raise ModelFileError(f"{p} holds a single NIR {type(graph).__name__} node, not a graph")
    return graph


def euler_factor(dt: float, value) -> np.ndarray:
    """dt / tau (``value`` = tau) computed in float64 from the file's numbers, rounded to float32 once."""
    return (dt / np.asarray(value, np.float64)).astype(np.float32)


def _ints(value) -> tuple[int, int]:
    v = np.asarray(value).reshape(-1)
    return (int(v[0]), int(v[-1]))


def _f32(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


class _Neuron(nn.Module):
    """A NIR neuron node as a stateful module: ``forward(x, state) -> (output, state)``."""

    # buffers (register_buffer), each registered where the node type has the parameter
    r: torch.Tensor
    v_leak: torch.Tensor
    alpha: torch.Tensor  # LIF, LI, CubaLIF
    v_threshold: torch.Tensor  # spiking nodes
    v_reset: torch.Tensor  # spiking nodes
    alpha_syn: torch.Tensor  # CubaLIF
    w_in: torch.Tensor  # CubaLIF

    def __init__(self, node: nir.NIRNode, dt: float, threshold_rule: str):
        super().__init__()
        self.kind = type(node).__name__
        self.ge = threshold_rule == "ge"
        if isinstance(node, nir.IF):
            self.register_buffer("r", torch.from_numpy((dt * np.asarray(node.r, np.float64)).astype(np.float32)))
            self.register_buffer("v_leak", torch.zeros(()))
            self.leak = False
        else:
            self.register_buffer(
                "alpha", torch.from_numpy(euler_factor(dt, node.tau_mem if self.kind == "CubaLIF" else node.tau))
            )
            self.register_buffer("r", _f32(node.r))
            self.register_buffer("v_leak", _f32(node.v_leak))
            self.leak = True
        self.spiking = isinstance(node, SPIKING_NODES)
        if self.spiking:
            self.register_buffer("v_threshold", _f32(node.v_threshold))
            self.register_buffer("v_reset", _f32(node.v_reset))
        if self.kind == "CubaLIF":
            self.register_buffer("alpha_syn", torch.from_numpy(euler_factor(dt, node.tau_syn)))
            self.register_buffer("w_in", _f32(node.w_in))

    def forward(self, x: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        if state is None:
            v = (self.v_reset if self.spiking else torch.zeros(())).expand_as(x)
            i = torch.zeros_like(x)
        else:
            v, i = state
        if self.kind == "CubaLIF":
            i = i + self.alpha_syn * ((0 - i) + self.w_in * x)
            x = i
        if self.leak:
            v = v + self.alpha * ((self.v_leak - v) + self.r * x)
        else:
            v = v + self.r * x
        if not self.spiking:
            return v, (v, i)
        z = v >= self.v_threshold if self.ge else v > self.v_threshold
        return z.to(x.dtype), (torch.where(z, self.v_reset, v), i)


class _SumPool2d(nn.Module):
    def __init__(self, node: nir.SumPool2d):
        super().__init__()
        self.k, self.s, self.p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.k, self.s, self.p, count_include_pad=True, divisor_override=1)


class _Scale(nn.Module):
    scale: torch.Tensor  # buffer

    def __init__(self, node: nir.Scale):
        super().__init__()
        self.register_buffer("scale", _f32(node.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _affine(node: nir.Affine | nir.Linear) -> nn.Linear:
    w = _f32(node.weight)
    bias = getattr(node, "bias", None)
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    m.weight.data = w
    if bias is not None:
        m.bias.data = _f32(bias)
    return m


def _conv2d(node: nir.Conv2d) -> nn.Conv2d:
    w = _f32(node.weight)
    padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
    kh, kw = w.shape[2:]
    m = nn.Conv2d(
        w.shape[1] * int(node.groups),
        w.shape[0],
        (kh, kw),
        stride=_ints(node.stride),
        padding=padding,
        dilation=_ints(node.dilation),
        groups=int(node.groups),
        bias=True,
    )
    m.weight.data = w
    assert m.bias is not None  # built with bias=True
    m.bias.data = _f32(node.bias)
    return m


def _flatten(node: nir.Flatten) -> nn.Flatten:
    def shift(d: int) -> int:
        return int(d) + 1 if int(d) >= 0 else int(d)

    return nn.Flatten(shift(node.start_dim), shift(node.end_dim))


def _avgpool(node: nir.AvgPool2d) -> nn.AvgPool2d:
    return nn.AvgPool2d(_ints(node.kernel_size), _ints(node.stride), _ints(node.padding))


class NIRExecutor:
    """A NIR graph as a per-step torch callable (nirtorch's interpreter with the maps above).

    Args:
        graph: a ``nir.NIRGraph`` with one input and one output node.
        dt: the step of the Euler integration of the neuron ODEs, in the units of the graph's time constants.
        threshold_rule: "gt" (NIR: fire on v > v_th) or "ge" (fire on v >= v_th).

    Attributes:
        module: the nirtorch module, ``module(x, state) -> (y, state)`` for one step.
        spiking_modules: {NIR node name: module} of every spiking node (LIF, IF, CubaLIF), in the graph's order.

    Raises:
        UnsupportedModuleError: a node type the executor has no map for (named).
    """

    def __init__(self, graph: nir.NIRGraph, dt: float, threshold_rule: str = "gt"):
        import nirtorch

        neuron = lambda n: _Neuron(n, dt, threshold_rule)  # noqa: E731
        node_map = {
            nir.LIF: neuron,
            nir.IF: neuron,
            nir.LI: neuron,
            nir.CubaLIF: neuron,
            nir.Affine: _affine,
            nir.Linear: _affine,
            nir.Scale: _Scale,
            nir.Conv2d: _conv2d,
            nir.AvgPool2d: _avgpool,
            nir.SumPool2d: _SumPool2d,
            nir.Flatten: _flatten,
        }
        unknown = sorted(
            {
                type(n).__name__
                for n in graph.nodes.values()
                if type(n) not in node_map and not isinstance(n, (nir.Input, nir.Output))
            }
        )
        if unknown:
            raise UnsupportedModuleError(f"the NIR executor has no map for node type(s) {', '.join(unknown)}")
        # nirtorch names its fx nodes and submodules after the NIR nodes, which breaks on names that are not
        # Python identifiers ('if', '1.lif'): run it on identifiers and keep the NIR names for the counts
        ids = {name: f"n{i}" for i, name in enumerate(graph.nodes)}
        renamed = nir.NIRGraph(
            nodes={ids[k]: n for k, n in graph.nodes.items()},
            edges=[(ids[a], ids[b]) for a, b in graph.edges],
            type_check=False,
        )
        self.module = nirtorch.nir_to_torch(renamed, node_map).eval()
        names = {ids[k]: k for k, n in graph.nodes.items() if isinstance(n, SPIKING_NODES)}
        self.spiking_modules: dict[str, _Neuron] = {}
        for k, m in self.module.named_children():
            if k in names:
                assert isinstance(m, _Neuron)  # node_map maps every spiking node type to a _Neuron
                self.spiking_modules[names[k]] = m

    @property
    def lif_modules(self) -> dict[str, _Neuron]:
        """The spiking modules (the name our own exports, all LIF, have always used)."""
        return self.spiking_modules

    @torch.no_grad()
    def run_steps(self, steps: Iterable[torch.Tensor], n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Feed the per-step inputs ``steps`` (each [n, ...]) one step each.

        Returns:
            the output node's value averaged over the steps [n, ...]; per spiking node the spikes each sample
            emitted over all steps and neurons, {name: [n]}; the number of steps.
        """
        counts = {name: torch.zeros(n) for name in self.spiking_modules}

        def recorder(name):
            def hook(module, args, out):
                counts[name] += out[0].flatten(1).sum(1)

            return hook

        handles = [m.register_forward_hook(recorder(name)) for name, m in self.spiking_modules.items()]
        try:
            state, total, t = None, torch.zeros(()), 0  # a tensor: 0 + y is y, and no steps give 0
            for x in steps:
                y, state = self.module(x, state)
                total, t = total + y, t + 1
        finally:
            for h in handles:
                h.remove()
        return total / max(t, 1), counts, t

    def run(self, x: torch.Tensor, timesteps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Feed ``x`` [N, ...] at each of ``timesteps`` steps (direct encoding).

        Returns:
            the output node's value averaged over the steps [N, ...], and per spiking node the spikes each sample
            emitted over all steps and neurons, {name: [N]}.
        """
        y, counts, _ = self.run_steps((x for _ in range(timesteps)), len(x))
        return y, counts


@torch.no_grad()
def run_spec(
    graph: nir.NIRGraph, spec: ModelSpec, x: np.ndarray, batch_size: int = 64, executor: NIRExecutor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits [S, classes] and spike counts [S, L] (``spec.spiking_layers`` order) of ``graph`` on ``x`` in the
    layout of the graph converted from it (``gee-deploy export MODEL.nir``): [S, *shape] repeated over the T steps,
    or [S, T, *shape] per step, with the dt, threshold rule, input mode and input normalisation (when the file
    stated one) of ``spec.model_args``."""
    args = spec.model_args
    run = executor or NIRExecutor(graph, float(args["dt"]), args["threshold_rule"])
    shape = spec.input_shape[1:] if args["input"] == "sequence" else spec.input_shape
    norm = [
        torch.tensor(args[k], dtype=torch.float32).view(-1, *[1] * (len(shape) - 1))
        for k in ("input_mean", "input_std")
        if k in args
    ]
    logits, counts = [], []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))
        if norm:  # the converted graph's (x - mean) / std, float32, the same two ops
            xb = (xb - norm[0]) / norm[1]
        if args["input"] == "sequence":
            y, c, _ = run.run_steps((xb[:, t] for t in range(spec.timesteps)), len(xb))
        else:
            y, c = run.run(xb, spec.timesteps)
        logits.append(y.numpy())
        counts.append(torch.stack([c[name] for name in spec.spiking_layers], 1).numpy())
    return np.concatenate(logits).astype(np.float32), np.concatenate(counts).astype(np.float32)
