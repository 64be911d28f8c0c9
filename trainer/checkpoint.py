"""Checkpoints that hold the whole training state, and weight loading that never fails silently.

An epoch checkpoint stores the train cell (network, Momentum moments, the optimizer's global step)
plus the epoch and step inside the file, so a resume reads its position from the checkpoint and
not from the file name. ``load_param_into_net`` does not raise on missing keys; every load here
checks what it left out, and refuses a NaN or an infinity (a diverged run's), so no command
resumes, evaluates or exports from one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import mindspore as ms
import numpy as np
from mindspore import nn

from trainer.config import Config
from trainer.rundir import RunDir, atomic_path

__all__ = ["EPOCH_KEY", "STEP_KEY", "describe_entries", "checkpoint_epoch", "checkpoint_arg", "nan_or_inf", "non_finite",
           "save_training_state", "restore_training_state", "save_weights", "load_weights"]

logger = logging.getLogger(__name__)

EPOCH_KEY = "epoch"       # epochs completed when the checkpoint was written
STEP_KEY = "step"         # optimizer steps completed
# Optimizer hyperparameters the config defines: a resumed run takes them from its config, so a
# run can be extended (more epochs: a longer per-step LR array) or given a new schedule.
FROM_CONFIG = ("learning_rate", "momentum")


def checkpoint_arg(cfg: Config, ckpt: str | None) -> Path:
    """A command's ``--ckpt``, by default the run's ``best.ckpt``; it must exist."""
    path = Path(ckpt) if ckpt else RunDir.of(cfg).best_weights
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt not found: {path}")
    return path


def nan_or_inf(values: np.ndarray) -> str:
    """Which non-finite value ``values`` holds, for an error line."""
    return "nan" if np.isnan(values).any() else "inf"


def non_finite(tensors: Iterable[tuple[str, ms.Tensor]]) -> str | None:
    """``"34 of 489 tensors are not finite, first layer1.0.bn1.moving_variance (inf)"``, or None.

    One pass on the host over the float tensors: ~40 ms for StNet-R50's weights, BN statistics
    and Momentum moments (66 M values), once per epoch and per load.
    """
    bad, total = [], 0
    for name, tensor in tensors:
        total += 1
        values = tensor.asnumpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad.append(f"{name} ({nan_or_inf(values)})")
    return f"{len(bad)} of {total} tensors are not finite, first {bad[0]}" if bad else None


def _save(save_obj, path: Path, append_dict: dict) -> None:
    """A killed run leaves no half-written checkpoint under the final name."""
    with atomic_path(path, suffix=".ckpt") as tmp:
        ms.save_checkpoint(save_obj, str(tmp), append_dict=append_dict)


def save_training_state(train_cell: nn.Cell, run: RunDir, epoch: int, step: int, keep: int) -> Path:
    """Write the epoch checkpoint and delete all but the newest ``keep`` of them."""
    path = run.epoch_checkpoint(epoch)
    _save(train_cell, path, {EPOCH_KEY: epoch, STEP_KEY: step})
    run.prune_checkpoints(keep)
    return path


# Train-cell state that may be absent or surplus when a run is resumed with another amp level:
# the loss scale exists only under O1-O3 (a missing one starts from train.loss_scale).
AMP_STATE = ("scale_sense",)
# Grouped in the report: one entry per parameter (Momentum's moments, other optimizers' slots).
_SLOT_PREFIXES = ("moments.", "accum.", "moment1.", "moment2.")


def describe_entries(keys: list[str]) -> str:
    """``moments.* (301), learning_rate, global_step`` and the like, for one log line."""
    groups: dict[str, int] = {}
    for key in keys:
        prefix = next((p for p in _SLOT_PREFIXES if key.startswith(p)), None)
        label = f"{prefix}*" if prefix else key
        groups[label] = groups.get(label, 0) + 1
    return ", ".join(f"{k} ({n})" if n > 1 else k for k, n in sorted(groups.items()))


def _shape_cause(key: str, found: tuple, expected: tuple) -> str:
    """The config setting that most likely explains a shape mismatch on ``key``."""
    if key.startswith(("xception.att_conv.", "xception.att_1.")) and key.endswith("weight"):
        variant = "depthwise" if found[1] == 1 else "dense"
        return f"the checkpoint has the {variant} temporal Xception head: set model.xception={variant}"
    if key.startswith("fc.") and found[1:] == expected[1:]:
        return (f"the checkpoint classifies {found[0]} classes, model.num_classes={expected[0]}: set "
                f"model.num_classes={found[0]}, or fine-tune from it with model.pretrained")
    if key == "conv1.weight" and found[0] == expected[0] and found[1] % 3 == 0:
        return (f"the checkpoint stacks {found[1] // 3} frames per segment: set "
                f"data.frames_per_segment={found[1] // 3}")
    return "another model.depth/model.width or another architecture"


def _imagenet_hint(path: Path, state: dict) -> str | None:
    """A hint when ``state`` is a 2D ResNet (3-channel conv1 or an ImageNet ``end_point``
    classifier, no temporal layers) rather than an StNet."""
    stem = state.get("conv1.weight")
    two_d = (stem is not None and stem.shape[1] == 3) or "end_point.weight" in state
    if two_d and not any(k.startswith("temp1.") for k in state):
        return (f"{path} is a 2D ImageNet ResNet checkpoint, not an StNet one: initialise "
                f"training from it with model.pretrained={path}")
    return None


def _load(cell: nn.Cell, path: Path, *, training_state: bool) -> dict:
    """Load ``path`` into ``cell`` after checking every name and shape; returns the epoch/step
    stored in the file. ``training_state``: ``cell`` is a train cell (optimizer included)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    params = ms.load_checkpoint(str(path))
    position = {k: int(params.pop(k).asnumpy()) for k in (EPOCH_KEY, STEP_KEY) if k in params}
    for key in FROM_CONFIG if training_state else ():
        params.pop(key, None)
    wanted = {p.name: p for p in cell.get_parameters()}
    optional = FROM_CONFIG + AMP_STATE if training_state else ()
    missing = [k for k in wanted if k not in params and k not in optional]
    if missing:
        hint = _imagenet_hint(path, params)
        raise ValueError(hint or f"{path} lacks {len(missing)} network parameters, e.g. {missing[:3]}: "
                                 f"wrong checkpoint or model config")
    for key, value in params.items():
        if key in wanted and tuple(value.shape) != tuple(wanted[key].shape):
            found, expected = tuple(value.shape), tuple(wanted[key].shape)
            raise ValueError(f"{path}: {key} is {found} in the checkpoint but {expected} in the "
                             f"network: {_shape_cause(key, found, expected)}")
    surplus = sorted(k for k in params if k not in wanted)
    unexpected = [k for k in surplus if k not in AMP_STATE] if training_state else []
    if unexpected:
        raise ValueError(f"{path} has {len(unexpected)} entries the training state lacks, e.g. "
                         f"{unexpected[:3]}: a checkpoint of another model config")
    if surplus:
        logger.info("%s: %d entries are not network parameters and were not loaded: %s", path,
                    len(surplus), describe_entries(surplus))
    loaded = {k: v for k, v in params.items() if k in wanted}
    problem = non_finite(loaded.items())
    if problem:
        raise ValueError(f"{path}: {problem}: the run that wrote it diverged; use an earlier "
                         f"checkpoint")
    # The config's lr/momentum (and a fresh loss scale when the file has none) stay: hand the
    # cell's own values back, so MindSpore does not warn that they were not loaded.
    kept = [k for k in wanted if k not in loaded]
    loaded.update({k: wanted[k] for k in kept})
    ms.load_param_into_net(cell, loaded, strict_load=True)
    if training_state:
        logger.info("%s: restored %d tensors (network, optimizer state%s); %s from the config",
                    path, len(loaded) - len(kept), ", loss scale" if "scale_sense" in params else "",
                    " and ".join(kept) or "nothing")
    return position


def checkpoint_epoch(path: str | Path) -> int:
    """Epochs a training checkpoint has completed, read without loading its tensors."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    stored = ms.load_checkpoint(str(path), choice_func=lambda name: name == EPOCH_KEY)
    if EPOCH_KEY not in stored:
        raise ValueError(f"{path} is not a training checkpoint (no {EPOCH_KEY} inside)")
    return int(stored[EPOCH_KEY].asnumpy())


def restore_training_state(train_cell: nn.Cell, path: Path, steps_per_epoch: int) -> tuple[int, int]:
    """Load network and optimizer state; returns ``(epochs_done, steps_done)``.

    Checkpoints are written at epoch ends, so a run resumes at step ``epochs_done ×
    steps_per_epoch``. The file's step differs when data.batch_size or the rank count changed
    since it was written; the optimizer's step, which indexes the per-step LR array, is then set
    to the recomputed one, so the schedule goes on from the epoch boundary (not past its end).
    """
    position = _load(train_cell, path, training_state=True)
    if EPOCH_KEY not in position or STEP_KEY not in position:
        raise ValueError(f"{path} is not a training checkpoint (no {EPOCH_KEY}/{STEP_KEY} inside)")
    epoch, step = position[EPOCH_KEY], position[STEP_KEY]
    if step != epoch * steps_per_epoch:
        logger.info("%s was written after %d epochs at step %d, but an epoch is now %d steps "
                    "(data.batch_size or the rank count changed): step count recomputed: %d epochs "
                    "x %d steps = %d", path, epoch, step, steps_per_epoch, epoch, steps_per_epoch,
                    epoch * steps_per_epoch)
        step = epoch * steps_per_epoch
        train_cell.optimizer.global_step.set_data(ms.Tensor([step], ms.int32))
    return epoch, step


def save_weights(net: nn.Cell, path: Path, epoch: int) -> None:
    """Network weights only (``best.ckpt``): what eval and export need."""
    _save(net, Path(path), {EPOCH_KEY: epoch})


def load_weights(net: nn.Cell, path: str | Path) -> None:
    """Load every network parameter from a weights or training checkpoint, or raise."""
    _load(net, Path(path), training_state=False)
