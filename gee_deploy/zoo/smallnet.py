"""A small spiking CNN sized for 28x28 images on a CPU (our own design, not from the paper).

32C3 -> AP2 -> BN -> LIF -> 64C3 -> AP2 -> BN -> LIF -> 128C3 -> AP2 -> BN -> LIF -> FC256 (as a valid
conv over the remaining 3x3 map) -> BN -> LIF -> FC classes. Pooling the membrane input before the LIF
(rather than the spikes after it) keeps every conv input binary, runs the LIFs on 4x fewer neurons and
lets the stem's pool run once instead of T times; with the BN after the pool, each conv + pool runs as one
stride-2 conv (:class:`~gee_deploy.zoo.base.ConvPool`, 16/36 of the MACs): the cheapest ordering on a CPU.
"""

from __future__ import annotations

from torch import nn

from ..neurons import LIF, SeqToBatch
from .base import ConvPool, SpikingNet, check_widths, conv_bn, conv_pool_bn, pooled_side
from .registry import register_model


class SmallNet(SpikingNet):
    def __init__(self, widths=(32, 64, 128), hidden: int = 256, **kw):
        super().__init__(**kw)
        factory = self.factory
        c1, c2, c3 = (factory.population(f"c{i + 1}", w) for i, w in enumerate(widths))
        side = pooled_side(self.image_size, 3)
        factory.population("hidden", hidden, taps=side * side)
        factory.population("classes", self.num_classes, taps=1)
        self.stem = nn.Sequential(ConvPool(factory.conv("input", c1, 3)), nn.BatchNorm2d(widths[0]))
        self.body = nn.Sequential(
            LIF(),
            conv_pool_bn(factory, c1, c2),
            LIF(),
            conv_pool_bn(factory, c2, c3),
            LIF(),
            conv_bn(factory, c3, "hidden", kernel_size=side, padding=0),
            LIF(),
            SeqToBatch(nn.Flatten(), factory.linear("hidden", "classes")),
        )


@register_model
def smallnet(
    *,
    genes: int | None = 32,
    timesteps: int = 4,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    mean=None,
    std=None,
    widths=(32, 64, 128),
    hidden: int = 256,
    init: str = "kaiming",
) -> SmallNet:
    """SmallNet for Fashion-MNIST-sized inputs (about 0.4 M dense parameters at the default widths).

    Args:
        widths: channels of the three conv populations (a recipe sets them as ``model.args.widths``).
        hidden: neurons of the hidden fully connected population.

    Raises:
        ValueError: ``widths`` is not three integers >= 1, or ``hidden`` is not an integer >= 1.
    """
    check_widths(widths, 3, hidden)
    return SmallNet(
        genes=genes,
        timesteps=timesteps,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean,
        std=std,
        widths=widths,
        hidden=hidden,
        init=init,
    )
