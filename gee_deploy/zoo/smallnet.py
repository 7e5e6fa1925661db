"""A small spiking CNN sized for 28x28 images on a CPU (our own design, not from the paper).

stem 32C3 -> LIF -> MP2 -> 64C3 -> LIF -> MP2 -> 128C3 -> LIF -> MP2 -> FC256 (as a valid conv over the
remaining map) -> LIF -> FC classes. Max pooling keeps every conv input binary (spikes).
"""
from __future__ import annotations

from torch import nn

from . import register_model
from .base import Lif, SpikingNet, conv_bn
from ..neurons import SeqToBatch


class SmallNet(SpikingNet):
    def __init__(self, widths=(32, 64, 128), hidden: int = 256, **kw):
        super().__init__(**kw)
        f = self.factory
        c1, c2, c3 = (f.population(f"c{i + 1}", w) for i, w in enumerate(widths))
        side = self.image_size // 8  # map side left after three 2x2 pools
        f.population("hidden", hidden, taps=side * side)
        f.population("classes", self.num_classes, taps=1)
        self.stem = nn.Sequential(f.conv("input", c1, 3), nn.BatchNorm2d(widths[0]))
        self.body = nn.Sequential(
            Lif(), SeqToBatch(nn.MaxPool2d(2)),
            conv_bn(f, c1, c2), Lif(), SeqToBatch(nn.MaxPool2d(2)),
            conv_bn(f, c2, c3), Lif(), SeqToBatch(nn.MaxPool2d(2)),
            conv_bn(f, c3, "hidden", kernel_size=side, padding=0), Lif(),
            SeqToBatch(nn.Flatten(), f.linear("hidden", "classes")),
        )


@register_model
def smallnet(*, genes: int | None = 32, timesteps: int = 4, num_classes: int = 10, in_channels: int = 1,
             image_size: int = 28, mean=None, std=None) -> SmallNet:
    """SmallNet for Fashion-MNIST-sized inputs (about 0.4 M dense parameters)."""
    return SmallNet(genes=genes, timesteps=timesteps, num_classes=num_classes, in_channels=in_channels,
                    image_size=image_size, mean=mean, std=std)
