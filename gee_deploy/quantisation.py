"""Int8 weights for the layers that read spikes: symmetric per-output-channel quantisation.

Why int8 this way: docs/design.md, "Int8 layers".

After the stem every conv / linear layer reads spikes, exactly 0 or 1, so as 8-bit integers they are exact and
only the weights lose precision. One function, :func:`int8_codes`, defines the int8 codes and scales, written
once over a small set of array operations the way :mod:`gee_deploy.neurons` writes the LIF once: it runs on torch
tensors here (:data:`TORCH_OPS`: the quantisation-aware fine-tune's straight-through fake quantisation,
:func:`fake_quantise`, and the PyTorch eval path of a quantised checkpoint, through :func:`quantise_weight`), and
on :class:`gee_deploy.export.weights.WeightOps` in the exporter (numpy when weights are folded, ONNX operators
when a ``genetic`` file computes the codes in its graph). Every caller hands it the same float32 weight the
model's forward uses, so they agree on every code.

.. math:: s_o = \\max_j |W_{o,j}| / 127,\\quad q_{o,j} = \\mathrm{clamp}(\\mathrm{round}(W_{o,j} / s_o), -127, 127),
          \\quad W \\approx q\\,s

with round half to even and an all-zero channel at s = 1 (its codes are 0).

**BatchNorm fold.** An eval-mode BatchNorm multiplies output channel o by a constant b_o and adds a shift, so
W b_o has the same codes q_o with scale s_o b_o: the fold changes the per-channel float scale, never the
integers, and a layer is int8-exact with or without its BN folded.

**Which weight.** A :class:`~gee_deploy.zoo.base.ConvPool` runs its k x k conv and 2x2 average pool as one
(k+1) x (k+1) stride-2 conv; that fused kernel (a sum of four taps / 4, not int8-representable when the k x k
kernel is) is what runs and what the export writes, so it is the one quantised. Genetic layers quantise their
generated W = scale E_in G E_out^T (paper eq. 1). Plain ``nn.Conv2d`` / ``nn.Linear`` layers outside a
ConvPool are not supported (their forward reads ``weight`` directly; a parametrisation would change the
checkpoint's keys and fingerprint).

A quantised checkpoint records its scheme and layers (:class:`gee_deploy.checkpoint.QuantisationRecord`);
:func:`gee_deploy.checkpoint.build_model` re-attaches the quantisers, so the checkpoint rebuilds its model
alone (docs/design.md, "Checkpoints"). Layer names follow :class:`~gee_deploy.spec.LayerSpec` (a ConvPool is
named by its conv).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .batchnorm import batchnorm_affine, folded_bias
from .errors import ConfigError
from .genetic import GeneticConv2d, GeneticLinear
from .walk import ModelWalk
from .zoo.base import ConvPool, SpikingNet

__all__ = [
    "QMAX",
    "SCHEME",
    "TorchOps",
    "TORCH_OPS",
    "int8_codes",
    "int8_epilogue",
    "quantise_weight",
    "fake_quantise",
    "InputCodes",
    "Int8Quantiser",
    "stem_layer",
    "quantisable_modules",
    "spike_reading_layers",
    "attach_quantisers",
    "quantised_layers",
    "int8_weight",
]

QMAX = 127  # symmetric: -127..127 (no -128, so negation and the zero point stay exact)
SCHEME = "int8-symmetric-per-output-channel"


class TorchOps:
    """The array operations :func:`int8_codes` needs, on torch tensors laid out [..., Cout] (output channel last,
    as the exporter's weights are). ``hint`` names a graph tensor in the ONNX backend; unused here."""

    _DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

    def constant(self, value, hint: str, dtype=np.float64) -> torch.Tensor:
        return torch.tensor(value, dtype=self._DTYPES[np.dtype(dtype)])

    def abs_max(self, a: torch.Tensor, hint: str) -> torch.Tensor:
        """max |a| over every axis but the last: [Cout]."""
        return a.abs().reshape(-1, a.shape[-1]).amax(dim=0)

    def div(self, a: torch.Tensor, b: torch.Tensor, hint: str) -> torch.Tensor:
        return a / b

    def where_positive(self, a: torch.Tensor, then: torch.Tensor, otherwise: torch.Tensor, hint: str) -> torch.Tensor:
        return torch.where(a > 0, then, otherwise.to(a.device))

    def round_clip_int8(self, a: torch.Tensor, bound: int, hint: str) -> torch.Tensor:
        """int8 clip(round half to even(a), -bound, bound)."""
        return torch.clamp(torch.round(a), -bound, bound).to(torch.int8)

    # the float64 steps of :mod:`gee_deploy.batchnorm` and :func:`int8_epilogue`, on the CPU
    def stored(self, t: torch.Tensor, hint: str, dtype=np.float64) -> torch.Tensor:
        return t.detach().to("cpu", self._DTYPES[np.dtype(dtype)])

    def cast(self, a: torch.Tensor, dtype, hint: str) -> torch.Tensor:
        return a.to(self._DTYPES[np.dtype(dtype)])

    def add(self, a: torch.Tensor, b: torch.Tensor, hint: str) -> torch.Tensor:
        return a + b

    def mul(self, a: torch.Tensor, b: torch.Tensor, hint: str) -> torch.Tensor:
        return a * b

    def neg(self, a: torch.Tensor, hint: str) -> torch.Tensor:
        return -a

    def sqrt(self, a: torch.Tensor, hint: str) -> torch.Tensor:
        return torch.sqrt(a)


TORCH_OPS = TorchOps()


def int8_codes(ops, w, hint: str = "weight"):
    """The int8 rule: (q int8 [..., Cout], s float32 [Cout]) of float32 weight ``w`` [..., Cout] (output channel
    last), symmetric per output channel.

    s_o = max |w[..., o]| / 127 (1 for an all-zero channel), q = clamp(round half to even(w / s_o), -127, 127):
    the channel's largest |w| maps to exactly +-127. ``ops``: :data:`TORCH_OPS` for torch tensors, or a
    :class:`gee_deploy.export.weights.WeightOps` (numpy values, and ONNX nodes when it writes a graph: Abs,
    ReduceMax, Greater, Where, Div, QuantizeLinear with scale 1 and an int8 Clip); each backend's operations
    are IEEE float32 with the same rounding, so all give the same codes and scales bit for bit.
    """
    amax = ops.abs_max(w, f"{hint}.amax")
    step = ops.where_positive(
        amax,
        ops.div(amax, ops.constant(QMAX, "qmax", np.float32), f"{hint}.step"),
        ops.constant(1.0, "one", np.float32),
        f"{hint}.weight_scale",
    )
    return ops.round_clip_int8(ops.div(w, step, f"{hint}.ratio"), QMAX, f"{hint}.q"), step


def quantise_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`int8_codes` of a torch weight in its own layout, [Cout, ...] (output channel first):
    (q int8 [Cout, ...], s float [Cout])."""
    q, s = int8_codes(TORCH_OPS, w.detach().movedim(0, -1))
    return q.movedim(-1, 0).contiguous(), s


def fake_quantise(w: torch.Tensor) -> torch.Tensor:
    """q s in ``w``'s dtype, with a straight-through gradient: d(out)/d(w) = identity (Bengio et al. 2013)."""
    q, s = quantise_weight(w)
    wq = q.to(w.dtype) * s.view(-1, *[1] * (w.dim() - 1)).to(w.dtype)
    return w + (wq - w).detach()


def int8_epilogue(ops, step, out_scale, bias, hint: str):
    """(scale, bias), float32 [Cout], that turn an int8 layer's exact integer sums into its output:
    y_o = float32(sum_j q_oj x_j) * scale_o + bias_o.

    ``step``: the weight's float32 scale s_o (:func:`int8_codes`); ``out_scale`` / ``bias``: float64 [Cout],
    the BatchNorm's scale and the folded bias (:mod:`gee_deploy.batchnorm`). scale = float32(float64(s_o)
    x out_scale_o), rounded once; the exporter and the quantised model's eval path both call this, on their own
    ops, so they compute the same two float32 vectors bit for bit.
    """
    scale = ops.cast(
        ops.mul(ops.cast(step, np.float64, f"{hint}.step64"), out_scale, f"{hint}.scale64"),
        np.float32,
        f"{hint}.scale32",
    )
    return scale, ops.cast(bias, np.float32, f"{hint}.bias32")


# the input codes of a quantised stem: 8 bits, scale 1 / 255 (an image in [0, 1] is k / 255)
INPUT_LEVELS = 255
_EXACT_FLOAT32 = 2**24  # every integer below it is a float32, so sums of integer products below it are exact


class InputCodes:
    """A quantised stem's input: the image as centred 8-bit codes, c = clamp(round(255 x), 0, 255) - z_c.

    z_c = round(255 mean_c) is the zero point of input channel c, so c / (255 std_c) is the model's normalised
    input (x - mean_c) / std_c to within half a code, and the zero padding of the stem's conv pads with the
    normalised value 0 as the float model does. Every c is an integer in [-255, 255], exact in float32. An
    image of 8-bit pixels (Fashion-MNIST, CIFAR: k / 255) has exactly its pixels' codes; values outside [0, 1]
    saturate at 0 and 255 (docs/design.md, "Int8 layers").

    Args:
        mean, std: the model's normalisation buffers, [1, C, 1, 1].
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.zero_point = torch.round(mean.detach().float().cpu() * INPUT_LEVELS)  # [1, C, 1, 1], integers
        # the stem's weight per code: W / (255 std_c), one float32 per input channel [C]
        self.weight_scale = (1.0 / (INPUT_LEVELS * std.detach().double().cpu().flatten())).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] float in [0, 1] -> the centred codes, float32 [N, C, H, W]."""
        codes = torch.clamp(torch.round(x * float(INPUT_LEVELS)), 0.0, float(INPUT_LEVELS))
        return codes - self.zero_point.to(x.device)


class Int8Quantiser:
    """What a quantised layer's forward runs with, attached as its ``quantiser`` (:func:`attach_quantisers`).

    Training (:meth:`__call__`): the weight is :func:`fake_quantise` d, the BatchNorm after the layer runs as
    usual. Eval (:meth:`exact`): the layer computes what its int8 export computes, bit for bit: the integer sums
    of its codes over its input (0/1 spikes, or a stem's :class:`InputCodes`; each sum an integer below 2^24,
    so float32 holds it exactly whatever the order of summation), then :func:`int8_epilogue`'s scale and bias
    with the BatchNorm after the layer folded in, whose own eval forward then passes its input through.

    Args:
        batchnorm: the BatchNorm right after the layer (None when there is none).
        input_scale: a stem's :attr:`InputCodes.weight_scale`, [Cin] (None for a layer reading spikes): its
            codes are those of W / (255 std_c), the weight per input code.
    """

    def __init__(self, batchnorm: nn.Module | None, input_scale: torch.Tensor | None = None):
        self._batchnorm = (batchnorm,)  # held in a tuple: not a submodule, so the layer's state_dict keys stay
        self.input_scale = input_scale

    @property
    def batchnorm(self) -> nn.Module | None:
        return self._batchnorm[0]

    def source(self, w: torch.Tensor) -> torch.Tensor:
        """The float32 weight [Cout, Cin, ...] whose int8 codes the layer runs with."""
        if self.input_scale is None:
            return w
        return w * self.input_scale.to(w.device).view(1, -1, *[1] * (w.dim() - 2))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantise(self.source(w))

    @torch.no_grad()
    def exact(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, linear_op) -> torch.Tensor:
        """The layer's eval output: ``linear_op(x, codes)`` (its conv or linear without bias) times the scale,
        plus the bias, both per output channel; ``w``: the float32 weight the codes are taken from, [Cout, ...]."""
        q, step = quantise_weight(self.source(w))
        acc = linear_op(x, q.to(x.dtype))
        bn = self.batchnorm
        out_scale, shift = batchnorm_affine(TORCH_OPS, bn, q.shape[0], "bn")
        scale, b = int8_epilogue(
            TORCH_OPS, step.cpu(), out_scale, folded_bias(TORCH_OPS, out_scale, shift, bias, "layer"), "layer"
        )
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        return acc * scale.to(acc.device).view(shape) + b.to(acc.device).view(shape)


def _absorbed_batchnorm(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook of a BatchNorm that an :class:`Int8Quantiser` folds into its layer in eval: the layer's
    output already has it, so in eval the BatchNorm passes its input through (in training it runs as usual)."""
    return None if module.training else args[0]


def quantisable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> the module whose weight gets quantised, per weight layer (a ConvPool under its conv's name)."""
    out: dict[str, nn.Module] = {}
    inside_pool = set()
    for name, m in model.named_modules():
        if isinstance(m, ConvPool):
            out[f"{name}.0"] = m
            inside_pool.add(f"{name}.0")
        elif isinstance(m, (GeneticConv2d, GeneticLinear, nn.Conv2d, nn.Linear)) and name not in inside_pool:
            out[name] = m
    return out


class _Pairs(ModelWalk[None]):
    """The model walk, noting each weight layer's BatchNorm (the walk's rule: the one right after it)."""

    def __init__(self, model: SpikingNet):
        super().__init__(model)
        self.batchnorms: dict[str, nn.Module | None] = {}

    def emit_weight(self, name, m, bn, x, out_shape, pooled, dense_macs, calls):
        self.batchnorms[name] = bn
        return super().emit_weight(name, m, bn, x, out_shape, pooled, dense_macs, calls)


def _walked(model: SpikingNet) -> _Pairs:
    was_training = model.training
    model.eval()  # the walk runs one sample through every module: no BatchNorm statistics may move
    try:
        walk = _Pairs(model)
        walk.walk()
        return walk
    finally:
        model.train(was_training)


def spike_reading_layers(model: SpikingNet) -> list[str]:
    """Weight layers whose input is a LIF's binary spikes, as the model walk follows them by data flow
    (:mod:`gee_deploy.walk`: max pooling and flatten keep spikes binary, average pooling and residual sums do
    not). Structural: the answer does not depend on the weights or on any data."""
    return [layer.name for layer in _walked(model).layers if layer.input_is_spikes]


def stem_layer(model: SpikingNet) -> str:
    """The name of the weight layer that reads the image (the first the model runs)."""
    return _walked(model).layers[0].name


def attach_quantisers(model: SpikingNet, layers: Iterable[str]) -> None:
    """Make each named layer compute with int8 weights: :class:`Int8Quantiser` (fake quantisation in training,
    the exact int8 arithmetic of its export in eval). The stem (:func:`stem_layer`) among ``layers`` reads the
    image as :class:`InputCodes`, which the model then computes (``model.input_codes``).

    Raises:
        ConfigError: a name that is not a weight layer of ``model``, a plain nn.Conv2d / nn.Linear, or a stem
            whose integer sums could exceed float32's exact range (C x k x k x 255 x 127 >= 2^24).
    """
    modules = quantisable_modules(model)
    walked = _walked(model)
    stem = walked.layers[0].name
    attach: list[tuple[ConvPool | GeneticConv2d | GeneticLinear, Int8Quantiser]] = []
    codes = None
    for name in layers:  # every name checked before any layer changes
        m = modules.get(name)
        if m is None:
            raise ConfigError(f"{name!r} is not a weight layer of {type(model).__name__}")
        if not isinstance(m, (ConvPool, GeneticConv2d, GeneticLinear)):
            raise ConfigError(
                f"cannot quantise {name} ({type(m).__name__}): int8 fine-tuning supports genetic "
                "layers and ConvPool convs"
            )
        input_scale = None
        if name == stem:
            if _taps(m) * INPUT_LEVELS * QMAX >= _EXACT_FLOAT32:
                raise ConfigError(
                    f"cannot quantise the stem {name}: the sums of its {_taps(m)} taps of 8-bit codes may exceed "
                    "float32's exact integers"
                )
            codes = InputCodes(model.mean, model.std)
            input_scale = codes.weight_scale
        attach.append((m, Int8Quantiser(walked.batchnorms.get(name), input_scale)))
    for m, quantiser in attach:
        bn = quantiser.batchnorm
        if bn is not None and _absorbed_batchnorm not in bn._forward_hooks.values():
            bn.register_forward_hook(_absorbed_batchnorm)
        m.quantiser = quantiser
    if codes is not None:
        model.input_codes = codes


def _taps(m: nn.Module) -> int:
    """Inputs per output of the conv / linear that runs: C x k x k (a ConvPool's fused kernel), or features."""
    if isinstance(m, GeneticLinear):
        return m.in_features
    assert isinstance(m, (ConvPool, GeneticConv2d))
    return m.in_channels * m.kernel_size**2


def quantised_layers(model: nn.Module) -> list[str]:
    """Names of the layers that run with quantised weights."""
    return [n for n, m in quantisable_modules(model).items() if getattr(m, "quantiser", None) is not None]


@torch.no_grad()
def int8_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8, s float32 [Cout]) of the weight ``module``'s forward runs with: the fused kernel of a ConvPool,
    the generated W of a genetic layer (generated in float64, rounded to float32 once: ``exact_weight``, the
    weight the exporter computes too), the plain weight otherwise; the codes equal those the fake-quantised
    forward uses (a quantised stem's: those of W / (255 std_c), :class:`InputCodes`)."""
    if isinstance(module, ConvPool):
        w = module.quantisation_source()
    elif isinstance(module, (GeneticConv2d, GeneticLinear)):
        w = module.exact_weight()
    else:
        weight = module.weight
        assert isinstance(weight, torch.Tensor), f"{type(module).__name__} has no weight tensor"
        w = weight
    quantiser = getattr(module, "quantiser", None)
    return quantise_weight(quantiser.source(w.float()) if isinstance(quantiser, Int8Quantiser) else w.float())
