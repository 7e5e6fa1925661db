"""Surrogate-gradient training of a genetic SNN (Algorithm 1, line 12), optionally after evolution.

Sections in the order they run: set-up (device, seeds, DDP), data, model, optional evolution,
optimiser + schedule, resume, the epoch loop (train, evaluate, log, checkpoint).

Run directory::

    config.json    resolved recipe
    train.jsonl    one object per epoch: epoch, train_loss, train_acc, test_loss, test_acc, firing_rate, ...
    last.pt        checkpoint after the latest epoch (with optimiser state: --resume continues from it)
    best.pt        checkpoint of the best test accuracy so far
    resumes.jsonl  one object per --resume that changed a key a resume may change (train.epochs, ...)

Determinism: every epoch re-seeds torch with ``seed * 1000 + epoch`` and the loader's shuffling with the
same number, so a resumed run on CPU ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from ..checkpoint import Checkpoint, DatasetRecord, architecture_fingerprint, load_checkpoint, save_checkpoint
from ..data import dataset_info, load_split, make_loader
from ..errors import CheckpointError, ConfigError
from ..io import append_jsonl, read_jsonl, write_json, write_jsonl
from ..neurons import SpikeRecorder
from ..recipe import Recipe, TrainSection
from ..zoo.base import SpikingNet
from .evolution import run_evolution
from .fitness import check_eval_data_size
from .resume import check_run
from .setup import build_optimizer, build_recipe_model, check_training_batches, mixed_precision, train_step

__all__ = [
    "RESUMES_FILE",
    "train",
    "train_epoch",
    "evaluate",
    "select_device",
    "holds_run",
    "cosine_schedule",
    "DistContext",
    "TrainRuntime",
]


RESUMES_FILE = "resumes.jsonl"  # one line per resume that changed a continuable key
HEARTBEAT_SECONDS = 10.0  # a progress line within an epoch this often when the output is no terminal


class DistContext:
    """torchrun awareness: rank/world size from ``env`` (the environment); a no-op in a single process."""

    def __init__(self, device: torch.device, env: Mapping[str, str] = os.environ):
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Wait for every rank, then shut the process group down, as torch.distributed's docs ask before exit
        (left up, gloo's threads race the interpreter's exit: a rank aborted once in CI with "terminate called
        without an active exception")."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def all_reduce_sum(self, *values: float) -> list[float]:
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(totals)
        return totals.tolist()


def select_device(name: str, key: str = "train.device") -> torch.device:
    """The torch device ``name`` (auto, cpu, cuda, cuda:N) names; ``key`` is what the user set it with (a recipe
    key or a flag), for the error.

    Raises:
        ConfigError: CUDA asked for on a machine without it, or a GPU index past the last one.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    shown = f"{key} {name}" if key.startswith("-") else f"{key}={name!r}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{shown} but CUDA is not available on this machine (use cpu or auto)")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{shown} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    dist: DistContext | None = None,
    autocast=nullcontext,
    channels_last: bool = False,
) -> dict:
    """Test loss, accuracy (fraction) and firing rate (spikes / (neurons x T), over all LIF layers)."""
    model.eval()
    loss_sum = correct = count = spikes = neurons = 0.0
    base = getattr(model, "module", model)  # what DistributedDataParallel wraps (torch.compile forwards .module)
    assert isinstance(base, nn.Module)
    timesteps = base.timesteps
    assert isinstance(timesteps, int), f"{type(base).__name__} is not a zoo model: timesteps is not an int"
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
    return {
        "test_loss": loss_sum / max(count, 1),
        "test_acc": correct / max(count, 1),
        "firing_rate": spikes / max(neurons, 1),
    }


def cosine_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LambdaLR factor at optimiser step ``step``: linear warm-up over ``warmup_steps``, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def holds_run(out: str | os.PathLike) -> bool:
    """Whether run directory ``out`` holds a started run (a checkpoint, or evolution under way)."""
    return (Path(out) / "last.pt").exists() or (Path(out) / "evolution.jsonl").exists()


@dataclass
class TrainRuntime:
    """Where and how this process computes: device, DDP ranks, mixed precision, memory format."""

    device: torch.device
    dist: DistContext
    autocast: Callable[[], AbstractContextManager]
    channels_last: bool
    scaler: torch.amp.GradScaler | None = None  # float16 autocast only (setup.mixed_precision)

    @classmethod
    def local(cls, device: torch.device) -> TrainRuntime:
        """One process on ``device``, float32, the default memory format (a fine-tune outside a training run)."""
        return cls(device, DistContext(device, env={}), nullcontext, False)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def _check_before_writing(recipe: Recipe, out: Path, resume: bool) -> tuple[Checkpoint | None, dict]:
    """The settings and the run directory: what can be refused before the data is even read. Returns the run's
    last.pt (None: not resuming, or evolution had not finished) and the recipe changes a resume takes
    (:func:`~.resume.check_resume`, against the checkpoint's recipe, else config.json's)."""
    if recipe.train.epochs == 0 and not recipe.evolution.enabled:
        raise ConfigError(
            "train.epochs must be >= 1 (0 trains nothing; it is meant for an evolution-only run, "
            "with evolution.enabled = true)"
        )
    if not resume:
        if holds_run(out):
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        return None, {}
    if not holds_run(out):
        raise ConfigError(f"--resume: {out} has no last.pt to resume from")
    ckpt = load_checkpoint(out / "last.pt") if (out / "last.pt").exists() else None
    if ckpt is not None and (ckpt.optimizer is None or ckpt.scheduler is None):
        raise CheckpointError(f"{out / 'last.pt'} holds no optimiser state to resume from")
    changes = check_run(out, recipe.to_dict(), ckpt)
    if ckpt is not None and recipe.train.epochs < ckpt.epoch:
        raise ConfigError(
            f"--resume: the run in {out} has trained {ckpt.epoch} epochs already; train.epochs "
            f"{recipe.train.epochs} is fewer (give train.epochs >= {ckpt.epoch})"
        )
    return ckpt, changes


def _set_up(settings) -> TrainRuntime:
    """Device, CPU threads, DDP process group, AMP dtype and memory format of the recipe's [train] section."""
    device = select_device(settings.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if settings.threads:
        torch.set_num_threads(settings.threads)
    dist = DistContext(device)
    amp_dtype, scaled = mixed_precision(
        device.type, settings.amp, device.type == "cuda" and torch.cuda.is_bf16_supported()
    )

    def autocast() -> AbstractContextManager:
        return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    return TrainRuntime(
        device,
        dist,
        autocast,
        settings.channels_last and device.type == "cuda",
        torch.amp.GradScaler("cuda") if scaled else None,
    )


def _load_data(recipe: Recipe, runtime: TrainRuntime):
    """(training set, its DDP sampler or None, test loader); each rank sees its share under torchrun."""
    data, dist = recipe.data, runtime.dist
    data_dir = data.data_dir or None
    train_set = load_split(
        data.name,
        "train",
        data_dir,
        augment=data.augment,
        limit=data.train_limit or None,
        crop_padding=data.crop_padding,
    )
    test_set = load_split(data.name, "test", data_dir, limit=data.test_limit or None)
    sampler: DistributedSampler | None = None
    test_sampler: DistributedSampler | None = None
    if dist.world > 1:
        sampler = DistributedSampler(
            train_set, dist.world, dist.rank, shuffle=True, seed=recipe.train.seed, drop_last=True
        )
        test_sampler = DistributedSampler(test_set, dist.world, dist.rank, shuffle=False)
    test_loader = make_loader(
        test_set, data.batch_size, False, workers=data.workers, pin_memory=runtime.pin_memory, sampler=test_sampler
    )
    return train_set, sampler, test_loader


def _check_data_fits(recipe: Recipe, model: SpikingNet, images: int, world: int) -> None:
    """Refuse a training split of ``images`` that gives no optimiser step (with drop_last), a batch size that
    leaves a BatchNorm one value per channel, or too few images for evolution's held-out batches; one line
    naming the keys to change."""
    data = recipe.data
    if recipe.train.epochs > 0 or recipe.evolution.enabled:
        limit = f" after data.train_limit={data.train_limit}" if data.train_limit else ""
        check_training_batches(model, images, data.batch_size, world, limit=limit)
    if recipe.evolution.enabled:
        check_eval_data_size(images, data.batch_size, recipe.evolution.eval_batches)


def _checkpoint_meta(recipe: Recipe, model: SpikingNet) -> Checkpoint:
    """What every checkpoint of this run carries besides weights and training state (no weights yet)."""
    info = dataset_info(recipe.data.name)
    return Checkpoint(
        model_name=model.model_name,
        model_args=model.model_args,
        state_dict=None,
        architecture=architecture_fingerprint(model),
        recipe=recipe.to_dict(),
        dataset=DatasetRecord(name=info.name, classes=tuple(info.classes)),
    )


def _resume(
    ckpt: Checkpoint, model: nn.Module, optimizer, scheduler, runtime: TrainRuntime, out: Path
) -> tuple[int, float]:
    """Load ``ckpt``'s weights and training state; returns (epochs done, best accuracy so far).

    ``ckpt`` was checked by :func:`_check_before_writing` (optimiser state, recipe) and :func:`train`
    (architecture fingerprint).
    """
    assert ckpt.state_dict is not None  # read from a file: a saved checkpoint always holds its weights
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(ckpt.optimizer)
    scheduler.load_state_dict(ckpt.scheduler)
    if runtime.scaler is not None and ckpt.scaler is not None:  # a float16 run resumed on a float16 GPU
        runtime.scaler.load_state_dict(ckpt.scaler)
    epochs_done = ckpt.epoch
    if runtime.dist.main:  # drop log rows of epochs the checkpoint does not hold (killed between log and save)
        write_jsonl(
            out / "train.jsonl", [row for row in read_jsonl(out / "train.jsonl") if row.get("epoch", 0) <= epochs_done]
        )
    return epochs_done, ckpt.best_acc


def train_epoch(
    net: nn.Module,
    loader,
    optimizer,
    scheduler,
    settings: TrainSection,
    runtime: TrainRuntime,
    desc: str,
    show: bool,
    max_steps: int | None = None,
    heartbeat: Callable[[str], None] | None = None,
) -> dict:
    """One pass over ``loader`` (or its first ``max_steps`` batches): a :func:`~.setup.train_step` and a
    scheduler step per batch, with ``settings``' label smoothing and gradient clipping. ``show``: a tqdm bar
    when the output is a terminal; ``heartbeat``, when given, is told ``desc``, the images so far and the
    running loss every :data:`HEARTBEAT_SECONDS` (a log has no bar, and an epoch can take minutes).

    Returns:
        train_loss, train_acc (summed over ranks), train_images_per_s and steps (this process's).
    """
    from tqdm.auto import tqdm

    net.train()
    started = time.perf_counter()
    loss_sum = correct = seen = 0.0
    steps = 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None if show else True)
    last_beat = started
    for x, y in bar:
        x, y = runtime.to_device(x, y)
        loss, logits = train_step(
            net,
            optimizer,
            x,
            y,
            label_smoothing=settings.label_smoothing,
            grad_clip=settings.grad_clip,
            autocast=runtime.autocast,
            scaler=runtime.scaler,
        )
        scheduler.step()
        steps += 1
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        now = time.perf_counter()
        if heartbeat is not None and now - last_beat >= HEARTBEAT_SECONDS:
            last_beat = now
            heartbeat(
                f"{desc}: {seen:.0f}/{len(loader.dataset) if hasattr(loader, 'dataset') else '?'} images, "
                f"loss {loss_sum / seen:.4f}, acc {correct / seen:.3f} ({now - started:.0f} s)"
            )
        if steps == max_steps:
            break
    bar.close()
    loss_sum, correct, seen = runtime.dist.all_reduce_sum(loss_sum, correct, seen)
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "train_images_per_s": seen / (time.perf_counter() - started),
        "steps": steps,
    }


def _write_checkpoints(
    out: Path, meta: Checkpoint, model: nn.Module, optimizer, scheduler, runtime: TrainRuntime, metrics: dict
) -> None:
    """best.pt when this epoch holds the best accuracy so far; last.pt (with the optimiser, for --resume) always."""
    state = replace(
        meta, state_dict=model.state_dict(), epoch=metrics["epoch"], metrics=metrics, best_acc=metrics["best_acc"]
    )
    if metrics["test_acc"] >= metrics["best_acc"]:
        save_checkpoint(out / "best.pt", state)
    scaler = runtime.scaler.state_dict() if runtime.scaler is not None else None
    save_checkpoint(
        out / "last.pt",
        replace(state, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler),
    )


def _progress_lines(progress: bool | Callable[[str], None] | None, main: bool) -> Callable[[str], None] | None:
    """Where the per-epoch lines (and, without a terminal, the lines within an epoch) go: ``progress`` itself
    when it is a callable, tqdm.write (stdout, between the bars) unless it is False, nowhere on other ranks."""
    from tqdm.auto import tqdm

    if progress is False or not main:
        return None
    return progress if callable(progress) else tqdm.write


def train(
    recipe: Recipe, out: str | os.PathLike, resume: bool = False, progress: bool | Callable[[str], None] | None = None
) -> dict:
    """Run a recipe into run directory ``out``; returns the last epoch's metrics (plus best_acc).

    ``progress``: False for silence; True or None for tqdm bars on a terminal and a line per epoch (plus one
    every :data:`HEARTBEAT_SECONDS` within an epoch when the output is no terminal); a callable receives
    those lines instead of stdout and no bar is drawn (a sweep prefixes its point).

    Raises:
        ConfigError: bad settings, ``out`` already holds a run (without ``resume``) or holds none (with it),
            or ``resume`` with a recipe that differs from the run's in a key a resume may not change
            (:mod:`.resume`); raised before anything is written.
        CheckpointError: ``resume`` and the run's last.pt is unreadable (truncated, corrupt).
    """
    out = Path(out)
    settings, data = recipe.train, recipe.data
    ckpt, changes = _check_before_writing(recipe, out, resume)

    # ---- set-up, data and model: every refusal happens here, before the run directory exists -------------
    runtime = _set_up(settings)
    dist = runtime.dist
    train_set, sampler, test_loader = _load_data(recipe, runtime)
    torch.manual_seed(settings.seed)
    model = build_recipe_model(recipe)
    _check_data_fits(recipe, model, len(train_set), dist.world)
    meta = _checkpoint_meta(recipe, model)
    if ckpt is not None and ckpt.architecture and ckpt.architecture != meta.architecture:
        raise CheckpointError(
            f"--resume: {out / 'last.pt'} holds another architecture than this recipe builds "
            "(the code changed since it was written?); train into another --out"
        )
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", recipe.to_dict())
        if changes:  # what this resume changed, and from which epoch on
            append_jsonl(
                out / RESUMES_FILE,
                {
                    "resumed_at_epoch": ckpt.epoch if ckpt is not None else 0,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changes": {k: list(v) for k, v in changes.items()},
                },
            )

    # ---- evolution (Algorithm 1, lines 1-11): sets the model's encodings and G to the best phenotype ----
    if recipe.evolution.enabled and ckpt is None:
        run_evolution(recipe, out, model, runtime.device, dist=dist, progress=False if callable(progress) else progress)

    # ---- optimiser and schedule -------------------------------------------------------------------------
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(recipe, model)
    steps_per_epoch = max(1, len(train_set) // (data.batch_size * dist.world))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        cosine_schedule(steps_per_epoch * max(settings.epochs, 1), int(settings.warmup_epochs * steps_per_epoch)),
    )

    # ---- resume ---------------------------------------------------------------------------------------
    start_epoch, best_acc = 0, 0.0
    if ckpt is not None:
        start_epoch, best_acc = _resume(ckpt, model, optimizer, scheduler, runtime, out)
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if settings.compile:
        compiled = torch.compile(net)
        assert isinstance(compiled, nn.Module)  # a compiled Module is one (torch's OptimizedModule)
        net = compiled

    # ---- epochs (none: an evolution-only run still gets its checkpoint of the evolved model) ------------
    metrics: dict = {}
    say = _progress_lines(progress, dist.main)
    bars = say is not None and not callable(progress)
    heartbeat = say if say is not None and (callable(progress) or not sys.stderr.isatty()) else None
    for epoch in range(start_epoch, settings.epochs):
        epoch_seed = settings.seed * 1000 + epoch
        torch.manual_seed(epoch_seed)  # augmentation draws
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = make_loader(
            train_set,
            data.batch_size,
            True,
            seed=epoch_seed,
            workers=data.workers,
            pin_memory=runtime.pin_memory,
            sampler=sampler,
            drop_last=True,
        )
        started = time.perf_counter()
        trained = train_epoch(
            net,
            loader,
            optimizer,
            scheduler,
            settings,
            runtime,
            f"epoch {epoch + 1}/{settings.epochs}",
            show=bars,
            heartbeat=heartbeat,
        )
        metrics = {
            "epoch": epoch + 1,
            "train_loss": trained["train_loss"],
            "train_acc": trained["train_acc"],
            **evaluate(net, test_loader, runtime.device, dist, runtime.autocast, runtime.channels_last),
            "lr": scheduler.get_last_lr()[-1],  # the plain group (genetic: x genetic_lr_scale)
            "seconds": time.perf_counter() - started,
            "train_images_per_s": trained["train_images_per_s"],
        }
        best_acc = max(best_acc, metrics["test_acc"])
        metrics["best_acc"] = best_acc
        if dist.main:
            _write_checkpoints(out, meta, model, optimizer, scheduler, runtime, metrics)
            append_jsonl(out / "train.jsonl", metrics)
            if say is not None:
                say(
                    f"epoch {epoch + 1}/{settings.epochs}: loss {metrics['train_loss']:.4f} "
                    f"test acc {metrics['test_acc']:.4f} firing rate {metrics['firing_rate']:.4f} "
                    f"({metrics['seconds']:.0f} s, {metrics['train_images_per_s']:.0f} img/s)"
                )
    if settings.epochs == 0:  # every rank joins evaluate's all-reduce
        metrics = {
            "epoch": 0,
            **evaluate(net, test_loader, runtime.device, dist, runtime.autocast, runtime.channels_last),
        }
        metrics["best_acc"] = metrics["test_acc"]
        if dist.main:
            _write_checkpoints(out, meta, model, optimizer, scheduler, runtime, metrics)
    if ckpt is not None and not metrics:
        metrics = ckpt.metrics
    dist.close()
    return metrics
