"""CIFARNet of STBP (Wu et al. 2018/2019, the paper's [6], [38]).

128C3 -> 256C3 -> MP2 -> 512C3 -> MP2 -> 1024C3 -> 512C3 -> AP2 -> FC1024 -> FC512 -> FC classes, every
conv followed by BN and LIF. The flatten + FC1024 is written as a valid conv over the 4x4 map, which is the
same function and lets the genetic twin use per-tap encodings there too.
"""

from __future__ import annotations

from torch import nn

from ..neurons import LIF, SeqToBatch
from .base import SpikingNet, conv_bn, pooled_side
from .registry import register_model


class CIFARNet(SpikingNet):
    def __init__(self, **kw):
        super().__init__(**kw)
        factory = self.factory
        for name, width in [("c1", 128), ("c2", 256), ("c3", 512), ("c4", 1024), ("c5", 512)]:
            factory.population(name, width)
        side = pooled_side(self.image_size, 3)  # after MP2, MP2, AP2
        factory.population("fc1", 1024, taps=side * side)
        factory.population("fc2", 512, taps=1)
        factory.population("classes", self.num_classes, taps=1)
        self.stem = nn.Sequential(factory.conv("input", "c1", 3), nn.BatchNorm2d(128))
        self.body = nn.Sequential(
            LIF(),
            conv_bn(factory, "c1", "c2"),
            LIF(),
            SeqToBatch(nn.MaxPool2d(2)),
            conv_bn(factory, "c2", "c3"),
            LIF(),
            SeqToBatch(nn.MaxPool2d(2)),
            conv_bn(factory, "c3", "c4"),
            LIF(),
            conv_bn(factory, "c4", "c5"),
            LIF(),
            SeqToBatch(nn.AvgPool2d(2)),
            conv_bn(factory, "c5", "fc1", kernel_size=side, padding=0),
            LIF(),
            SeqToBatch(nn.Flatten(), factory.linear("fc1", "fc2"), nn.BatchNorm1d(512)),
            LIF(),
            SeqToBatch(factory.linear("fc2", "classes")),
        )


@register_model
def cifarnet(
    *,
    genes: int | None = 150,
    timesteps: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean=None,
    std=None,
    init: str = "kaiming",
) -> CIFARNet:
    """CIFARNet at the paper's g = 150 (Table II: 3.72 M genetic / 17.54 M dense as the paper counts)."""
    return CIFARNet(
        genes=genes,
        timesteps=timesteps,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean,
        std=std,
        init=init,
    )
