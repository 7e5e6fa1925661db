"""Run a NIR graph with an executor that knows only the NIR spec, and compare it with the PyTorch model.

The executor is nirtorch's interpreter (``nirtorch.nir_to_torch``: it wires the file's nodes and edges into a
``torch.fx`` graph, summing the inputs of a node that has several, and carries each stateful node's state
between calls) with node maps written from the NIR primitives' definitions, not from our model code:

* ``LIF``: :math:`\\tau \\dot v = (v_{leak} - v) + R I`, integrated with forward Euler over one step ``dt``,
  :math:`v_t = v_{t-1} + \\frac{dt}{\\tau}(v_{leak} - v_{t-1} + R I_t)`; it fires :math:`z_t = [v_t > v_{th}]`
  (strictly greater, as NIR defines it) and then sets :math:`v_t = v_{reset}` where it fired. The membrane
  starts at :math:`v_{reset}`.
* ``Affine`` (y = W x + b), ``Linear``, ``Conv2d``, ``AvgPool2d``, ``SumPool2d`` (sum over the window, zero
  padding), ``Flatten`` (NIR dims exclude the batch: dim d is torch dim d + 1).

nirtorch's own default maps are not used for two reasons found in nirtorch 2.6: its ``Affine`` map assigns the
bias to ``weight.bias`` (the layer keeps its random initial bias), and its ``Flatten`` map passes NIR's
batchless dims to ``torch.nn.Flatten`` unchanged (NIR dim 0 would flatten the batch).

Validation (:func:`validate_nir`) feeds the normalised image at every one of the T steps (direct encoding),
averages the graph's output over the steps into logits, sums every LIF node's spikes into spike counts, and runs
the same checks as the ONNX validation (:mod:`.validate`): logits per sample, top-1 agreement, total spikes,
accuracy; every failed check is collected and reported together.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError, UnsupportedModuleError
from ..parity import Outputs
from ..spec import LOGITS, SPIKE_COUNTS, ModelSpec
from .configs import ValidationConfig
from .errors import ShapeError
from .nir import NIR_METADATA
from .validate import ValidationReport, _compare, reference_outputs

__all__ = ["read_nir", "NIRExecutor", "nir_inputs", "run_nir", "validate_nir"]


def read_nir(path: str | os.PathLike) -> nir.NIRGraph:
    """The NIR graph in ``path``; :class:`ModelFileError` (one line) when missing, truncated or not NIR."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p} not found")
    try:
        graph = nir.read(p)
    except Exception as e:  # h5py OSError on a truncated file, KeyError/ValueError on a foreign HDF5 layout
        raise ModelFileError(f"{p} is not a readable NIR file (truncated or corrupt?): "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(graph, nir.NIRGraph):
        raise ModelFileError(f"{p} holds a single NIR {type(graph).__name__} node, not a graph")
    return graph


def _ints(value) -> tuple[int, int]:
    v = np.asarray(value).reshape(-1)
    return (int(v[0]), int(v[-1]))


def _f32(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


class _LIF(nn.Module):
    """NIR ``LIF`` with forward-Euler steps of ``dt`` (see the module docstring); state = membrane v."""

    def __init__(self, node: nir.LIF, dt: float):
        super().__init__()
        # the per-step factor dt / tau, computed in float64 from the file and rounded once
        self.register_buffer("alpha", torch.from_numpy((dt / np.asarray(node.tau, np.float64)).astype(np.float32)))
        for name in ("r", "v_leak", "v_threshold", "v_reset"):
            self.register_buffer(name, _f32(getattr(node, name)))

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.v_reset.expand_as(x) if state is None else state
        v = v + self.alpha * ((self.v_leak - v) + self.r * x)
        z = v > self.v_threshold
        return z.to(x.dtype), torch.where(z, self.v_reset, v)


class _SumPool2d(nn.Module):
    def __init__(self, node: nir.SumPool2d):
        super().__init__()
        self.k, self.s, self.p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.k, self.s, self.p, count_include_pad=True, divisor_override=1)


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
    if isinstance(node.padding, str):
        padding = node.padding
    else:
        padding = _ints(node.padding)
    m = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_ints(node.stride),
                  padding=padding, dilation=_ints(node.dilation), groups=int(node.groups), bias=True)
    m.weight.data = w
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

    Raises:
        UnsupportedModuleError: a node type the executor has no map for (named).
    """

    def __init__(self, graph: nir.NIRGraph, dt: float):
        import nirtorch

        node_map = {nir.LIF: lambda n: _LIF(n, dt), nir.Affine: _affine, nir.Linear: _affine, nir.Conv2d: _conv2d,
                    nir.AvgPool2d: _avgpool, nir.SumPool2d: _SumPool2d, nir.Flatten: _flatten}
        unknown = sorted({type(n).__name__ for n in graph.nodes.values()
                          if type(n) not in node_map and not isinstance(n, (nir.Input, nir.Output))})
        if unknown:
            raise UnsupportedModuleError(f"the NIR executor has no map for node type(s) {', '.join(unknown)}")
        self.module = nirtorch.nir_to_torch(graph, node_map).eval()
        # nirtorch names submodules after the nodes with '.' -> '_'; keep the NIR names for the counts
        sanitised = {name.replace(".", "_"): name for name, n in graph.nodes.items() if isinstance(n, nir.LIF)}
        self.lif_modules = {sanitised[k]: m for k, m in self.module.named_children() if k in sanitised}

    @torch.no_grad()
    def run(self, x: torch.Tensor, timesteps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Feed ``x`` [N, ...] at each of ``timesteps`` steps.

        Returns:
            the output node's value averaged over the steps [N, ...], and per LIF node the spikes each sample
            emitted over all steps and neurons, {name: [N]}.
        """
        counts = {name: torch.zeros(len(x)) for name in self.lif_modules}

        def recorder(name):
            def hook(module, args, out):
                counts[name] += out[0].flatten(1).sum(1)
            return hook

        handles = [m.register_forward_hook(recorder(name)) for name, m in self.lif_modules.items()]
        try:
            state, total = None, 0.0
            for _ in range(timesteps):
                y, state = self.module(x, state)
                total = total + y
        finally:
            for h in handles:
                h.remove()
        return total / timesteps, counts


def nir_inputs(graph: nir.NIRGraph, source: str) -> tuple[ModelSpec, float, torch.Tensor, torch.Tensor]:
    """What a reader needs beside the nodes, from the graph's metadata: the model spec (T, spiking layers),
    dt, and the input normalisation (mean, std as [1, C, 1, 1]); :class:`ModelFileError` when absent."""
    meta = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (graph.metadata or {}).items()}
    spec = ModelSpec.from_metadata(meta, source)
    missing = [NIR_METADATA[k] for k in ("dt", "mean", "std") if NIR_METADATA[k] not in meta]
    if missing:
        raise ModelFileError(f"{source} lacks the NIR keys {', '.join(missing)}; export it with "
                             "`gee-deploy export --format nir`")
    try:
        dt = float(meta[NIR_METADATA["dt"]])
        mean, std = (torch.tensor(json.loads(meta[NIR_METADATA[k]]), dtype=torch.float32).view(1, -1, 1, 1)
                     for k in ("mean", "std"))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{source} has malformed NIR metadata: {e}") from None
    return spec, dt, mean, std


def run_nir(graph: nir.NIRGraph, images: torch.Tensor, batch_size: int, source: str = "NIR graph",
            threshold: float | None = None, labels: np.ndarray | None = None) -> Outputs:
    """Logits [S, classes] and spike counts [S, L] (the spec's spiking-layer order) of ``graph`` on ``images``
    [S, C, H, W] in [0, 1], reading T, dt and the normalisation from the graph's metadata.

    ``threshold``: replace every LIF's v_threshold (to measure what the threshold convention changes).
    """
    spec, dt, mean, std = nir_inputs(graph, source)
    run = NIRExecutor(graph, dt)
    missing = [name for name in spec.spiking_layers if name not in run.lif_modules]
    if missing:
        raise ModelFileError(f"{source} lacks the LIF node(s) {', '.join(missing)} its metadata lists")
    if threshold is not None:
        for m in run.lif_modules.values():
            m.v_threshold.fill_(threshold)
    x = images.float().contiguous()
    logits, counts = [], []
    for i in range(0, len(x), batch_size):
        y, c = run.run((x[i:i + batch_size] - mean) / std, spec.timesteps)
        logits.append(y.numpy())
        counts.append(torch.stack([c[name] for name in spec.spiking_layers], 1).numpy())
    return Outputs(np.concatenate(logits).astype(np.float32), np.concatenate(counts), labels, spec.spiking_layers)


def validate_nir(model: nn.Module, graph: nir.NIRGraph, images: torch.Tensor, labels: torch.Tensor | None,
                 cfg: ValidationConfig, source: str = "NIR graph", raise_on_failure: bool = True) -> ValidationReport:
    """Run ``graph`` with :class:`NIRExecutor` on ``images`` [S, C, H, W] in [0, 1] and compare with ``model``.

    Everything the run needs besides the nodes comes from the graph's own metadata (:func:`nir_inputs`), so this
    checks the file a user gets, not the writer's memory. The graph's input is the normalised image (NIR has no
    constant node, so the normalisation cannot fold exactly into the zero-padded stem conv; docs/export.md).

    Raises:
        ExportValidationError: listing every failed check (when ``raise_on_failure``).
        ModelFileError: the graph lacks the metadata or LIF nodes it needs.
    """
    report = ValidationReport(samples=len(images))
    y = None if labels is None else labels.numpy()
    got = run_nir(graph, images, cfg.batch_size, source, labels=y)
    ref = reference_outputs(model, images.float().contiguous(), cfg.batch_size, y)
    for what, g, r in ((LOGITS, got.logits, ref.logits), (SPIKE_COUNTS, got.spikes, ref.spikes)):
        report.require(f"NIR {what} are {list(r.shape)}", g.shape == r.shape,
                       ShapeError(f"NIR {what} are {list(g.shape)}, expected {list(r.shape)}"))
    if report.ok:
        _compare(report, ref, got, cfg.thresholds)
    if raise_on_failure:
        report.raise_if_failed("NIR export")
    return report
