"""What the trainer and the evolution share, below both: the recipe's model, its optimiser, one training step.

The trainer trains the best phenotype for epochs; the evolution trains every candidate for
``evolution.eval_steps`` steps. Both build the model, the optimiser and the step here, so a candidate is
scored under exactly the optimisation the winner will get, and neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..data import dataset_info
from ..errors import ConfigError
from ..recipe import Recipe
from ..zoo import create_model
from ..zoo.base import SpikingNet

__all__ = ["build_recipe_model", "build_optimizer", "mixed_precision", "train_step", "check_training_batches"]


def build_recipe_model(recipe: Recipe) -> SpikingNet:
    """The recipe's architecture, sized and normalised for the recipe's dataset unless the recipe says otherwise.

    Raises:
        ConfigError: the architecture refuses the recipe's arguments (one line naming the model).
    """
    info = dataset_info(recipe.data.name)
    kwargs = {
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": info.image_size,
        "mean": info.mean,
        "std": info.std,
        **recipe.model_kwargs(),
    }
    try:
        return create_model(recipe.model.name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {recipe.model.name!r}: {e}") from None


@torch.no_grad()
def _batch_norm_values_per_image(model: SpikingNet) -> dict[str, int]:
    """For each BatchNorm of ``model``: how many values per channel one image gives it (timesteps x positions;
    the stem's runs once for all T), from one eval-mode forward of a zero image (no statistics change)."""
    counts: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(
            lambda mod, inputs, _, name=name: counts.__setitem__(name, inputs[0].numel() // inputs[0].shape[1])
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    was_training = model.training
    try:
        model.eval()(
            torch.zeros(
                1, model.in_channels, model.image_size, model.image_size, device=next(model.parameters()).device
            )
        )
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counts


def check_training_batches(
    model: SpikingNet, images: int, batch_size: int, world: int = 1, batch_key: str = "data.batch_size", limit: str = ""
) -> None:
    """Refuse, before training, a batch size at which training cannot run; one line naming ``batch_key``.

    Every training loader here keeps full batches only (``drop_last``; DDP's sampler too), so training batches
    hold exactly ``batch_size`` images per process, and:

    - fewer than ``batch_size x world`` training ``images`` would give an epoch no optimiser step;
    - a BatchNorm that gets a single value per channel (one image at T = 1 reaching a 1 x 1 feature map, as
      SmallNet's classifier BatchNorm does) cannot normalise it in training (PyTorch raises "Expected more than
      1 value per channel when training"; BatchNorm's variance is over the batch, torch.nn.BatchNorm1d docs).

    Args:
        model: the model to train (any device; its BatchNorms are measured by one forward of a zero image).
        images: training images (after any limit); ``limit``: how the user limited them, for the message
            (e.g. " after data.train_limit=50").

    Raises:
        ConfigError: either case, with the smallest or largest batch size that works.
    """
    if images // (batch_size * world) == 0:
        processes = f" x {world} processes" if world > 1 else ""
        raise ConfigError(
            f"{batch_key}={batch_size}{processes} is more than the {images} training images{limit}: "
            f"an epoch (full batches only) would take no optimiser step; allowed {batch_key} <= "
            f"{images // world} (or more images)"
        )
    counts = _batch_norm_values_per_image(model)
    if counts and batch_size * min(counts.values()) < 2:
        name = min(counts, key=counts.__getitem__)
        raise ConfigError(
            f"{batch_key}={batch_size} gives BatchNorm {name} of {type(model).__name__} a single "
            f"value per channel in training ({counts[name]} per image: T x its feature map), which "
            f"it cannot normalise; use {batch_key} >= 2"
        )


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``model``'s parameters, in up to three groups (empty ones dropped):

    1. encodings and G (the genome): ``lr * genetic_lr_scale``, with weight decay;
    2. other weights (2-d and up): ``lr``, with weight decay;
    3. BatchNorm parameters and biases (1-d): ``lr``, no weight decay.

    Raises:
        ConfigError: ``train.optimizer`` is neither ``adamw`` nor ``sgd``.
    """
    settings = recipe.train
    genome = getattr(model, "genome", None)
    genetic = {id(p) for p in genome.parameters()} if genome is not None else set()
    params = list(model.parameters())
    groups = [
        {
            "params": [p for p in params if id(p) in genetic],
            "weight_decay": settings.weight_decay,
            "lr": settings.lr * settings.genetic_lr_scale,
        },
        {
            "params": [p for p in params if id(p) not in genetic and p.dim() > 1],
            "weight_decay": settings.weight_decay,
            "lr": settings.lr,
        },
        {
            "params": [p for p in params if id(p) not in genetic and p.dim() <= 1],
            "weight_decay": 0.0,
            "lr": settings.lr,
        },
    ]
    groups = [group for group in groups if group["params"]]
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, nesterov=True)
    raise ConfigError(f"unknown train.optimizer {settings.optimizer!r}; use adamw or sgd")


def mixed_precision(device_type: str, amp: bool, bf16_supported: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, whether the step needs a ``torch.amp.GradScaler``) for ``train.amp`` on a device type.

    CUDA only (None, False elsewhere or without ``amp``): bfloat16 where the GPU supports it, else float16.
    float16 has 5 exponent bits, so small gradients underflow to zero unless the loss is scaled before the
    backward pass; PyTorch's AMP recipe ("Automatic Mixed Precision examples", torch.amp docs) pairs float16
    autocast with a GradScaler. bfloat16 has float32's exponent range and needs none.
    """
    if not (amp and device_type == "cuda"):
        return None, False
    dtype = torch.bfloat16 if bf16_supported else torch.float16
    return dtype, dtype == torch.float16


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    grad_clip: float = 0.0,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch: forward (under ``autocast``), cross-entropy, backward, clip, step.

    Args:
        net: the model in train mode (possibly wrapped by DDP or torch.compile); images [N, C, H, W] and
            labels [N] already on its device.
        label_smoothing: cross-entropy label smoothing.
        grad_clip: max total gradient norm over ``net``'s parameters (0 = no clipping).
        autocast: a factory of the mixed-precision context (CUDA AMP) or ``nullcontext``.
        scaler: float16 autocast's loss scaler (:func:`mixed_precision`): the backward pass runs on the scaled
            loss, the gradients are unscaled before clipping, and the step is skipped when they hold inf/NaN
            (torch.amp docs, "Gradient clipping" example).

    Returns:
        (loss, a 0-d tensor; logits [N, classes]), both still attached to the graph of this step.
    """
    with autocast():
        logits = net(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
        return loss, logits
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, logits
