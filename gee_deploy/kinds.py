"""The closed sets of names that cross module boundaries, declared once.

Each is a ``StrEnum``: its members are ``str``, so they compare equal to, hash like, format as and JSON-encode
as their values. The ONNX metadata and JSON reports that hold them are therefore the same bytes as when they
were plain strings, and files written before these types existed read back unchanged; a misspelt member
fails where it is written (``AttributeError``), and an unknown value where it is read (``ValueError``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "LayerKind",
    "Form",
    "ExportVariant",
    "ExportFormat",
    "Storage",
    "Precision",
    "Int8Policy",
    "Int8Form",
    "FitnessMode",
    "Init",
    "StepInput",
]


class LayerKind(StrEnum):
    """What a weight layer computes."""

    CONV = "conv"  # Conv2d (a genetic one included; a ConvPool is its conv with the pool fused in)
    LINEAR = "linear"  # Linear / Gemm


class Form(StrEnum):
    """How one weight layer's ops are laid out in the deployed graph (:mod:`gee_deploy.export.factorised`)."""

    DENSE = "dense"  # one Conv / Gemm of the folded weight
    POINTWISE_FIRST = "pointwise-first"  # factorised conv: E_in as a 1x1 conv, one-hot tap shift, mixing 1x1 conv
    SHIFT_FIRST = "shift-first"  # factorised conv: k^2 shifted copies of the input, grouped E_in conv, mixing
    LINEAR = "linear"  # factorised linear layer: two Gemms (E_in, then G E_out^T)


class ExportVariant(StrEnum):
    """How the layers of a model run: what ``--variant`` requests, and what each layer of a spec was written as.

    A :class:`~gee_deploy.spec.LayerSpec` holds ``DENSE`` or ``FACTORISED`` (``EAGER`` in the PyTorch
    reference's spec); a :class:`~gee_deploy.spec.ModelSpec` holds the requested variant (any member).
    """

    DENSE = "dense"  # E_in G E_out^T and BatchNorm folded into plain Conv / Gemm weights
    FACTORISED = "factorised"  # the per-tap rank-g form: pointwise -> shift -> pointwise
    AUTO = "auto"  # per layer, the cheaper of the two
    INT8 = "int8"  # dense, with every spike-reading layer int8
    EAGER = "eager"  # the PyTorch model itself (the reference every export is compared with)
    NIR = "nir"  # a NIR graph run by the spec-only NIR executor (the reference of a graph converted from it)


class ExportFormat(StrEnum):
    """What an export writes (``--format``; :data:`gee_deploy.export.configs.FORMATS` describes each)."""

    ONNX = "onnx"  # one self-contained .onnx file
    TRITON = "triton"  # a Triton model repository holding the .onnx file
    TENSORRT = "tensorrt"  # a TensorRT plan built from the ONNX graph
    NIR = "nir"  # a NIR graph of the folded dense network


class Storage(StrEnum):
    """What an exported file holds (``--storage``; docs/export.md, "Storage")."""

    GENETIC = "genetic"  # E once per population, G, scales, BatchNorm parameters + the subgraph computing the weights
    FOLDED = "folded"  # the computed weights (every file written before storage was a choice)


class Precision(StrEnum):
    """The arithmetic of a weight layer's op that reads its input (:mod:`gee_deploy.quantisation`)."""

    FP32 = "fp32"
    INT8 = "int8"  # uint8 spikes x int8 per-channel weights, accumulated in int32


class Int8Policy(StrEnum):
    """Which spike-reading layers an export writes with int8 weights."""

    NEVER = "never"
    ALL = "all"
    CHOOSE = "choose"  # those worth it (``auto --allow-int8``: :func:`gee_deploy.export.choose.make_int8_chooser`)


class Int8Form(StrEnum):
    """How an int8 layer is spelt in ONNX (``--int8-form``; :mod:`gee_deploy.export.int8`); both compute the same."""

    INTEGER = "integer"  # MatMulIntegerToFloat on uint8 spikes (patches gathered for a conv): onnxruntime's CPU int8
    QDQ = "qdq"  # QuantizeLinear / DequantizeLinear around Conv / Gemm: TensorRT's and OpenVINO's int8 convention


class FitnessMode(StrEnum):
    """Which terms of eq. 16 the evolution's fitness uses (:mod:`gee_deploy.training.fitness`).

    The literal modes use the raw terms; the ``-scaled`` ones standardise each term across the generation.
    """

    LOSS = "loss"
    LOSS_R1 = "loss+r1"
    LOSS_R2 = "loss+r2"
    STE = "ste"  # eq. 16 with both regularisers
    LOSS_R1_SCALED = "loss+r1-scaled"
    LOSS_R2_SCALED = "loss+r2-scaled"
    STE_SCALED = "ste-scaled"


class Init(StrEnum):
    """How genetic layers are initialised (``model.init``; :mod:`gee_deploy.genetic`, docs/evolution.md)."""

    KAIMING = "kaiming"  # scale = Kaiming std / g, E ~ N(0, 1) clipped to +-3: Kaiming-like W (ours)
    PAPER = "paper"  # eq. 1 literally: scale = 1, E and G ~ N(0, 1) unclipped (Table IV's Random)


class StepInput(StrEnum):
    """What one call of a streaming graph takes as ``input`` (one step of a sequence)."""

    STATIC = "static"  # the same image at every step (direct encoding: what the zoo models are trained on)
    FRAMES = "frames"  # one frame per step (event-camera or sensor data: a NIR import with --input sequence)
