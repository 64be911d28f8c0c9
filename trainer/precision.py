"""One precision policy for every command that runs the network (train, eval, export, predict).

Training casts the network with ``amp_level``; evaluating or exporting it uncast would run
another network than the one trained (and Conv3d is float16-only on Ascend). So training casts
through ``cast_network`` and every inference command builds its network with
``inference_network``: the in-run evaluation, ``trainer.eval`` and an export of the same
checkpoint compute the same thing on the same device.
"""
from __future__ import annotations

from pathlib import Path

import mindspore as ms
from mindspore import nn

from trainer.checkpoint import load_weights
from trainer.config import AMP_LEVELS, Config, ConfigError
from trainer.model import create_model
from trainer.runtime import resolve_device_target

__all__ = ["AMP_LEVELS", "amp_level", "cast_network", "inference_network"]

LOW_PRECISION_DEVICES = ("Ascend", "GPU")


def amp_level(cfg: Config) -> str:
    """``train.amp_level`` with ``auto`` resolved: O2 on Ascend/GPU, O0 (float32) on CPU.

    Mixed precision is ~2x slower on CPU (docs/design.md §7), so ``auto`` keeps CPU
    runs in float32; an explicit level is honoured on every device, CPU included.
    """
    level = cfg.train.amp_level
    if level not in AMP_LEVELS:
        raise ConfigError(f"train.amp_level must be one of {'|'.join(AMP_LEVELS)}, got {level!r}")
    if level == "auto":
        return "O2" if resolve_device_target(cfg) in LOW_PRECISION_DEVICES else "O0"
    return level


def cast_network(net: nn.Cell, cfg: Config) -> nn.Cell:
    """``net`` cast for ``amp_level(cfg)``: O2 keeps BatchNorm in float32 and returns float32
    logits. Parameter names are unchanged, so checkpoints load before or after the cast."""
    return ms.amp.auto_mixed_precision(net, amp_level(cfg))


def inference_network(cfg: Config, ckpt: str | Path) -> nn.Cell:
    """StNet of ``cfg`` with the weights of ``ckpt``, cast as training casts it, in eval mode."""
    net = create_model(cfg)
    load_weights(net, ckpt)
    net = cast_network(net, cfg)
    net.set_train(False)
    return net
