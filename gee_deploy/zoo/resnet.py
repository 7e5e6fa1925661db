"""Spiking ResNets: ResNet-18 (CIFAR), ResNet-19 (Zheng et al. tdBN, the paper's [33]), ResNet-34 (ImageNet).

Basic block as in Spiking ResNet / tdBN: out = LIF(BN(conv2(LIF(BN(conv1(x))))) + shortcut(x)), the
residual added to the membrane input. Populations (eq. 3): a block's output shares its input's
population when the shortcut is the identity (the residual add writes into the same feature maps); a
downsampling block opens a new population written by both conv2 and the 1x1 shortcut (centre tap).
"""

from __future__ import annotations

from torch import nn

from ..genetic import LayerFactory
from ..neurons import LIF, SeqToBatch
from .base import SpikingNet, check_widths, conv_bn, pooled_head
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, factory: LayerFactory, src: str, mid: str, dst: str, stride: int):
        super().__init__()
        self.conv1 = conv_bn(factory, src, mid, 3, stride)
        self.lif1 = LIF()
        self.conv2 = conv_bn(factory, mid, dst, 3)
        self.shortcut = conv_bn(factory, src, dst, 1, stride, 0) if src != dst else nn.Identity()
        self.lif2 = LIF()

    def forward(self, x_seq):  # [T, N, C, H, W] spikes
        out = self.conv2(self.lif1(self.conv1(x_seq)))
        return self.lif2(out + self.shortcut(x_seq))


class ResNet(SpikingNet):
    def __init__(
        self,
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        stem_width: int,
        imagenet_stem: bool,
        hidden: tuple[int, ...] = (),
        **kw,
    ):
        super().__init__(stem_kernel=7 if imagenet_stem else 3, **kw)
        factory = self.factory
        src = factory.population("stem", stem_width)
        if imagenet_stem:
            self.stem = nn.Sequential(factory.conv("input", src, 7, 2), nn.BatchNorm2d(stem_width))
            layers: list[nn.Module] = [LIF(), SeqToBatch(nn.MaxPool2d(3, 2, 1))]
        else:
            self.stem = nn.Sequential(factory.conv("input", src, 3), nn.BatchNorm2d(stem_width))
            layers = [LIF()]
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            for block in range(count):
                stride = 2 if (stage > 0 and block == 0) else 1
                mid = factory.population(f"s{stage}b{block}mid", width)
                keeps_population = stride == 1 and factory.channels[src] == width
                dst = src if keeps_population else factory.population(f"s{stage}out", width)
                layers.append(BasicBlock(factory, src, mid, dst, stride))
                src = dst
        self.body = nn.Sequential(*layers, *pooled_head(factory, src, hidden, self.num_classes))


def _resnet(blocks, widths, stem_width, imagenet_stem, hidden=(), **kw) -> ResNet:
    return ResNet(blocks, widths, stem_width, imagenet_stem, hidden, **kw)


@register_model
def resnet18(
    *,
    genes: int | None = 150,
    timesteps: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean=None,
    std=None,
    init: str = "kaiming",
) -> ResNet:
    """CIFAR ResNet-18: 3x3 stem, [2, 2, 2, 2] blocks of 64-512 channels (11.2 M dense parameters)."""
    return _resnet(
        (2, 2, 2, 2),
        (64, 128, 256, 512),
        64,
        False,
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
def resnet19(
    *,
    genes: int | None = 150,
    timesteps: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean=None,
    std=None,
    init: str = "kaiming",
    widths=(128, 256, 512),
    hidden: int = 256,
) -> ResNet:
    """tdBN ResNet-19: 3x3 stem of 128, [3, 3, 2] blocks of 128-512, FC256 (12.6 M dense parameters).

    Args:
        widths: channels of the three stages; the stem has the first stage's (``model.args.widths``).
        hidden: neurons of the hidden fully connected layer.

    Raises:
        ValueError: ``widths`` is not three integers >= 1, or ``hidden`` is not an integer >= 1.
    """
    check_widths(widths, 3, hidden)
    return _resnet(
        (3, 3, 2),
        widths,
        widths[0],
        False,
        (hidden,),
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
def resnet34(
    *,
    genes: int | None = 150,
    timesteps: int = 4,
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    mean=None,
    std=None,
    init: str = "kaiming",
) -> ResNet:
    """ImageNet ResNet-34: 7x7/2 stem + max pool, [3, 4, 6, 3] blocks of 64-512 (21.8 M dense parameters)."""
    return _resnet(
        (3, 4, 6, 3),
        (64, 128, 256, 512),
        64,
        True,
        genes=genes,
        timesteps=timesteps,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean,
        std=std,
        init=init,
    )
