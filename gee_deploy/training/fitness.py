"""Fitness of one candidate (paper eq. 13-16): a short training, then loss and the two regularisers.

    f = L - exp(lambda1 t) r1 - exp(lambda2 t) r2          (eq. 16, minimised; t = generation from 0)

- L: cross-entropy of the phenotype on held-out batches after ``eval_steps`` training steps.
- r1: temporal difference of the outputs, sum_t ||Y(t+1) - Y(t)||_F^2 (eq. 13), per sample then averaged.
- r1_rel: the same relative to the outputs' own magnitude, sum_t ||Y(t+1) - Y(t)||^2 / sum_t ||Y(t)||^2
  over the held-out images (:func:`relative_temporal_difference`): how much the output changes between
  timesteps, whatever its scale. Raw r1 grows with beta1 (larger encodings, larger outputs) and with the
  number of classes and T; r1_rel is unchanged when the outputs are scaled, a sum over classes adds to
  numerator and denominator alike, and it lies in [0, 4] for any T (||a - b||^2 <= 2 ||a||^2 + 2 ||b||^2).
- r2: entropy of P = |G| / sum |G| (eq. 14-15); the paper normalises G itself, which has negative entries,
  so we take |G| to get a distribution. r2 is measured on the genotype's G (the thing being evolved), not
  on G after the short training.

Choices the paper leaves open, and why:

- Held-out batches are the last ``eval_batches * batch_size`` images of the training split (the test split
  is never seen by evolution, so the ablation's test accuracy stays honest). The short training draws its
  batches from the rest, without augmentation, in an order fixed per generation: every candidate of a
  generation sees the same batches (common random numbers, like the encoding noise).
- L and r1 are measured with BatchNorm on batch statistics (train mode, no gradients): after 10-20 steps the
  running statistics are still mostly their initial values and would rank candidates by how far their
  activations sit from N(0, 1) rather than by how well they learn.
- A candidate whose loss is not finite (diverged) gets fitness :data:`FAILED_FITNESS`.
- The terms' scales (the paper fixes the form of eq. 16, not the units of its terms). ``loss``, ``loss+r1``,
  ``loss+r2`` and ``ste`` are the paper's literal form: raw L (nats), raw r1 (squared output units, which
  grow with the number of classes, T and the output's magnitude; 10-80 against L ~ 2 on SmallNet) and raw
  r2 (nats, bounded by ln g^2). The ``-scaled`` modes are scale-free: r1 is r1_rel, and each term is
  standardised across the generation's candidates, z = (v - mean) / std over the CMA-ES samples of that
  generation (:func:`term_scales`), so each term has unit spread whatever the architecture, classes or T,
  and eq. 16's weights exp(lambda t) set how the terms trade off. CMA-ES only uses the ranking within a
  generation, so this changes nothing but the trade-off. A term with no spread (all equal, or fewer than
  two finite values) ranks nothing and contributes 0. :func:`fitness_of` picks the terms a mode uses.
- The recipe's default mode is ``loss``: ``benchmarks/fitness_fidelity.py`` found no regularised mode,
  literal or scaled, whose ranking agrees better with trained accuracy (docs/evolution.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageDataset, load_split
from ..errors import ConfigError
from ..kinds import FitnessMode
from .genotype import apply_phenotype
from .setup import build_optimizer, build_recipe_model, train_step

__all__ = [
    "FITNESS_MODES",
    "FAILED_FITNESS",
    "TERMS",
    "temporal_difference",
    "relative_temporal_difference",
    "spatial_entropy",
    "term_scales",
    "combine_fitness",
    "fitness_of",
    "generation_seeds",
    "candidate_seed",
    "check_eval_data_size",
    "check_evolution_data",
    "EvalData",
    "evaluate_candidate",
]

# which terms each mode uses and whether they are standardised across the generation: (r1, r2, scaled)
FITNESS_MODES = {
    FitnessMode.LOSS: (False, False, False),
    FitnessMode.LOSS_R1: (True, False, False),
    FitnessMode.LOSS_R2: (False, True, False),
    FitnessMode.STE: (True, True, False),
    FitnessMode.LOSS_R1_SCALED: (True, False, True),
    FitnessMode.LOSS_R2_SCALED: (False, True, True),
    FitnessMode.STE_SCALED: (True, True, True),
}
FAILED_FITNESS = 1e9
TERMS = ("loss", "r1", "r2", "r1_rel")  # the raw terms :func:`evaluate_candidate` returns


def temporal_difference(y_steps: torch.Tensor) -> torch.Tensor:
    """Eq. 13 per sample: sum over t of ||Y(t+1) - Y(t)||_F^2 for outputs ``y_steps`` [T, N, classes] -> [N].

    .. math:: r_1 = \\sum_{t=0}^{T-2} \\lVert Y^{(t+1)} - Y^{(t)} \\rVert_F^2
    """
    if y_steps.dim() != 3:
        raise ValueError(f"expected per-step outputs [T, N, classes], got shape {tuple(y_steps.shape)}")
    diff = y_steps[1:] - y_steps[:-1]  # [T-1, N, classes]
    return diff.pow(2).sum(dim=(0, 2))  # [N]


def relative_temporal_difference(y_steps: torch.Tensor) -> tuple[float, float]:
    """(sum over samples and t of ||Y(t+1) - Y(t)||^2, sum over samples and t of ||Y(t)||^2) for outputs
    ``y_steps`` [T, N, classes]; their ratio over a set of batches is r1_rel (scale-free: multiplying Y by c
    leaves it unchanged).

    .. math:: r_1^{rel} = \\sum_t \\lVert Y^{(t+1)} - Y^{(t)} \\rVert^2 / \\sum_t \\lVert Y^{(t)} \\rVert^2
    """
    return float(temporal_difference(y_steps).sum()), float(y_steps.pow(2).sum())


def spatial_entropy(gene_matrix: torch.Tensor) -> float:
    """Eq. 14-15 on |G|: entropy (nats) of P = |G| / sum |G|; 0 log 0 = 0.

    .. math:: r_2 = -\\sum_{i,j} P_{ij} \\log P_{ij},\\quad P = |G| / \\textstyle\\sum |G|
    """
    magnitude = gene_matrix.detach().double().abs().flatten()
    total = magnitude.sum()
    if total <= 0:
        return 0.0
    prob = magnitude[magnitude > 0] / total  # eq. 14
    return float(-(prob * prob.log()).sum())  # eq. 15


def term_scales(candidates: list[dict]) -> dict[str, tuple[float, float]]:
    """{term: (mean, std)} over ``candidates`` (dicts with the :data:`TERMS`) for the ``-scaled`` modes.

    Only candidates whose loss is finite count (a diverged one is failed anyway), and per term only finite
    values (a candidate whose term was not finite has None there). std is the population standard
    deviation; a term with fewer than two values or no spread gets std 0 (ignored by :func:`combine_fitness`).
    """
    usable = [c for c in candidates if c["loss"] is not None and math.isfinite(c["loss"])]
    scales = {}
    for term in TERMS:
        values = np.array(
            [c[term] for c in usable if c.get(term) is not None and math.isfinite(c[term])], dtype=np.float64
        )
        if len(values) == 0:
            scales[term] = (0.0, 0.0)
            continue
        mean, std = float(values.mean()), float(values.std())  # one value: std 0
        scales[term] = (mean, std if math.isfinite(std) and std > 1e-12 * max(1.0, abs(mean)) else 0.0)
    return scales


def combine_fitness(
    mode: FitnessMode,
    loss: float | None,
    r1: float | None,
    r2: float,
    generation: int,
    lambda1: float,
    lambda2: float,
    scales: dict[str, tuple[float, float]] | None = None,
) -> float:
    """Eq. 16 with the mode's terms: f = L - exp(lambda1 t) r1 - exp(lambda2 t) r2 (minimised).

    A ``-scaled`` mode replaces each term v by (v - mean) / std with ``scales`` from :func:`term_scales`
    (required for those modes; ignored by the literal ones); a term with std 0 contributes 0. Its ``r1``
    argument is r1_rel, standardised with ``scales["r1_rel"]`` (:func:`fitness_of` passes the right one).

    Never raises for numbers: a weight exp(lambda t) beyond float range (only possible with lambda > 0,
    which recipes refuse) or a non-finite sum gives :data:`FAILED_FITNESS`, like a diverged candidate.

    Raises:
        ValueError: an unknown mode, or a ``-scaled`` mode without ``scales``.
    """
    use_r1, use_r2, scaled = FITNESS_MODES[FitnessMode(mode)]
    if scaled and scales is None:
        raise ValueError(f"fitness {mode!r} standardises its terms across the generation: pass scales")
    if loss is None or (use_r1 and r1 is None) or not math.isfinite(loss):
        return FAILED_FITNESS

    def term(name: str, value: float) -> float:
        if not scaled:
            return value
        assert scales is not None  # a scaled mode without scales raised above
        mean, std = scales["r1_rel" if name == "r1" else name]
        return (value - mean) / std if std > 0 else 0.0

    try:
        fitness = term("loss", loss)
        if use_r1:
            assert r1 is not None  # a mode using r1 without one failed the candidate above
            fitness -= math.exp(lambda1 * generation) * term("r1", r1)  # eq. 16
        if use_r2:
            fitness -= math.exp(lambda2 * generation) * term("r2", r2)  # eq. 16
    except (OverflowError, ZeroDivisionError):
        return FAILED_FITNESS
    return fitness if math.isfinite(fitness) else FAILED_FITNESS


def fitness_of(
    mode: FitnessMode,
    terms: dict,
    generation: int,
    lambda1: float,
    lambda2: float,
    scales: dict[str, tuple[float, float]] | None = None,
) -> float:
    """:func:`combine_fitness` of a candidate's ``terms`` (:func:`evaluate_candidate`'s dict): r1_rel as r1 in
    the ``-scaled`` modes, raw r1 in the literal ones."""
    r1 = terms.get("r1_rel") if FITNESS_MODES[FitnessMode(mode)][2] else terms["r1"]
    return combine_fitness(mode, terms["loss"], r1, terms["r2"], generation, lambda1, lambda2, scales)


def _seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(word) for word in words]).generate_state(1)[0])


def generation_seeds(seed: int, generation: int) -> tuple[int, int]:
    """(encoding noise seed, batch-order seed) of a generation; shared by all its candidates."""
    return _seed(seed, 0, generation), _seed(seed, 1, generation)


def candidate_seed(seed: int, generation: int, index: int) -> int:
    """torch's global seed while candidate ``index`` of ``generation`` is built and trained."""
    return _seed(seed, 2, generation, index)


def check_eval_data_size(images: int, batch_size: int, eval_batches: int) -> None:
    """Raise a one-line ConfigError when a training split of ``images`` cannot give ``eval_batches`` held-out
    batches plus one training batch (what :class:`EvalData` cuts it into)."""
    needed = (eval_batches + 1) * batch_size
    if images < needed:
        raise ConfigError(
            f"evolution needs at least {needed} training images (evolution.eval_batches="
            f"{eval_batches} held-out batches plus one training batch of data.batch_size="
            f"{batch_size}); the training split has {images}"
        )


def check_evolution_data(recipe) -> None:
    """:func:`check_eval_data_size` for ``recipe``'s own training split, read without building a model: a command
    that runs several recipes (ablate, sweep) refuses before its first run, not at its first evolving one.

    Raises:
        ConfigError: too few training images for ``evolution.eval_batches`` (and DataError: no dataset).
    """
    d = recipe.data
    images = len(load_split(d.name, "train", d.data_dir or None, limit=d.train_limit or None))
    check_eval_data_size(images, d.batch_size, recipe.evolution.eval_batches)


@dataclass
class EvalData:
    """The training split cut into the part candidates train on and the held-out batches they are scored on."""

    dataset: ImageDataset  # yields (image [C, H, W], label)
    batch_size: int
    eval_batches: int

    def __post_init__(self) -> None:
        check_eval_data_size(len(self.dataset), self.batch_size, self.eval_batches)
        self.train_count = len(self.dataset) - self.eval_batches * self.batch_size
        self._held_out: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # the same for every candidate

    def _batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.dataset[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def train_batches(self, steps: int, order_seed: int):
        """``steps`` batches from the training part, in an order fixed by ``order_seed``."""
        gen = torch.Generator().manual_seed(int(order_seed))
        perm = torch.empty(0, dtype=torch.long)
        while len(perm) < steps * self.batch_size:
            perm = torch.cat([perm, torch.randperm(self.train_count, generator=gen)])
        for step in range(steps):
            yield self._batch(perm[step * self.batch_size : (step + 1) * self.batch_size])

    def held_out(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``eval_batches`` batches after the training part, collated once and reused."""
        if self._held_out is None:
            starts = (self.train_count + batch * self.batch_size for batch in range(self.eval_batches))
            self._held_out = [self._batch(range(start, start + self.batch_size)) for start in starts]
        return self._held_out


def evaluate_candidate(
    recipe, x: np.ndarray | None, noise_seed: int, order_seed: int, seed: int, data: EvalData, device: torch.device
) -> dict:
    """Build candidate ``x``'s phenotype, train it ``eval_steps`` steps, return {loss, r1, r2, r1_rel}.

    ``x = None`` is the default wiring: the Random model exactly as the trainer builds it (torch seeded with
    ``seed`` = ``train.seed``, encodings and G as initialised, no phenotype drawn), trained and scored the
    same way. r2 is measured on G before the short training in both cases.
    """
    torch.manual_seed(seed)
    model = build_recipe_model(recipe)
    if x is not None:
        apply_phenotype(model, x, noise_seed)
    gene_matrix = model.genome.gene_matrix.detach().clone()
    model.to(device)
    optimizer = build_optimizer(recipe, model)
    model.train()
    for images, labels in data.train_batches(recipe.evolution.eval_steps, order_seed):
        train_step(model, optimizer, images.to(device), labels.to(device))
    loss_sum = r1_sum = change = magnitude = 0.0
    count = 0
    with torch.no_grad():
        for images, labels in data.held_out():
            images, labels = images.to(device), labels.to(device)
            y_steps = model.forward_steps(images).float()  # [T, N, classes]
            loss_sum += F.cross_entropy(y_steps.mean(0), labels, reduction="sum").item()
            r1_sum += temporal_difference(y_steps).sum().item()  # eq. 13
            batch_change, batch_magnitude = relative_temporal_difference(y_steps)
            change, magnitude = change + batch_change, magnitude + batch_magnitude
            count += len(labels)
    loss, r1 = loss_sum / count, r1_sum / count
    r1_rel = change / magnitude if magnitude > 0 else 0.0  # all-zero outputs do not change either

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {"loss": finite(loss), "r1": finite(r1), "r2": spatial_entropy(gene_matrix), "r1_rel": finite(r1_rel)}
