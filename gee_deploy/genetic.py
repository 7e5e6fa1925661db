"""Genetic encoding of weights (Pan et al., "Evolving Efficient Genetic Encoding for Deep SNNs", eq. 1-3).

A conv weight W in R^{Cout x Cin x k x k} is generated per kernel tap p:

.. math:: W[o, i, p] = s \\sum_{a,b} E_{in}[i, p, a] \\, G[a, b] \\, E_{out}[o, p, b]

with E_in in R^{Cin x k^2 x g}, E_out in R^{Cout x k^2 x g} and one global G in R^{g x g}. Each feature-map
*population* (the channels one layer writes and the next reads) owns one encoding, so layer i's E_out is
layer i+1's E_in (eq. 3). A 1x1 conv or a Linear layer reads the centre tap of a population's encoding.
Where a layer's kernel size differs from its population's tap count (a 7x7 stem writing a population read
by 3x3 convs), :meth:`Genome.encoding` gives that layer a private encoding of its own.

Initialisation (``init``, the recipe's ``model.init``), one of :data:`INITS`:

- ``"kaiming"`` (default): ``scale`` is (Kaiming std of the layer) / g, computed from shapes only, and E is
  drawn N(0, 1) clipped to [-3, 3], G N(0, 1). Unit-variance E and G then give Kaiming-like W (std
  sqrt(2 / fan_in)), while beta1 and the magnitude of G still change W (the evolution searches over them).
  The constant is our choice: eq. 1 has none.
- ``"paper"``: the literal reading of eq. 1 and of the ablation's Random model ("X_i, O ~ N(0, 1)", section
  IV, Table IV): ``scale`` = 1, E ~ N(0, 1) unclipped, G ~ N(0, 1). W is then a sum of g^2 products of three
  unit normals, so its std is g, whatever the layer's fan-in (g / sqrt(2 / fan_in) times the Kaiming std).
  Evolved phenotypes (eq. 9) go through the same ``scale`` = 1, so beta1 and G set W's spread alone:
  W std = beta1^2 g std(G), Kaiming-matched at beta1 = sqrt(sqrt(2 / fan_in) / g) for unit G.

The dense twin's plain layers keep PyTorch's own initialisation under either value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .kinds import Init


class WeightQuantiser(Protocol):
    """What a quantised layer runs with (:class:`gee_deploy.quantisation.Int8Quantiser`): called on the float
    weight in training; in eval, :meth:`exact` computes the layer's output as its int8 export does."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor: ...

    def exact(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        bias: torch.Tensor | None,
        linear_op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor: ...


__all__ = [
    "INITS",
    "Genome",
    "GeneticConv2d",
    "GeneticLinear",
    "LayerFactory",
    "kaiming_std",
    "weight_scale",
    "eq2_parameters",
]


INITS = tuple(
    i.value for i in Init
)  # model.init: Kaiming-matched scale (ours) | eq. 1 and Table IV's N(0, 1) literally


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def weight_scale(init: str, fan_in: int, genes: int) -> float:
    """The constant s of W = s E_in G E_out^T: sqrt(2 / fan_in) / g for ``"kaiming"``, 1 for ``"paper"`` (eq. 1).

    Raises:
        ValueError: ``init`` is not one of :data:`INITS`.
    """
    _check_init(init)
    return kaiming_std(fan_in) / genes if init == "kaiming" else 1.0


def kaiming_std(fan_in: int) -> float:
    """Std of Kaiming-normal init for a ReLU-like layer with ``fan_in`` inputs."""
    return math.sqrt(2.0 / fan_in)


def eq2_parameters(c_in: int, c_out: int, kernel_size: int, genes: int) -> int:
    """Parameter count of one standalone genetic layer (eq. 2): g (Cin k^2 + g + Cout k^2)."""
    k2 = kernel_size * kernel_size
    return genes * (c_in * k2 + genes + c_out * k2)


def _tap_slice(encoding: torch.Tensor, kernel_size: int) -> slice:
    """Which taps of a population encoding [C, taps, g] a layer of ``kernel_size`` reads."""
    taps = encoding.shape[1]
    need = kernel_size * kernel_size
    if taps == need:
        return slice(0, taps)
    if kernel_size == 1 and math.isqrt(taps) ** 2 == taps and taps % 2 == 1:
        centre = taps // 2
        return slice(centre, centre + 1)
    raise ValueError(f"encoding with {taps} taps cannot serve a {kernel_size}x{kernel_size} kernel")


class _GeneticWeight(nn.Module):
    """Shared part of genetic layers: holds references to E_in, E_out, G and generates W."""

    scale: torch.Tensor  # buffer, 0-d: the init scale of eq. 1 (weight_scale)

    def __init__(
        self,
        e_in: nn.Parameter,
        e_out: nn.Parameter,
        gene_matrix: nn.Parameter,
        kernel_size: int,
        init: str = "kaiming",
    ):
        super().__init__()
        if e_in.shape[-1] != gene_matrix.shape[0] or e_out.shape[-1] != gene_matrix.shape[1]:
            raise ValueError(
                f"encodings {tuple(e_in.shape)} / {tuple(e_out.shape)} do not match G {tuple(gene_matrix.shape)}"
            )
        # The same Parameter objects are registered in every layer that uses them (eq. 3 sharing);
        # Module.parameters() de-duplicates them, so counts and optimisers see each once.
        self.e_in_full = e_in
        self.e_out_full = e_out
        self.gene_matrix = gene_matrix
        self.kernel_size = kernel_size
        self._in_taps = _tap_slice(e_in, kernel_size)
        self._out_taps = _tap_slice(e_out, kernel_size)
        fan_in = e_in.shape[0] * kernel_size * kernel_size
        scale = weight_scale(init, fan_in, gene_matrix.shape[0])
        self.register_buffer("scale", torch.tensor(scale), persistent=False)
        # W -> the weight the forward uses (int8 fake quantisation, see gee_deploy.quantisation); None = W
        self.quantiser: WeightQuantiser | None = None

    @property
    def unquantised_shape(self) -> tuple[int, ...]:
        """The layer's weight shape (each layer type defines it)."""
        raise NotImplementedError

    @property
    def unquantised_weight(self) -> torch.Tensor:
        """The generated W in the layer's weight shape (each layer type defines it)."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The weight the forward uses: the generated W, or ``quantiser`` of :meth:`exact_weight` when one is attached."""
        return self.unquantised_weight if self.quantiser is None else self.quantiser(self.exact_weight())

    @property
    def genes(self) -> int:
        return self.gene_matrix.shape[0]

    @property
    def e_in(self) -> torch.Tensor:
        """Encoding of the input population as this layer reads it: [Cin, k*k, g]."""
        return self.e_in_full[:, self._in_taps]

    @property
    def e_out(self) -> torch.Tensor:
        """Encoding of the output population as this layer reads it: [Cout, k*k, g]."""
        return self.e_out_full[:, self._out_taps]

    def generate(self) -> torch.Tensor:
        """W as [Cout, Cin, k*k] (eq. 1, per tap); called once per forward, for all T timesteps."""
        e_in_g = torch.matmul(self.e_in, self.gene_matrix)  # [Cin, p, g]
        # [p, Cout, g] @ [p, g, Cin] -> [p, Cout, Cin]
        w = torch.matmul(self.e_out.transpose(0, 1), e_in_g.permute(1, 2, 0))
        return w.permute(1, 2, 0) * self.scale  # [Cout, Cin, p]

    def exact_weight(self) -> torch.Tensor:
        """W generated in float64 and rounded to float32 once, in the layer's weight shape (differentiable).

        The weight int8 codes are taken from (:mod:`gee_deploy.quantisation`): the exporter computes the same
        products in the same order (per tap, s * E_out G^T first, then times E_in; docs/export.md, "Storage"),
        so the codes do not depend on which BLAS summed the float32 product :meth:`generate` runs.
        """
        e_in, e_out, gene_matrix = (t.double() for t in (self.e_in, self.e_out, self.gene_matrix))
        mix = torch.matmul(e_out.transpose(0, 1), gene_matrix.t()) * float(self.scale)  # [p, Cout, g]
        w = torch.matmul(mix, e_in.permute(1, 2, 0)).permute(1, 2, 0)  # [Cout, Cin, p]
        return w.float().reshape(self.unquantised_shape)

    def own_parameters(self) -> int:
        """Parameters of this layer counted as if standalone (eq. 2): its taps of E_in, E_out, and G."""
        return self.e_in.numel() + self.e_out.numel() + self.gene_matrix.numel()


class GeneticConv2d(_GeneticWeight):
    """Conv2d whose weight is scale * E_in G E_out^T per tap (eq. 1). No bias: a BatchNorm follows.

    Args:
        e_in: encoding of the input population, [Cin, taps, g].
        e_out: encoding of the output population, [Cout, taps, g].
        gene_matrix: the network's shared G, [g, g].
        kernel_size: k; taps must equal k*k, or k == 1 (centre tap).
        stride: as nn.Conv2d.
        padding: as nn.Conv2d.
        init: sets ``scale`` (module docstring): ``"kaiming"`` or ``"paper"`` (1).
    """

    def __init__(
        self, e_in, e_out, gene_matrix, kernel_size: int, stride: int = 1, padding: int = 0, init: str = "kaiming"
    ):
        super().__init__(e_in, e_out, gene_matrix, kernel_size, init)
        self.in_channels = e_in.shape[0]
        self.out_channels = e_out.shape[0]
        self.stride = stride
        self.padding = padding

    @property
    def unquantised_shape(self) -> tuple[int, int, int, int]:
        return self.out_channels, self.in_channels, self.kernel_size, self.kernel_size

    @property
    def unquantised_weight(self) -> torch.Tensor:
        """The generated W, [Cout, Cin, k, k]."""
        return self.generate().reshape(self.unquantised_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantiser is not None and not self.training:  # the int8 export's arithmetic, bit for bit
            return self.quantiser.exact(x, self.exact_weight(), None, self._conv)
        return self._conv(x, self.weight)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, genes={self.genes}"
        )


class GeneticLinear(_GeneticWeight):
    """Linear layer whose weight is scale * E_in G E_out^T at the centre tap (k = 1); ``init`` as GeneticConv2d."""

    def __init__(self, e_in, e_out, gene_matrix, bias: bool = True, init: str = "kaiming"):
        super().__init__(e_in, e_out, gene_matrix, kernel_size=1, init=init)
        self.in_features = e_in.shape[0]
        self.out_features = e_out.shape[0]
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    @property
    def unquantised_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def unquantised_weight(self) -> torch.Tensor:
        """The generated W, [out_features, in_features]."""
        return self.generate()[..., 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantiser is not None and not self.training:  # the int8 export's arithmetic, bit for bit
            return self.quantiser.exact(x, self.exact_weight(), self.bias, F.linear)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, genes={self.genes}"


class Genome(nn.Module):
    """G and the population encodings of one network.

    Every encoding is a leaf Parameter here; the genetic layers register the same objects. Initial values:
    G ~ N(0, 1) and E ~ N(0, 1), clipped to [-3, 3] under ``init = "kaiming"``, unclipped under ``"paper"``
    (Table IV's Random: "X_i, O ~ N(0, 1)"); evolution overwrites them with its phenotype (eq. 9).

    Raises:
        ValueError: ``genes`` < 1 or ``init`` not one of :data:`INITS`.
    """

    def __init__(self, genes: int, init: str = "kaiming"):
        super().__init__()
        if genes < 1:
            raise ValueError(f"genes must be >= 1, got {genes}")
        _check_init(init)
        self.genes = genes
        self.init = init
        self.gene_matrix = nn.Parameter(torch.randn(genes, genes))
        self.encodings = nn.ParameterDict()

    def population(self, name: str, channels: int, taps: int) -> str:
        """Create the encoding of a population of ``channels`` feature maps with ``taps`` kernel taps."""
        if name in self.encodings:
            raise ValueError(f"population {name!r} exists already")
        e = torch.randn(channels, taps, self.genes)
        if self.init == "kaiming":
            e.clamp_(-3.0, 3.0)
        self.encodings[name] = nn.Parameter(e)
        return name

    def encoding(self, name: str, kernel_size: int) -> nn.Parameter:
        """The encoding a ``kernel_size`` layer reads for population ``name``.

        A population's own encoding serves kernels with as many taps, and 1x1 kernels (centre tap). Any
        other kernel size gets a private encoding ``{name}_k{k}`` (a 7x7 stem into a 3x3 population).
        """
        e = self.encodings[name]
        try:
            _tap_slice(e, kernel_size)
            return e
        except ValueError:
            private = f"{name}_k{kernel_size}"
            if private not in self.encodings:
                self.population(private, e.shape[0], kernel_size * kernel_size)
            return self.encodings[private]


class LayerFactory:
    """Builds the weight layers of an architecture: genetic when ``genes`` is set, plain (dense twin) if None.

    Architectures name populations instead of channel counts, so one description yields both twins:
    ``f.population("s1", 64)`` then ``f.conv("s1", "s2", 3)``. ``init`` (one of :data:`INITS`) sets the
    genome's initial values and every genetic layer's ``scale``; the dense twin ignores it.
    """

    def __init__(self, genes: int | None, taps: int = 9, init: str = "kaiming"):
        _check_init(init)
        self.genes = genes
        self.taps = taps
        self.init = init
        self.genome = Genome(genes, init) if genes is not None else None
        self.channels: dict[str, int] = {}

    def population(self, name: str, channels: int, taps: int | None = None) -> str:
        self.channels[name] = channels
        if self.genome is not None:
            self.genome.population(name, channels, taps or self.taps)
        return name

    def conv(
        self, src: str, dst: str, kernel_size: int, stride: int = 1, padding: int | None = None
    ) -> nn.Conv2d | GeneticConv2d:
        padding = kernel_size // 2 if padding is None else padding
        if self.genome is None:
            return nn.Conv2d(self.channels[src], self.channels[dst], kernel_size, stride, padding, bias=False)
        g = self.genome
        return GeneticConv2d(
            g.encoding(src, kernel_size),
            g.encoding(dst, kernel_size),
            g.gene_matrix,
            kernel_size,
            stride,
            padding,
            self.init,
        )

    def linear(self, src: str, dst: str, bias: bool = True) -> nn.Linear | GeneticLinear:
        if self.genome is None:
            return nn.Linear(self.channels[src], self.channels[dst], bias=bias)
        g = self.genome
        return GeneticLinear(g.encoding(src, 1), g.encoding(dst, 1), g.gene_matrix, bias=bias, init=self.init)
