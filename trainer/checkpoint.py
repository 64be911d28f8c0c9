"""Checkpoints that hold the whole training state, and weight loading that never fails silently.

An epoch checkpoint stores the train cell (network, Momentum moments, the optimizer's global step)
plus the epoch and step inside the file, so a resume reads its position from the checkpoint and
not from the file name. ``load_param_into_net`` does not raise on missing keys; every load here
checks what it left out.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import mindspore as ms
from mindspore import nn

from trainer.config import Config

__all__ = ["EPOCH_KEY", "STEP_KEY", "BEST_NAME", "run_dir", "checkpoint_arg", "save_training_state",
           "latest_checkpoint", "restore_training_state", "save_weights", "load_weights"]

logger = logging.getLogger(__name__)

EPOCH_KEY = "epoch"       # epochs completed when the checkpoint was written
STEP_KEY = "step"         # optimizer steps completed
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.ckpt"   # weights with the best validation top-1
# Optimizer hyperparameters the config defines: a resumed run takes them from its config, so a
# run can be extended (more epochs: a longer per-step LR array) or given a new schedule.
FROM_CONFIG = ("learning_rate", "momentum")
_EPOCH_FILE = re.compile(r"epoch-(\d{4,})\.ckpt$")


def run_dir(cfg: Config) -> Path:
    """``<train.output_dir>/<name>/``: where a run's checkpoints and logs live."""
    return Path(cfg.train.output_dir) / cfg.name


def checkpoint_arg(cfg: Config, ckpt: str | None) -> Path:
    """A command's ``--ckpt``, by default the run's ``best.ckpt``; it must exist."""
    path = Path(ckpt) if ckpt else run_dir(cfg) / BEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt not found: {path}")
    return path


def _atomic_save(save_obj, path: Path, append_dict: dict) -> None:
    """A killed run leaves no half-written checkpoint under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.ckpt")  # save_checkpoint appends .ckpt to any other name
    ms.save_checkpoint(save_obj, str(tmp), append_dict=append_dict)
    os.replace(tmp, path)


def save_training_state(train_cell: nn.Cell, run_dir: Path, epoch: int, step: int, keep: int) -> Path:
    """Write ``epoch-NNNN.ckpt`` and delete all but the newest ``keep`` epoch checkpoints."""
    path = Path(run_dir) / CHECKPOINT_DIR / f"epoch-{epoch:04d}.ckpt"
    _atomic_save(train_cell, path, {EPOCH_KEY: epoch, STEP_KEY: step})
    for old in _epoch_checkpoints(run_dir)[:-max(keep, 1)]:
        old.unlink()
    return path


def _epoch_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [p for p in folder.glob("epoch-*.ckpt") if _EPOCH_FILE.search(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(_EPOCH_FILE.search(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = _epoch_checkpoints(run_dir)
    return found[-1] if found else None


def _load(cell: nn.Cell, path: Path, *, allow_extra: bool) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    params = ms.load_checkpoint(str(path))
    extras = {k: params.pop(k) for k in (EPOCH_KEY, STEP_KEY) if k in params}
    for key in FROM_CONFIG:
        params.pop(key, None)
    missing, unused = ms.load_param_into_net(cell, params)
    missing = [k for k in missing if k not in FROM_CONFIG]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} network parameters, e.g. {missing[:3]}: "
                         "wrong checkpoint or model config")
    if unused and not allow_extra:
        raise ValueError(f"{path} has {len(unused)} parameters the network lacks, e.g. {unused[:3]}")
    if unused:
        logger.info("%s: ignored %d entries not in the network (optimizer state)", path, len(unused))
    return {k: int(v.asnumpy()) for k, v in extras.items()}


def restore_training_state(train_cell: nn.Cell, path: Path) -> tuple[int, int]:
    """Load network and optimizer state; returns ``(epochs_done, steps_done)`` from the file."""
    position = _load(train_cell, path, allow_extra=False)
    if EPOCH_KEY not in position or STEP_KEY not in position:
        raise ValueError(f"{path} is not a training checkpoint (no {EPOCH_KEY}/{STEP_KEY} inside)")
    return position[EPOCH_KEY], position[STEP_KEY]


def save_weights(net: nn.Cell, path: Path, epoch: int) -> None:
    """Network weights only (``best.ckpt``): what eval and export need."""
    _atomic_save(net, Path(path), {EPOCH_KEY: epoch})


def load_weights(net: nn.Cell, path: str | Path) -> None:
    """Load every network parameter from a weights or training checkpoint, or raise."""
    _load(net, Path(path), allow_extra=True)
