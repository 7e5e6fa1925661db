"""Quantisation-aware fine-tune: a short run that makes every spike-reading layer's weight int8 per channel.

``gee-deploy quantize CHECKPOINT --out Q.pt`` (docs/design.md, "Int8 layers"). Sections in the order they run:

1. load the fp32 checkpoint and its recipe; find the layers to quantise: the layers that read spikes (by data
   flow: :func:`gee_deploy.quantisation.spike_reading_layers`) and the stem, which then reads the image as
   8-bit codes (:class:`gee_deploy.quantisation.InputCodes`: an 8-bit image's pixels exactly); layers reading
   analog values (an average pool of spikes) stay fp32;
2. evaluate the fp32 model, then the same weights post-training quantised (fake quantisation attached,
   no training): the accuracy an int8 export of the fp32 checkpoint would have;
3. fine-tune with the quantisers attached: the forward uses W_q = q s (int8 codes per output channel),
   the backward passes the gradient straight through to the generated W = scale E G E^T (so E, G and the
   BatchNorms learn weights that work after rounding) with the recipe's optimiser policy
   (:func:`~gee_deploy.training.setup.build_optimizer`: genetic parameters at ``genetic_lr_scale``), cosine
   decay from ``lr_scale`` x the recipe's learning rate, no weight decay;
4. evaluate and save: the checkpoint records ``quantisation`` (scheme and layers), so it rebuilds its
   quantised model alone and its eval path computes what the int8 export computes, bit for bit (exact integer
   sums, then the same float32 scale and bias: :class:`gee_deploy.quantisation.Int8Quantiser`).

The fine-tune is seeded (data order and augmentation, as the trainer seeds its epochs): the same command gives
the same checkpoint bit for bit on one machine. The fine-tune's time is reported against the original training's (its run directory's train.jsonl,
or the checkpoint's epoch count x its last epoch's seconds).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..checkpoint import (
    Checkpoint,
    QuantisationRecord,
    architecture_fingerprint,
    build_model,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from ..data import load_split, make_loader
from ..errors import CheckpointError, ConfigError
from ..io import read_jsonl
from ..quantisation import attach_quantisers, spike_reading_layers, stem_layer
from ..recipe import recipe_from_dict
from .setup import build_optimizer, check_training_batches
from .trainer import TrainRuntime, cosine_schedule, evaluate, select_device, train_epoch

__all__ = ["QuantizeReport", "quantize"]


@dataclass
class QuantizeReport:
    """What one fine-tune did (accuracies as fractions on the full test split)."""

    out: str
    layers: list[str]
    fp32_acc: float
    ptq_acc: float  # fp32 weights, rounded to int8 without training
    qat_acc: float  # after the fine-tune
    fp32_firing_rate: float
    qat_firing_rate: float
    epochs: float
    steps: int
    train_seconds: float  # the fine-tune's training steps
    seconds: float  # everything: loading, three evaluations, training, saving
    original_train_seconds: float | None
    original_train_estimated: bool = False  # no train.jsonl: the checkpoint's epochs x its last epoch's seconds

    def summary(self) -> str:
        estimate = ", estimated as its epochs x its last epoch's time" if self.original_train_estimated else ""
        share = (
            (
                f" ({self.train_seconds / self.original_train_seconds:.1%} of the original training's "
                f"{self.original_train_seconds:.0f} s{estimate})"
            )
            if self.original_train_seconds
            else ""
        )
        worse = (
            [
                f"  note: the fine-tune ended below the int8 model without it ({self.qat_acc:.4f} < "
                f"{self.ptq_acc:.4f}): try more --epochs or another --lr-scale, or export the fp32 checkpoint "
                "with --variant int8 (post-training int8)"
            ]
            if self.qat_acc < self.ptq_acc
            else []
        )
        return "\n".join(
            [
                f"wrote {self.out}: {len(self.layers)} layers int8 per output channel ({', '.join(self.layers)})",
                f"  test accuracy: fp32 {self.fp32_acc:.4f}, int8 without fine-tune {self.ptq_acc:.4f}, "
                f"int8 fine-tuned {self.qat_acc:.4f} ({(self.qat_acc - self.fp32_acc) * 100:+.2f} points vs fp32)",
                f"  firing rate: fp32 {self.fp32_firing_rate:.4f}, int8 fine-tuned {self.qat_firing_rate:.4f}",
                f"  fine-tune: {self.epochs:g} epoch(s), {self.steps} steps, {self.train_seconds:.0f} s of training{share}; "
                f"{self.seconds:.0f} s in all with the three evaluations",
                *worse,
            ]
        )


def _original_seconds(checkpoint: Path, ckpt: Checkpoint) -> tuple[float | None, bool]:
    """Seconds the training of ``ckpt`` took and whether that is an estimate: its run directory's train.jsonl rows
    up to its epoch, else (an estimate) its last epoch's seconds (its metrics, a train.jsonl row) x its epochs;
    None when neither says."""
    log = checkpoint.parent / "train.jsonl"
    if log.is_file():
        rows = [r for r in read_jsonl(log) if "seconds" in r and r.get("epoch", 0) <= ckpt.epoch]
        if rows:
            return float(sum(r["seconds"] for r in rows)), False
    if "seconds" in ckpt.metrics and ckpt.epoch:
        return float(ckpt.metrics["seconds"]) * ckpt.epoch, True
    return None, False


def quantize(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    epochs: float = 0.5,
    lr_scale: float = 0.02,
    batch_size: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> QuantizeReport:
    """Fine-tune fp32 ``checkpoint`` with int8 fake-quantised weights into checkpoint ``out``.

    Args:
        checkpoint: a gee-deploy checkpoint (best.pt) whose recipe names its dataset.
        out: the quantised checkpoint to write (refused if it exists or equals ``checkpoint``).
        epochs: fine-tune length in passes over the training split (fractions allowed; > 0).
        lr_scale: peak learning rate as a multiple of the recipe's ``train.lr``.
        batch_size: default the recipe's.
        train_limit / test_limit: use only the first N images of each split (tests, quick looks).
        data_dir: where the dataset lives, if not at its default place.
        device: auto | cpu | cuda[:N].
        threads: torch CPU threads (default the recipe's, else torch's).
        seed: the fine-tune's seed: its data order and augmentation draws (per pass ``seed * 1000 + pass``, as
            the trainer's epochs), so the same call on one machine writes the same checkpoint bit for bit.
        progress: print one line per phase on stderr.

    Raises:
        CheckpointError: unreadable checkpoint, or one already quantised.
        ConfigError: bad options, an existing ``out``, a model with no spike-reading layer, or one whose
            spike-reading layers are plain nn.Conv2d / nn.Linear (dense twins outside ConvPool).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not epochs > 0:
        raise ConfigError(f"--epochs must be > 0, got {epochs}")
    if not lr_scale > 0:
        raise ConfigError(f"--lr-scale must be > 0, got {lr_scale}")
    if out.exists():
        raise ConfigError(f"--out {out} already exists; choose another path")
    ckpt = load_checkpoint(checkpoint)
    if ckpt.quantisation is not None:
        raise CheckpointError(f"{checkpoint} is already int8 fine-tuned")
    recipe = recipe_from_dict(ckpt.recipe)
    # the trainer's epoch loop with the recipe's optimiser policy, at lr_scale x its learning rate, no weight decay
    try:
        t = replace(recipe.train, lr=recipe.train.lr * lr_scale, weight_decay=0.0)
    except ConfigError as e:
        raise ConfigError(f"--lr-scale {lr_scale} x the checkpoint's train.lr {recipe.train.lr}: {e}") from None
    dataset = ckpt.dataset_name or recipe.data.name
    started = time.perf_counter()

    # ---- 1. model, layers, data -----------------------------------------------------------------------
    device_ = select_device(device)
    if threads or recipe.train.threads:
        torch.set_num_threads(threads or recipe.train.threads)
    model = build_model(ckpt, str(checkpoint))
    layers = spike_reading_layers(model)
    if not layers:
        raise ConfigError(f"{checkpoint}: no weight layer reads spikes; nothing to quantise")
    layers = [stem_layer(model), *layers]
    fp32_model = copy.deepcopy(model).to(device_)
    attach_quantisers(model, layers)  # refuses a layer it cannot quantise before any data is read
    model.to(device_)
    batch = batch_size or recipe.data.batch_size
    train_set = load_split(
        dataset,
        "train",
        data_dir or recipe.data.data_dir or None,
        augment=recipe.data.augment,
        limit=train_limit,
        crop_padding=recipe.data.crop_padding,
    )
    test_set = load_split(dataset, "test", data_dir or recipe.data.data_dir or None, limit=test_limit)
    limit = f" after --train-limit {train_limit}" if train_limit else ""
    check_training_batches(model, len(train_set), batch, batch_key="--batch-size", limit=limit)
    test_loader = make_loader(test_set, batch, False)
    # progress on stderr, as it happens; the summary the command prints at the end is the stdout result
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda *_: None)

    # ---- 2. fp32 and post-training int8 accuracy -------------------------------------------------------
    fp32 = evaluate(fp32_model, test_loader, device_)
    say(f"fp32 test accuracy {fp32['test_acc']:.4f}")
    del fp32_model
    ptq = evaluate(model, test_loader, device_)
    say(f"int8 without fine-tune {ptq['test_acc']:.4f}")

    # ---- 3. fine-tune with straight-through fake quantisation ----------------------------------------
    optimizer = build_optimizer(replace(recipe, train=t), model)
    steps_per_epoch = len(train_set) // batch
    total = max(1, round(epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(total, 0))
    runtime = TrainRuntime.local(device_)
    step = 0
    tuned_at = time.perf_counter()
    while step < total:
        epoch_seed = seed * 1000 + step // steps_per_epoch  # as the trainer seeds its epochs
        torch.manual_seed(epoch_seed)  # the augmentation's crops and flips: the same command, the same checkpoint
        loader = make_loader(train_set, batch, True, seed=epoch_seed, drop_last=True)
        step += train_epoch(
            model,
            loader,
            optimizer,
            scheduler,
            t,
            runtime,
            f"int8 fine-tune ({step}/{total} steps)",
            show=progress,
            max_steps=total - step,
        )["steps"]
    tune_seconds = time.perf_counter() - tuned_at

    # ---- 4. evaluate and save -------------------------------------------------------------------------
    qat = evaluate(model, test_loader, device_)
    say(f"int8 fine-tuned {qat['test_acc']:.4f}")
    metrics = {
        **qat,
        "fp32_test_acc": fp32["test_acc"],
        "ptq_test_acc": ptq["test_acc"],
        "fp32_firing_rate": fp32["firing_rate"],
        "quantize_seconds": tune_seconds,
    }
    model.cpu()
    record = QuantisationRecord.of_model(
        model, epochs=epochs, lr_scale=lr_scale, source=str(checkpoint), source_sha256=file_sha256(checkpoint)
    )
    save_checkpoint(
        out,
        replace(
            ckpt.metadata(),
            architecture=architecture_fingerprint(model),
            state_dict=model.state_dict(),
            metrics=metrics,
            best_acc=qat["test_acc"],
            quantisation=record,
        ),
    )
    return QuantizeReport(
        str(out),
        layers,
        fp32["test_acc"],
        ptq["test_acc"],
        qat["test_acc"],
        fp32["firing_rate"],
        qat["firing_rate"],
        epochs,
        step,
        tune_seconds,
        time.perf_counter() - started,
        *_original_seconds(checkpoint, ckpt),
    )
