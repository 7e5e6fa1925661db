"""Training stage: evolution (CMA-ES over {beta1, beta2, G}) and surrogate-gradient training."""

from .trainer import train

__all__ = ["train"]
