"""Surrogate-gradient training of a genetic SNN (Algorithm 1, line 12), optionally after evolution.

Sections in the order they run: set-up (device, seeds, DDP), data, model, optional evolution,
optimiser + schedule, resume, the epoch loop (train, evaluate, log, checkpoint).

Run directory::

    config.json    resolved recipe
    train.jsonl    one object per epoch: epoch, train_loss, train_acc, test_loss, test_acc, firing_rate, ...
    last.pt        checkpoint after the latest epoch (with optimiser state: --resume continues from it)
    best.pt        checkpoint of the best test accuracy so far

Determinism: every epoch re-seeds torch with ``seed * 1000 + epoch`` and the loader's shuffling with the
same number, so a resumed run on CPU ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import architecture_fingerprint, load_checkpoint, save_checkpoint
from ..data import dataset_info, load_split, make_loader
from ..errors import ConfigError
from ..io import append_jsonl, read_jsonl, write_json, write_jsonl
from ..neurons import SpikeRecorder
from ..recipe import Recipe
from ..zoo import create_model

__all__ = ["train", "build_recipe_model", "evaluate", "select_device", "DistContext"]


class DistContext:
    """torchrun awareness: rank/world size from the environment; a no-op in a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def build_recipe_model(recipe: Recipe) -> nn.Module:
    """The recipe's architecture, sized and normalised for the recipe's dataset unless the recipe says otherwise."""
    info = dataset_info(recipe.data.name)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.in_channels, "image_size": info.image_size,
              "mean": info.mean, "std": info.std, **recipe.model_kwargs()}
    try:
        return create_model(recipe.model.name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {recipe.model.name!r}: {e}") from None


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, dist: DistContext | None = None,
             autocast=nullcontext, channels_last: bool = False) -> dict:
    """Test loss, accuracy (fraction) and firing rate (spikes / (neurons x T), over all LIF layers)."""
    model.eval()
    loss_sum = correct = count = spikes = neurons = 0.0
    base = model.module if hasattr(model, "module") else model
    timesteps = base.timesteps
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(), SpikeRecorder(base) as rec:
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
        spikes += sum(c.sum().item() for c in rec.counts)
        neurons += sum(rec.sizes) * len(y) * timesteps
    if dist is not None:
        loss_sum, correct, count, spikes, neurons = dist.all_reduce_sum(loss_sum, correct, count, spikes, neurons)
    return {"test_loss": loss_sum / max(count, 1), "test_acc": correct / max(count, 1),
            "firing_rate": spikes / max(neurons, 1)}


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    t = recipe.train
    # no weight decay on BN/bias (1-d) parameters; encodings and G get their own learning rate
    genome = getattr(model, "genome", None)
    genetic = {id(p) for p in genome.parameters()} if genome is not None else set()
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if id(p) in genetic], "weight_decay": t.weight_decay,
         "lr": t.lr * t.genetic_lr_scale},
        {"params": [p for p in params if id(p) not in genetic and p.dim() > 1], "weight_decay": t.weight_decay,
         "lr": t.lr},
        {"params": [p for p in params if id(p) not in genetic and p.dim() <= 1], "weight_decay": 0.0, "lr": t.lr},
    ]
    groups = [g for g in groups if g["params"]]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=True)
    raise ConfigError(f"unknown train.optimizer {t.optimizer!r}; use adamw or sgd")


def holds_run(out: str | os.PathLike) -> bool:
    """Whether run directory ``out`` holds a started run (a checkpoint, or evolution under way)."""
    return (Path(out) / "last.pt").exists() or (Path(out) / "evolution.jsonl").exists()


def train(recipe: Recipe, out: str | os.PathLike, resume: bool = False, progress: bool | None = None) -> dict:
    """Run a recipe into run directory ``out``; returns the last epoch's metrics (plus best_acc)."""
    from tqdm.auto import tqdm

    out = Path(out)
    t = recipe.train
    if t.epochs < 0:
        raise ConfigError(f"train.epochs must be >= 0, got {t.epochs}")
    if recipe.evolution.enabled:  # bad evolution settings fail before anything is written
        from .evolution import check_evolution

        check_evolution(recipe.evolution)
    last_path = out / "last.pt"
    if resume and not holds_run(out):
        raise ConfigError(f"--resume: {out} has no last.pt to resume from")
    if not resume and holds_run(out):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    # ---- set-up ---------------------------------------------------------------------------------------
    device = select_device(t.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if t.threads:
        torch.set_num_threads(t.threads)
    dist = DistContext(device)
    use_amp = t.amp and device.type == "cuda"
    channels_last = t.channels_last and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    def autocast():
        return torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext()

    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", recipe.to_dict())

    # ---- data -----------------------------------------------------------------------------------------
    d = recipe.data
    data_dir = d.data_dir or None
    train_set = load_split(d.name, "train", data_dir, augment=d.augment, limit=d.train_limit or None)
    test_set = load_split(d.name, "test", data_dir, limit=d.test_limit or None)
    sampler = test_sampler = None
    if dist.world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, dist.world, dist.rank, shuffle=True, seed=t.seed, drop_last=True)
        test_sampler = DistributedSampler(test_set, dist.world, dist.rank, shuffle=False)
    pin = device.type == "cuda"
    test_loader = make_loader(test_set, d.batch_size, False, workers=d.workers, pin_memory=pin, sampler=test_sampler)

    # ---- model ----------------------------------------------------------------------------------------
    torch.manual_seed(t.seed)
    model = build_recipe_model(recipe)
    info = dataset_info(d.name)
    meta = {"model_name": model.model_name, "model_args": model.model_args,
            "architecture": architecture_fingerprint(model), "recipe": recipe.to_dict(),
            "dataset": {"name": info.name, "classes": list(info.classes)}}

    # ---- evolution (Algorithm 1, lines 1-11): sets the model's encodings and G to the best phenotype ----
    ckpt = load_checkpoint(last_path) if resume and last_path.exists() else None
    if recipe.evolution.enabled and ckpt is None:
        from .evolution import run_evolution

        run_evolution(recipe, out, model, device, dist=dist, progress=progress)

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(recipe, model)
    steps_per_epoch = max(1, len(train_set) // (d.batch_size * dist.world))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(steps_per_epoch * max(t.epochs, 1), int(t.warmup_epochs * steps_per_epoch)))

    # ---- resume ---------------------------------------------------------------------------------------
    start_epoch, best_acc = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_acc = ckpt["epoch"], ckpt.get("best_acc", 0.0)
        if dist.main:  # drop log rows of epochs the checkpoint does not hold (killed between log and save)
            write_jsonl(out / "train.jsonl", [r for r in read_jsonl(out / "train.jsonl")
                                              if r.get("epoch", 0) <= start_epoch])

    net = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)

    # ---- epochs ---------------------------------------------------------------------------------------
    metrics: dict = {}
    for epoch in range(start_epoch, t.epochs):
        epoch_seed = t.seed * 1000 + epoch
        torch.manual_seed(epoch_seed)  # augmentation draws
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = make_loader(train_set, d.batch_size, True, seed=epoch_seed, workers=d.workers, pin_memory=pin,
                             sampler=sampler, drop_last=True)
        net.train()
        started = time.perf_counter()
        loss_sum = correct = seen = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, disable=True if (progress is False or not dist.main) else None)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        loss_sum, correct, seen = dist.all_reduce_sum(loss_sum, correct, seen)
        train_seconds = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                   **evaluate(net, test_loader, device, dist, autocast, channels_last),
                   "lr": scheduler.get_last_lr()[-1],  # the plain group (genetic: x genetic_lr_scale)
                   "seconds": time.perf_counter() - started,
                   "train_images_per_s": seen / train_seconds}
        best_acc = max(best_acc, metrics["test_acc"])
        metrics["best_acc"] = best_acc
        if dist.main:
            state = {**meta, "state_dict": model.state_dict(), "epoch": epoch + 1, "metrics": metrics,
                     "best_acc": best_acc}
            if metrics["test_acc"] >= best_acc:
                save_checkpoint(out / "best.pt", state)
            save_checkpoint(last_path, {**state, "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict()})
            append_jsonl(out / "train.jsonl", metrics)
            if progress is not False:
                tqdm.write(f"epoch {epoch + 1}/{t.epochs}: loss {metrics['train_loss']:.4f} "
                           f"test acc {metrics['test_acc']:.4f} firing rate {metrics['firing_rate']:.4f} "
                           f"({metrics['seconds']:.0f} s, {metrics['train_images_per_s']:.0f} img/s)")
    if t.epochs == 0:  # evolution-only runs still get a checkpoint; every rank joins evaluate's all-reduce
        metrics = {"epoch": 0, **evaluate(net, test_loader, device, dist, autocast, channels_last)}
        metrics["best_acc"] = metrics["test_acc"]
    if t.epochs == 0 and dist.main:
        state = {**meta, "state_dict": model.state_dict(), "epoch": 0, "metrics": metrics,
                 "best_acc": metrics["test_acc"]}
        save_checkpoint(out / "best.pt", state)
        save_checkpoint(last_path, {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    if ckpt is not None and not metrics:
        metrics = ckpt.get("metrics", {})
    if dist.world > 1:
        torch.distributed.barrier()
    return metrics
