"""One precision policy for every command that runs the network (train, eval, export, predict).

Training casts the network with ``amp_level``; evaluating or exporting it uncast would run
another network than the one trained (and Conv3d is float16-only on Ascend). So training casts
through ``cast_network`` and every inference command builds its network with
``inference_network``: the in-run evaluation, ``trainer.eval`` and an export of the same
checkpoint compute the same thing on the same device.

The loader's clips are uint8 pixels (trainer.data); ``PixelInput`` is the network's first step
everywhere (train, eval, predict, the uint8 export): it normalizes and lays them out on the
device.
"""
from __future__ import annotations

from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from trainer.checkpoint import load_weights
from trainer.config import AMP_LEVELS, Config, ConfigError
from trainer.data import MEAN, STD
from trainer.model import create_model
from trainer.runtime import resolve_device_target

__all__ = ["AMP_LEVELS", "PixelInput", "amp_level", "cast_network", "inference_network"]

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


class PixelInput(nn.Cell):
    """uint8 pixels (B, T, N, S, S, 3) in, ``net`` on normalized (B, T, 3N, S, S) float32.

    ``x·scale + bias`` per channel (scale 1/(255·std), bias −mean/std) equals the host's
    ``(x/255 − mean)/std`` (trainer.data's ``normalize=True``) up to float32 rounding. The
    parameter names are ``net``'s own, so checkpoints are the same with or without it.
    """

    def __init__(self, net: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.net = net
        mean, std = np.asarray(MEAN, np.float64), np.asarray(STD, np.float64)
        self.scale = ms.Tensor(1.0 / (255.0 * std), ms.float32)
        self.bias = ms.Tensor(-mean / std, ms.float32)

    def construct(self, x):
        b, t, n, h, w, c = x.shape
        x = ops.cast(x, ms.float32) * self.scale + self.bias
        return self.net(ops.transpose(x, (0, 1, 2, 5, 3, 4)).reshape(b, t, n * c, h, w))


def inference_network(cfg: Config, ckpt: str | Path, *, pixels: bool = True) -> nn.Cell:
    """StNet of ``cfg`` with the weights of ``ckpt``, cast as training casts it, in eval mode;
    taking the loader's pixels (``PixelInput``), or with ``pixels=False`` host-normalized float32
    clips (the model zoo's interface)."""
    net = create_model(cfg)
    load_weights(net, ckpt)
    net = cast_network(net, cfg)
    if pixels:
        net = PixelInput(net)
    net.set_train(False)
    return net
