"""Export stage: checkpoint -> T-unrolled ONNX graph (dense / factorised / auto), validated against PyTorch.

Graph contract (what ``serving`` and any other consumer may rely on):

* one input ``input``: float32 [N, C, H, W], pixels in [0, 1], N a dynamic axis named ``batch``;
  normalisation happens inside the graph.
* outputs ``logits``: float32 [N, classes], the mean over the T timesteps of the classifier, and
  ``spike_counts``: float32 [N, L], the spikes each of the L spiking (LIF) layers emitted for each sample,
  summed over its neurons and the T steps (firing rate = count / (neurons x T)).
* one self-contained file (no external data), ``onnx.checker`` clean with ``full_check``, opset 18 by default.
* ``metadata_props`` (string values; lists and dicts are JSON):

  ``gee.timesteps``          T, e.g. "4"
  ``gee.input_shape``        [C, H, W]
  ``gee.class_names``        list of class names (length = classes)
  ``gee.spiking_layers``     LIF module names, in ``spike_counts`` column order
  ``gee.neurons_per_layer``  neurons per sample of each spiking layer (same order)
  ``gee.layers``             per weight layer: {"name", "kind" (conv/linear), "variant" (dense/factorised),
                             "macs" (per sample per call), "input_is_spikes" (reads binary spikes: AC ops),
                             "spiking_input_layer" (LIF whose firing rate scales it, or null),
                             "spike_macs" (MACs of the op that reads the layer input; in a factorised layer
                             only the first op reads spikes), "calls" (runs per sample per graph call:
                             1 for the stem, computed once on the analog image; T for body layers),
                             "form" (dense / pointwise-first / shift-first / linear), "dense_macs",
                             "factorised_macs" (null for non-genetic layers)}
  ``gee.variant``            requested variant: dense, factorised or auto
  ``gee.checkpoint_sha256``  sha256 of the checkpoint file
  ``gee.model_name``, ``gee.model_args``, ``gee.dataset``, ``gee.format`` ("1"), ``gee.streaming``

Streaming graphs (``streaming=True``) run ONE timestep per call: extra inputs ``v_in.<lif>`` [N, ...] (membrane
potentials, zeros at the start of a sequence) and extra outputs ``v_out.<lif>`` (feed back next call), listed in
``gee.state_inputs`` / ``gee.state_outputs``; ``logits`` is that step's classifier output (average the T calls)
and ``spike_counts`` that step's spikes (sum the T calls).
"""
from __future__ import annotations

from .api import ExportReport, build_onnx, export_loaded, export_model
from .configs import FORMATS, VARIANTS, ValidationConfig
from .errors import ExportError, ExportValidationError, ShapeError, ToleranceError

__all__ = ["export_model", "export_loaded", "build_onnx", "ExportReport", "ValidationConfig", "VARIANTS",
           "FORMATS", "ExportError", "ExportValidationError", "ShapeError", "ToleranceError"]
