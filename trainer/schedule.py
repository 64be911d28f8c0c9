"""Per-step learning rates, computed once so the optimizer indexes them by its global step.

The reference hard-codes its decay inside an eval callback; here the whole schedule is a pure
function of the config and the epoch length, so a resumed run gets the same rate at the same step.
"""
from __future__ import annotations

import math

import numpy as np

from trainer.config import LR_SCHEDULES, Config

__all__ = ["LR_SCHEDULES", "build_lr"]


def build_lr(train: Config, steps_per_epoch: int) -> np.ndarray:
    """float32 rates for every step of ``train.epochs`` epochs (``train`` is ``cfg.train``)."""
    if train.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {train.lr_schedule!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch needs at least one step, got {steps_per_epoch} "
                         "(fewer clips than one batch per device?)")
    total = train.epochs * steps_per_epoch
    warmup = min(int(round(train.warmup_epochs * steps_per_epoch)), total)
    steps = np.arange(total, dtype=np.float64)
    if train.lr_schedule == "step":
        decays = np.searchsorted(np.asarray(train.lr_milestones) * steps_per_epoch, steps, side="right")
        lr = train.lr * train.lr_gamma ** decays
    else:
        progress = (steps - warmup) / max(total - warmup, 1)
        lr = 0.5 * train.lr * (1.0 + np.cos(math.pi * np.clip(progress, 0.0, 1.0)))
    if warmup:
        lr[:warmup] = train.lr * (steps[:warmup] + 1) / warmup
    return lr.astype(np.float32)
