"""The optimizer step: Momentum on the cross-entropy, with loss scaling under mixed precision.

Under O1/O2/O3 the loss is multiplied by a scale before the backward pass so small float16
gradients do not flush to zero. The step divides the gradients by the same scale before the
optimizer sees them, and skips the update when any gradient is inf/NaN (a float16 overflow).
The optimizer itself gets no ``loss_scale`` (it would divide a second time). MindSpore's
``build_train_network`` with ``FixedLossScaleManager(drop_overflow_update=False)`` does neither
unless the optimizer is given the scale too: that applied updates 1024x too large.

``dynamic`` halves the scale on an overflow and doubles it after ``loss_scale_window`` clean
steps; ``fixed`` keeps it. MindSpore's overflow check uses Ascend/GPU status registers, so on
CPU (where O2 runs in the tests) the check is an isfinite over the gradients instead; the scale
arithmetic, the skip and the gradient all-reduce are MindSpore's own cell on every device.

The loss leaves out the samples the loader flagged as bad (label ``trainer.data.IGNORE_LABEL``).
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from trainer.config import LOSS_SCALE_MANAGERS, Config, ConfigError
from trainer.data import IGNORE_LABEL
from trainer.precision import amp_level
from trainer.pretrained import CLASSIFIER_PREFIX

__all__ = ["LOSS_SCALE_MANAGERS", "StepResult", "MaskedCrossEntropy", "LossScaledTrainStep",
           "PendingStep", "build_train_cell", "launch_step", "run_step"]

_not_finite = ops.MultitypeFuncGraph("not_finite")


@_not_finite.register("Tensor")
def _tensor_not_finite(grad):
    return ops.logical_not(ops.isfinite(grad).all()).astype(ms.float32)


class MaskedCrossEntropy(nn.LossBase):
    """Cross-entropy averaged over the samples not labelled ``IGNORE_LABEL`` (bad samples).

    A batch without any gives 0 and zero gradients: ``nn.CrossEntropyLoss(ignore_index=...)``
    averages over no sample there and returns NaN, which the update would put in every weight.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.per_sample = nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL, reduction="none",
                                              label_smoothing=label_smoothing)

    def construct(self, logits, labels):
        kept = (labels != IGNORE_LABEL).astype(logits.dtype).sum()
        return self.per_sample(logits, labels).sum() / ops.maximum(kept, 1.0)


class LossScaledTrainStep(nn.TrainOneStepWithLossScaleCell):
    """MindSpore's loss-scaled step with a device-independent overflow check off Ascend/GPU.

    Returns ``(loss, overflow, scale)``: the step's float32 loss, True when the update was
    skipped, and the loss scale after this step's update of it.
    """

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, scale_sense: nn.Cell) -> None:
        super().__init__(network, optimizer, scale_sense)
        self.native_overflow_check = ms.get_current_device().device_target in ("Ascend", "GPU")

    def get_overflow_status(self, status, compute_output):
        if self.native_overflow_check:
            return super().get_overflow_status(status, compute_output)
        flags = ops.AddN()(self.hyper_map(_not_finite, compute_output))
        if self.is_distributed:
            flags = self.allreduce(flags)
        return flags > 0


@dataclass(frozen=True)
class StepResult:
    loss: float
    skipped: bool          # update skipped: a gradient overflowed under loss scaling
    loss_scale: float      # 1.0 without loss scaling


def _optimizer(net: nn.Cell, cfg: Config, lr: np.ndarray) -> nn.Optimizer:
    """Momentum with the per-step rates ``lr``; no weight decay on BN and biases (1-D).

    With ``train.head_lr_mult`` != 1 (fine-tuning) the classifier steps at that multiple of the
    schedule, the usual way to let a fresh head catch up with a pretrained backbone.
    """
    params = net.trainable_params()
    mult = cfg.train.head_lr_mult
    is_head = [mult != 1 and p.name.startswith(CLASSIFIER_PREFIX) for p in params]
    head = [p for p, h in zip(params, is_head) if h]
    body = [p for p, h in zip(params, is_head) if not h]
    groups = [{"params": [p for p in body if p.ndim > 1], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in body if p.ndim <= 1], "weight_decay": 0.0}]
    if head:
        head_lr = ms.Tensor((lr * mult).astype(np.float32))
        groups += [{"params": [p for p in head if p.ndim > 1], "weight_decay": cfg.train.weight_decay,
                    "lr": head_lr},
                   {"params": [p for p in head if p.ndim <= 1], "weight_decay": 0.0, "lr": head_lr}]
    return nn.Momentum(groups + [{"order_params": params}], learning_rate=ms.Tensor(lr),
                       momentum=cfg.train.momentum)


def _scale_update_cell(cfg: Config) -> nn.Cell:
    manager, scale = cfg.train.loss_scale_manager, cfg.train.loss_scale
    if manager not in LOSS_SCALE_MANAGERS:
        raise ConfigError(f"train.loss_scale_manager must be one of {'|'.join(LOSS_SCALE_MANAGERS)}, "
                          f"got {manager!r}")
    if not scale >= 1:
        raise ConfigError(f"train.loss_scale must be >= 1, got {scale!r}")
    if manager == "fixed":
        return nn.FixedLossScaleUpdateCell(scale)
    if cfg.train.loss_scale_window < 1:
        raise ConfigError(f"train.loss_scale_window must be >= 1, got {cfg.train.loss_scale_window!r}")
    return nn.DynamicLossScaleUpdateCell(scale, scale_factor=2, scale_window=cfg.train.loss_scale_window)


def build_train_cell(net: nn.Cell, cfg: Config, lr: np.ndarray) -> nn.Cell:
    """The train step for ``net``, already cast by ``trainer.precision.cast_network``.

    O0 is a plain ``TrainOneStepCell``; any other level a ``LossScaledTrainStep``.
    """
    loss = nn.WithLossCell(net, MaskedCrossEntropy(cfg.train.label_smoothing))
    optimizer = _optimizer(net, cfg, lr)
    if amp_level(cfg) == "O0":
        return nn.TrainOneStepCell(loss, optimizer).set_train()
    return LossScaledTrainStep(loss, optimizer, _scale_update_cell(cfg)).set_train()


@dataclass(frozen=True)
class PendingStep:
    """A launched step's outputs, left on the device: reading them (``result``) makes the host
    wait for the device, so the training loop reads a log window's steps at once."""

    outputs: ms.Tensor | tuple

    def result(self) -> StepResult:
        """The loss (and the overflow flag and scale when scaled), read back."""
        if isinstance(self.outputs, tuple):
            loss, overflow, scale = self.outputs
            return StepResult(float(loss.asnumpy()), bool(overflow.asnumpy()), float(scale.asnumpy()))
        return StepResult(float(self.outputs.asnumpy()), False, 1.0)


def launch_step(train_cell: nn.Cell, clip: ms.Tensor, label: ms.Tensor) -> PendingStep:
    """One optimizer step, without waiting for it."""
    return PendingStep(train_cell(clip, label))


def run_step(train_cell: nn.Cell, clip: ms.Tensor, label: ms.Tensor) -> StepResult:
    """One optimizer step, read back at once."""
    return launch_step(train_cell, clip, label).result()
