"""What every architecture shares: input checks, in-graph normalisation, the once-computed stem, T."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..genetic import GeneticConv2d, LayerFactory, WeightQuantiser
from ..neurons import LIF, SeqToBatch

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

__all__ = [
    "ConvPool",
    "SpikingNet",
    "check_widths",
    "pooled_side",
    "conv_bn",
    "conv_pool_bn",
    "fuse_average_pool",
    "pooled_head",
]


def check_widths(widths, count: int, hidden=None) -> None:
    """Check an architecture's width arguments as a recipe's ``model.args`` give them (arrays arrive as tuples).

    Raises:
        ValueError: ``widths`` is not ``count`` integers >= 1, or ``hidden`` (unless None) not an integer >= 1.
    """
    if not (isinstance(widths, tuple) and len(widths) == count and all(_positive_int(w) for w in widths)):
        raise ValueError(f"widths must be {count} integers >= 1 (conv channels), got {widths!r}")
    if hidden is not None and not _positive_int(hidden):
        raise ValueError(f"hidden must be an integer >= 1, got {hidden!r}")


def pooled_side(image_size: int, pools: int) -> int:
    """The map side left after ``pools`` 2x2 pools of an ``image_size`` input.

    Raises:
        ValueError: no map is left (the architecture needs a larger input).
    """
    side = image_size // 2**pools
    if side < 1:
        raise ValueError(
            f"image_size {image_size} leaves no feature map after {pools} 2x2 pools; it must be >= {2**pools}"
        )
    return side


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def conv_bn(
    factory: LayerFactory, src: str, dst: str, kernel_size: int = 3, stride: int = 1, padding: int | None = None
) -> SeqToBatch:
    """Conv (genetic or dense) + BatchNorm applied to [T, N, C, H, W] with T folded into the batch."""
    return SeqToBatch(factory.conv(src, dst, kernel_size, stride, padding), nn.BatchNorm2d(factory.channels[dst]))


class ConvPool(nn.Sequential):
    """A stride-1 "same" k x k conv followed by 2x2 average pooling, computed as one (k+1) x (k+1) conv of stride 2.

    Averaging the four conv outputs of a pooling window equals one conv whose kernel is the k x k kernel
    box-filtered to (k+1) x (k+1): exact, with (k+1)^2 / (4 k^2) of the MACs (16/36 for k = 3) and no
    pooling pass. Both children stay as they are, so checkpoints and the genome see a plain conv and a plain
    pool; the ONNX export writes the same fused conv (dense form) or the factorised conv + AveragePool.
    """

    kernel_size: int
    stride: int
    padding: int

    def __init__(self, conv: nn.Conv2d | GeneticConv2d):
        k, stride, padding = (_first(v) for v in (conv.kernel_size, conv.stride, conv.padding))
        plain = (
            getattr(conv, "groups", 1) == 1
            and getattr(conv, "dilation", 1) in (1, (1, 1))
            and getattr(conv, "padding_mode", "zeros") == "zeros"
        )
        if not isinstance(k, int) or stride != 1 or k % 2 == 0 or padding != k // 2 or not plain:
            raise ValueError(
                f"ConvPool needs an odd-kernel stride-1 'same' conv without groups or dilation, got {conv}"
            )
        super().__init__(conv, nn.AvgPool2d(2))
        # the geometry of the fused conv that runs (what MAC counts read)
        self.in_channels, self.kernel_size, self.stride, self.padding = conv.in_channels, k + 1, 2, k // 2
        # fused kernel -> the kernel that runs (int8 fake quantisation, see gee_deploy.quantisation); None = as is
        self.quantiser: WeightQuantiser | None = None

    @property
    def conv(self) -> nn.Conv2d | GeneticConv2d:
        """The k x k conv (child 0)."""
        conv = self[0]
        assert isinstance(conv, (nn.Conv2d, GeneticConv2d))  # __init__ took one
        return conv

    def fused_weight(self) -> torch.Tensor:
        """The (k+1) x (k+1) kernel of the conv + pool, before any quantiser: [Cout, Cin, k+1, k+1]."""
        return fuse_average_pool(self.conv.weight)

    def quantisation_source(self) -> torch.Tensor:
        """The fused kernel int8 codes are taken from: of the conv's ``exact_weight`` where it has one (genetic)."""
        conv = self.conv
        return fuse_average_pool(conv.exact_weight() if isinstance(conv, GeneticConv2d) else conv.weight)

    def running_weight(self) -> torch.Tensor:
        """The kernel :meth:`forward` convolves with: the fused kernel, or its ``quantiser`` image; [Cout, Cin, k+1, k+1]."""
        return self.fused_weight() if self.quantiser is None else self.quantiser(self.quantisation_source())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = getattr(self[0], "bias", None)
        if self.quantiser is not None and not self.training:  # the int8 export's arithmetic, bit for bit
            return self.quantiser.exact(x, self.quantisation_source(), bias, self._conv)
        return F.conv2d(x, self.running_weight(), bias, stride=self.stride, padding=self.padding)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, stride=self.stride, padding=self.padding)


def _first(v):
    """A square geometry value as one number: ``(3, 3)`` -> 3, ``3`` -> 3 (a string padding stays as is)."""
    return v[0] if isinstance(v, tuple) else v


def fuse_average_pool(weight: torch.Tensor) -> torch.Tensor:
    """The (k+1) x (k+1) stride-2 kernel of a k x k "same" conv followed by 2x2 average pooling: [..., k+1, k+1]."""
    w = F.pad(weight, (0, 1, 0, 1))
    return (w + w.roll(1, -1) + w.roll(1, -2) + w.roll((1, 1), (-2, -1))) * 0.25


def conv_pool_bn(factory: LayerFactory, src: str, dst: str, kernel_size: int = 3) -> SeqToBatch:
    """Conv + 2x2 average pool (fused, see :class:`ConvPool`) + BatchNorm on [T, N, C, H, W]."""
    return SeqToBatch(ConvPool(factory.conv(src, dst, kernel_size)), nn.BatchNorm2d(factory.channels[dst]))


def pooled_head(factory: LayerFactory, src: str, hidden: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    """Global average pool, hidden FC + BN + LIF layers of widths ``hidden``, then the classifier FC."""
    layers: list[nn.Module] = [SeqToBatch(nn.AdaptiveAvgPool2d(1), nn.Flatten())]
    for j, width in enumerate(hidden):
        dst = factory.population(f"fc{j}", width, taps=1)
        layers += [SeqToBatch(factory.linear(src, dst), nn.BatchNorm1d(width)), LIF()]
        src = dst
    factory.population("classes", num_classes, taps=1)
    layers.append(SeqToBatch(factory.linear(src, "classes")))
    return layers


class SpikingNet(nn.Module):
    """Base of the zoo: [N, C, H, W] float in [0, 1] -> logits [N, classes] (mean over T of the classifier).

    Subclasses build ``self.stem`` (conv + BN on [N, C, H, W], run once: with direct encoding every
    timestep sees the same image, so repeating the result over T is exact and T times cheaper) and
    ``self.body`` ([T, N, ...] -> per-step logits [T, N, classes]).

    Args:
        genes: g, the gene count; None builds the dense twin with plain convs.
        timesteps: T.
        num_classes: classifier width.
        in_channels: image channels.
        image_size: H = W of the input.
        mean: per-channel normalisation mean (inside the model); None = 0.5.
        std: per-channel normalisation std; None = 0.5.
        stem_kernel: kernel size of the first conv (sets the input population's tap count).
        init: the genetic layers' initialisation, ``"kaiming"`` or ``"paper"`` (:mod:`gee_deploy.genetic`).
    """

    stem: nn.Module
    body: nn.Module
    mean: torch.Tensor  # buffer [1, C, 1, 1]
    std: torch.Tensor  # buffer [1, C, 1, 1]
    model_name: str  # set by zoo.create_model
    model_args: dict  # set by zoo.create_model
    checkpoint: Checkpoint  # set by checkpoint.load_model: the file's metadata

    def __init__(
        self,
        *,
        genes: int | None,
        timesteps: int,
        num_classes: int,
        in_channels: int,
        image_size: int,
        mean=None,
        std=None,
        stem_kernel: int = 3,
        init: str = "kaiming",
    ):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.timesteps = timesteps
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.factory = LayerFactory(genes, init=init)
        if self.factory.genome is not None:
            self.genome = self.factory.genome
        mean = mean if mean is not None else (0.5,) * in_channels
        std = std if std is not None else (0.5,) * in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.factory.population("input", in_channels, taps=stem_kernel * stem_kernel)
        # a quantised stem's input: [N, C, H, W] in [0, 1] -> centred 8-bit codes (gee_deploy.quantisation)
        self.input_codes: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def genes(self) -> int | None:
        return self.factory.genes

    def check_input(self, x: torch.Tensor) -> None:
        channels, side = self.in_channels, self.image_size
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != side or x.shape[3] != side:
            raise ValueError(f"expected input [N, {channels}, {side}, {side}], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point input in [0, 1], got dtype {x.dtype}")

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-timestep classifier outputs Y(t): [T, N, classes] (evolution's r1 reads these)."""
        self.check_input(x)
        x = self.input_codes(x) if self.input_codes is not None else (x - self.mean) / self.std
        stem = self.stem(x)  # [N, C, H, W], once
        x_seq = stem.unsqueeze(0).expand(self.timesteps, *stem.shape)  # [T, N, C, H, W]
        return self.body(x_seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x).mean(0)
