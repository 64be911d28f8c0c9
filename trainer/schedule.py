"""Per-step learning rates, computed once so the optimizer indexes them by its global step.

The reference hard-codes its decay inside an eval callback; here the whole schedule is a pure
function of the config and the epoch length, so a resumed run gets the same rate at the same step.
"""
from __future__ import annotations

import math

import numpy as np

from trainer.config import LR_SCHEDULES, Config

__all__ = ["LR_SCHEDULES", "scaled_lr", "build_lr"]


def scaled_lr(train: Config, global_batch: int) -> float:
    """``train.lr``, which is for ``train.lr_batch`` clips a step, scaled linearly to
    ``global_batch`` clips a step (every rank's batch together): the demo's lr for 8 workers
    made one process diverge, and a recipe's lr is for its batch, not the user's.
    ``train.scale_lr: false`` keeps ``train.lr`` as given."""
    return train.lr * global_batch / train.lr_batch if train.scale_lr else train.lr


def build_lr(train: Config, steps_per_epoch: int, global_batch: int) -> np.ndarray:
    """float32 rates for every step of ``train.epochs`` epochs (``train`` is ``cfg.train``),
    peaking at ``scaled_lr(train, global_batch)``."""
    if train.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {train.lr_schedule!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch needs at least one step, got {steps_per_epoch} "
                         "(fewer clips than one batch per device?)")
    total = train.epochs * steps_per_epoch
    peak = scaled_lr(train, global_batch)
    warmup = min(int(round(train.warmup_epochs * steps_per_epoch)), total)
    steps = np.arange(total, dtype=np.float64)
    if train.lr_schedule == "step":
        decays = np.searchsorted(np.asarray(train.lr_milestones) * steps_per_epoch, steps, side="right")
        lr = peak * train.lr_gamma ** decays
    else:
        progress = (steps - warmup) / max(total - warmup, 1)
        lr = 0.5 * peak * (1.0 + np.cos(math.pi * np.clip(progress, 0.0, 1.0)))
    if warmup:
        lr[:warmup] = peak * (steps[:warmup] + 1) / warmup
    return lr.astype(np.float32)
