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

import copy
import logging
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from trainer.checkpoint import load_weights
from trainer.config import AMP_LEVELS, AUTO_AMP, Config, ConfigError
from trainer.data import MEAN, STD
from trainer.model import create_model
from trainer.rundir import RunDir
from trainer.runtime import resolve_device_target

__all__ = ["AMP_LEVELS", "PixelInput", "amp_level", "recorded_config", "run_precision",
           "cast_network", "inference_network"]

logger = logging.getLogger(__name__)

LOW_PRECISION_DEVICES = ("Ascend", "GPU")


def amp_level(cfg: Config) -> str:
    """``train.amp_level`` with ``auto`` resolved: O2 on Ascend/GPU, O0 (float32) on CPU.

    Mixed precision is ~2x slower on CPU (docs/design.md §7), so ``auto`` keeps CPU
    runs in float32; an explicit level is honoured on every device, CPU included.
    """
    level = cfg.train.amp_level
    if level not in AMP_LEVELS:
        raise ConfigError(f"train.amp_level must be one of {'|'.join(AMP_LEVELS)}, got {level!r}")
    if level == AUTO_AMP:
        return "O2" if resolve_device_target(cfg) in LOW_PRECISION_DEVICES else "O0"
    return level


def _with_amp_level(cfg: Config, level: str) -> Config:
    new = copy.deepcopy(cfg)
    new.train["amp_level"] = level
    return new


def recorded_config(cfg: Config) -> Config:
    """``cfg`` as a run folder saves it: ``auto`` replaced by the level it resolves to here, so
    the run's precision does not depend on the host that later reads it."""
    return _with_amp_level(cfg, amp_level(cfg))


def run_precision(cfg: Config, ckpt: str | Path) -> Config:
    """``cfg`` with ``train.amp_level: auto`` replaced by the level the run holding ``ckpt``
    trained with (its config.yaml), so an O2 run is evaluated and exported as O2 on a CPU host too.

    An explicit level in ``cfg`` wins; ``cfg`` comes back unchanged when ``ckpt`` lies in no run
    folder, or in one that recorded only ``auto`` (then the level resolves on this host).
    """
    if cfg.train.amp_level != AUTO_AMP:
        return cfg
    run = RunDir.holding(ckpt)
    level = run.trained_amp_level() if run is not None else None
    if level is None:
        if run is not None:
            logger.warning("%s records train.amp_level=auto, not the level it trained with (an "
                           "older run): %s is built as auto resolves on this host, %s; give "
                           "train.amp_level=<its level> if it trained elsewhere", run.config, ckpt,
                           amp_level(cfg))
        return cfg
    logger.info("train.amp_level=auto: %s, the level %s trained with (an explicit "
                "train.amp_level overrides it)", level, run.path)
    return _with_amp_level(cfg, level)


def cast_network(net: nn.Cell, cfg: Config) -> nn.Cell:
    """``net`` cast for ``amp_level(cfg)``: O2 keeps BatchNorm in float32 and returns float32
    logits. Parameter names are unchanged, so checkpoints load before or after the cast.

    O0 on Ascend also asks CANN to keep float32: its default precision mode on the first 910 is
    force_fp16, which runs float32 matrix operators in float16 behind our back. Asked here, where
    the level is final (a run's recorded level replaces ``auto`` only once its checkpoint is known).
    """
    level = amp_level(cfg)
    if level == "O0" and resolve_device_target(cfg) == "Ascend":
        ms.device_context.ascend.op_precision.precision_mode("must_keep_origin_dtype")
    return ms.amp.auto_mixed_precision(net, level)


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
    """StNet of ``cfg`` with the weights of ``ckpt``, cast as training cast it (``run_precision``),
    in eval mode; taking the loader's pixels (``PixelInput``), or with ``pixels=False``
    host-normalized float32 clips (the model zoo's interface)."""
    cfg = run_precision(cfg, ckpt)
    net = create_model(cfg)
    load_weights(net, ckpt)
    net = cast_network(net, cfg)
    if pixels:
        net = PixelInput(net)
    net.set_train(False)
    return net
