"""Device context, distributed start-up and rank-aware logging in one place."""
from __future__ import annotations

import logging
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import ops
from mindspore.communication import get_group_size, get_rank, init

from trainer.config import Config
from trainer.cpu import use_fast_cpu_kernels

__all__ = ["distributed_launch", "init_runtime", "setup_logging", "all_reduce_sum"]

DEVICE_TARGETS = ("CPU", "Ascend", "GPU")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


def distributed_launch() -> bool:
    """msrun exports MS_ROLE to the scheduler and every worker; the Ascend rank-table launch
    (scripts/run_distribute_train.sh) exports RANK_TABLE_FILE and RANK_SIZE."""
    return "MS_ROLE" in os.environ or (
        "RANK_TABLE_FILE" in os.environ and int(os.environ.get("RANK_SIZE", "1")) > 1)


def init_runtime(cfg: Config) -> tuple[int, int]:
    """Set the device context and join the communication group under msrun or a rank table.

    Returns ``(rank, group_size)``; a plain ``python -m`` run is rank 0 of 1.
    """
    if cfg.device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {DEVICE_TARGETS}, got {cfg.device_target!r}")
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {cfg.mode!r}")
    if cfg.device_target == "CPU":
        use_fast_cpu_kernels()
    ms.set_context(mode=MODES[cfg.mode])
    device_id = os.environ.get("DEVICE_ID") if cfg.device_target == "Ascend" else None
    ms.set_device(cfg.device_target, None if device_id is None else int(device_id))
    if cfg.device_target == "CPU":
        _share_cpu_threads(int(os.environ.get("MS_WORKER_NUM", "1")) if distributed_launch() else 1)
    if not distributed_launch():
        return 0, 1
    init()
    rank, size = get_rank(), get_group_size()
    # One fused AllReduce per 64 MB of gradients instead of one per parameter tensor (~320).
    # set_auto_parallel_context is marked for deprecation, but 2.10's replacement
    # (mindspore.parallel.auto_parallel.AutoParallel) takes only semi_auto, sharding_propagation
    # and recursive_programming: plain data parallel, the only mode on CPU, has no other API.
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size, comm_fusion={"allreduce": {"mode": "size", "config": 64}})
    return rank, size


def _share_cpu_threads(processes: int) -> None:
    """Give each process its share of the cores for CPU kernels.

    MindSpore starts 25 kernel threads per process by default; 8 msrun workers on 2 cores then
    spend more time in the kernel scheduler than computing (measured: sys time > user time).
    """
    try:
        ms.device_context.cpu.op_tuning.threads_num(max(1, (os.cpu_count() or 1) // processes))
    except RuntimeError:  # already set in this process (set once, e.g. by an earlier run)
        pass


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """INFO on rank 0, warnings only elsewhere, so 8 ranks do not print 8 copies."""
    logging.basicConfig(stream=sys.stdout, level=level if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """float32 sum of ``values`` over all ranks (CPU AllReduce supports SUM only)."""
    return ops.AllReduce(ops.ReduceOp.SUM)(ms.Tensor(values.astype(np.float32))).asnumpy()
