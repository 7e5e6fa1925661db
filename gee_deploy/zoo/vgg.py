"""Spiking VGG-11 (Rathi et al., the paper's [24]) and VGG-16 (ANN2SNN [37]) with BN and LIF.

Conv stacks as in Simonyan & Zisserman; 'M' is a 2x2 max pool (keeps conv inputs binary), skipped where the
map is already 1x1 (a 28x28 input has four pools' worth of map, 32x32 five). VGG-11 ends in
global average pooling and one FC; VGG-16 keeps the 4096-4096 classifier of the 33.6 M-parameter CIFAR
model the paper compares with.
"""

from __future__ import annotations

from torch import nn

from ..neurons import LIF, SeqToBatch
from .base import SpikingNet, check_widths, conv_bn, pooled_head
from .registry import register_model

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(SpikingNet):
    def __init__(self, config: list, classifier: tuple[int, ...], widths: tuple[int, ...] | None = None, **kw):
        super().__init__(**kw)
        factory = self.factory
        if widths is not None:  # the same stack with other channel counts, in order
            slots = iter(widths)
            config = [c if c == "M" else next(slots) for c in config]
        conv_widths: list[int] = [c for c in config if c != "M"]
        pops = [factory.population(f"c{i}", w) for i, w in enumerate(conv_widths)]
        self.stem = nn.Sequential(factory.conv("input", pops[0], 3), nn.BatchNorm2d(conv_widths[0]))
        layers: list[nn.Module] = [LIF()]
        src = pops[0]
        i = 1
        side = self.image_size
        for c in config[1:]:
            if c == "M":
                if side >= 2:
                    layers.append(SeqToBatch(nn.MaxPool2d(2)))
                    side //= 2
            else:
                layers += [conv_bn(factory, src, pops[i]), LIF()]
                src = pops[i]
                i += 1
        self.body = nn.Sequential(*layers, *pooled_head(factory, src, classifier, self.num_classes))


@register_model
def vgg11(
    *,
    genes: int | None = 150,
    timesteps: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean=None,
    std=None,
    init: str = "kaiming",
    widths=(64, 128, 256, 256, 512, 512, 512, 512),
) -> VGG:
    """VGG-11 with a single FC classifier (9.2 M dense parameters at 10 classes).

    Args:
        widths: channels of the eight convs in order (``model.args.widths``).

    Raises:
        ValueError: ``widths`` is not eight integers >= 1.
    """
    check_widths(widths, 8)
    return VGG(
        CONFIGS["vgg11"],
        (),
        widths,
        genes=genes,
        timesteps=timesteps,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean,
        std=std,
        init=init,
    )


@register_model
def vgg16(
    *,
    genes: int | None = 150,
    timesteps: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean=None,
    std=None,
    init: str = "kaiming",
) -> VGG:
    """VGG-16 with the 4096-4096 classifier (33.6 M dense parameters at 10 classes, as in [37])."""
    return VGG(
        CONFIGS["vgg16"],
        (4096, 4096),
        genes=genes,
        timesteps=timesteps,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean,
        std=std,
        init=init,
    )
