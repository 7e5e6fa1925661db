"""Genotype and phenotype of the evolution (paper section III-B, eq. 9).

The genotype is the flat vector CMA-ES searches over::

    x = [log beta1, log beta2, vec(G)]        (2 + g^2 dimensions, G row-major)

beta1 and beta2 are evolved as logarithms so every candidate CMA-ES proposes has positive betas, with no
bounds handling (bounded CMA-ES would distort the sampling distribution near the bound); a step of sigma in
log space changes beta by a factor exp(+-sigma), the same relative step at every scale.

The phenotype is the network: G from the genotype and every population encoding drawn from the truncated
normal of eq. 9, E = clip(A, -beta2, beta2) with A ~ N(0, beta1^2). The standard-normal noise behind A
comes from one seed per generation that all its candidates share (common random numbers): candidates of a
generation differ only in their genotype, so their ranking is not blurred by sampling luck.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = [
    "genotype_dimension",
    "encode_genotype",
    "decode_genotype",
    "sample_encodings",
    "apply_phenotype",
    "initial_genotype",
    "genome_of",
]


def genotype_dimension(genes: int) -> int:
    """2 + g^2: beta1, beta2 and the g x g gene matrix."""
    return 2 + genes * genes


def encode_genotype(beta1: float, beta2: float, gene_matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """(beta1, beta2, G) -> x = [log beta1, log beta2, vec(G)] as float64."""
    if not (beta1 > 0 and beta2 > 0):
        raise ValueError(f"beta1 and beta2 must be positive, got {beta1}, {beta2}")
    matrix = np.asarray(
        gene_matrix.detach().cpu() if isinstance(gene_matrix, torch.Tensor) else gene_matrix, dtype=np.float64
    )
    return np.concatenate([[math.log(beta1), math.log(beta2)], matrix.reshape(-1)])


def decode_genotype(x: np.ndarray, genes: int) -> tuple[float, float, torch.Tensor]:
    """x -> (beta1, beta2, G [g, g] float32)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (genotype_dimension(genes),):
        raise ValueError(f"genotype of {genes} genes has {genotype_dimension(genes)} entries, got {x.shape}")
    gene_matrix = torch.from_numpy(x[2:].reshape(genes, genes).astype(np.float32))
    return math.exp(x[0]), math.exp(x[1]), gene_matrix


def initial_genotype(genes: int, beta1: float, beta2: float, seed: int) -> np.ndarray:
    """CMA-ES's starting mean: the recipe's betas and G0 ~ N(0, 1) (the Random model's G distribution)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    return encode_genotype(beta1, beta2, rng.standard_normal((genes, genes)))


def sample_encodings(
    shapes: dict[str, tuple[int, ...]], beta1: float, beta2: float, noise_seed: int
) -> dict[str, torch.Tensor]:
    """Eq. 9: E = clip(A, -beta2, beta2), A = beta1 * Z, Z ~ N(0, 1) from ``noise_seed``.

    Encodings are drawn in sorted name order, so the same seed gives the same Z whatever order an
    architecture created its populations in; two candidates with the same seed share Z exactly.

    .. math:: E = \\min(\\max(A, -\\beta_2), \\beta_2),\\quad A \\sim \\mathcal{N}(0, \\beta_1^2)
    """
    gen = torch.Generator().manual_seed(int(noise_seed))
    out = {}
    for name in sorted(shapes):
        z = torch.randn(shapes[name], generator=gen)
        out[name] = (beta1 * z).clamp_(-beta2, beta2)  # eq. 9
    return out


def genome_of(model: nn.Module):
    """The model's :class:`~gee_deploy.genetic.Genome`; raises ValueError for a dense model."""
    base = model.module if hasattr(model, "module") else model
    genome = getattr(base, "genome", None)
    if genome is None:
        raise ValueError("evolution needs a genetic model (model.genes > 0); this one is the dense twin")
    return genome


@torch.no_grad()
def apply_phenotype(model: nn.Module, x: np.ndarray, noise_seed: int) -> None:
    """Overwrite ``model``'s encodings and G in place with the phenotype of genotype ``x``."""
    genome = genome_of(model)
    beta1, beta2, gene_matrix = decode_genotype(x, genome.genes)
    shapes = {name: tuple(p.shape) for name, p in genome.encodings.items()}
    for name, encoding in sample_encodings(shapes, beta1, beta2, noise_seed).items():
        genome.encodings[name].data.copy_(encoding)
    genome.gene_matrix.data.copy_(gene_matrix)
