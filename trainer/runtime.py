"""Device context, distributed start-up and rank-aware logging in one place."""
from __future__ import annotations

import logging
import os
import sys

import mindspore as ms
from mindspore.communication import get_group_size, get_rank, init

from trainer.config import Config

__all__ = ["launched_by_msrun", "init_runtime", "setup_logging"]

DEVICE_TARGETS = ("CPU", "Ascend", "GPU")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


def launched_by_msrun() -> bool:
    """msrun exports MS_ROLE to the scheduler and to every worker."""
    return "MS_ROLE" in os.environ


def init_runtime(cfg: Config) -> tuple[int, int]:
    """Set the device context and join the communication group when launched by msrun.

    Returns ``(rank, group_size)``; a plain ``python -m`` run is rank 0 of 1.
    """
    if cfg.device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {DEVICE_TARGETS}, got {cfg.device_target!r}")
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {cfg.mode!r}")
    ms.set_context(mode=MODES[cfg.mode], device_target=cfg.device_target)
    if not launched_by_msrun():
        return 0, 1
    init()
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    return rank, size


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """INFO on rank 0, warnings only elsewhere, so 8 ranks do not print 8 copies."""
    logging.basicConfig(stream=sys.stdout, level=level if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
