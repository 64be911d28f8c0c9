"""Device context, distributed start-up and rank-aware logging in one place."""
from __future__ import annotations

import glob
import logging
import os

import mindspore as ms
import numpy as np
from mindspore import ops
from mindspore._c_expression import MSContext
from mindspore.communication import get_group_size, get_rank, init

from trainer.config import AUTO_DEVICE, DEVICE_TARGETS, MODES, Config, ConfigError
from trainer.cpu import use_fast_cpu_kernels
from trainer.heap import keep_large_buffers

__all__ = ["launched_by_msrun", "distributed_launch", "resolve_device_target", "init_runtime",
           "all_reduce_sum", "all_reduce_counts"]

logger = logging.getLogger(__name__)
MS_MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}   # MindSpore's value of each of MODES
DEVICE_FIXES = {"Ascend": "source CANN's set_env.sh (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh)",
                "GPU": "install the CUDA libraries this MindSpore wheel was built for"}
# Signs of an Ascend host: its device nodes, or what CANN's set_env.sh exports.
ASCEND_DEVICE_NODES = "/dev/davinci[0-9]*"
CANN_VARIABLES = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_OPP_PATH")
# HCCL waits this long (s) for every rank to join; its default, 120 s, is shorter than the time
# StNet's graph compiles can differ between ranks (the model zoo's rank-table scripts use 600).
HCCL_CONNECT_TIMEOUT = "600"


def launched_by_msrun() -> bool:
    """msrun exports MS_ROLE to the scheduler and every worker (also when given a rank table)."""
    return "MS_ROLE" in os.environ


def distributed_launch() -> bool:
    """Under msrun, or the Ascend rank-table launch (scripts/run_distribute_train.sh), which
    exports RANK_TABLE_FILE and RANK_SIZE."""
    return launched_by_msrun() or (
        "RANK_TABLE_FILE" in os.environ and int(os.environ.get("RANK_SIZE", "1")) > 1)


def _load_error(device: str) -> str:
    """Why MindSpore's plugin for ``device`` did not load in this process ("" if it did).

    ``import mindspore`` tries each plugin once and keeps the outcome; this reads it (as
    ``ms.device_context.ascend.is_available`` does) without that function's two warnings or the
    multi-line C++ error ``ms.set_device`` raises for a device whose plugin did not load.
    """
    context = MSContext.get_instance()
    if context.is_pkg_support_device(device):
        return ""
    lines = [line for line in context.load_plugin_error().splitlines() if device.lower() in line.lower()]
    return lines[0] if lines else f"MindSpore loaded no {device} plugin"


def ascend_host_signs() -> list[str]:
    """What makes this host look like an Ascend host (device nodes, CANN's variables); empty
    on a host with no accelerator."""
    nodes = sorted(glob.glob(ASCEND_DEVICE_NODES))
    signs = [f"{len(nodes)} device node(s) {nodes[0]}..."] if nodes else []
    return signs + [f"${name}" for name in CANN_VARIABLES if os.environ.get(name)]


def resolve_device_target(cfg: Config) -> str:
    """``cfg.device_target`` with ``auto`` resolved: Ascend where its runtime loads, CPU on a
    host with no accelerator, and an error on an Ascend host whose runtime does not load (a
    silent fall back would train the Ascend recipe in float32 on CPU processes).

    Whatever depends on the device (init_runtime, the amp level, export's AIR check) asks here,
    also before init_runtime, so an ``auto`` config acts as the device it will run on.
    """
    if cfg.device_target != AUTO_DEVICE:
        return cfg.device_target
    error = _load_error("Ascend")
    if not error:
        return "Ascend"
    signs = ascend_host_signs()
    if signs:
        raise ConfigError(f"device_target=auto on an Ascend host ({', '.join(signs)}) but the Ascend "
                          f"runtime does not load ({error}): {DEVICE_FIXES['Ascend']}, or set "
                          f"device_target=CPU to train on the CPU")
    return "CPU"


def init_runtime(cfg: Config) -> tuple[int, int]:
    """Set the device context and join the communication group under msrun or a rank table.

    Returns ``(rank, group_size)``; a plain ``python -m`` run is rank 0 of 1. A device whose
    runtime does not load is one ConfigError naming the fix, before MindSpore tries it.
    """
    if cfg.device_target not in DEVICE_TARGETS:
        raise ValueError(f"device_target must be one of {'|'.join(DEVICE_TARGETS)}, "
                         f"got {cfg.device_target!r}")
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {'|'.join(MODES)}, got {cfg.mode!r}")
    device = resolve_device_target(cfg)
    error = _load_error(device)
    if error:
        raise ConfigError(f"device_target={device} but the {device} runtime does not load here "
                          f"({error}): {DEVICE_FIXES[device]}, or set device_target=CPU or auto")
    if device == "CPU":
        use_fast_cpu_kernels()
    keep_large_buffers()    # before MindSpore's threads take arenas of their own
    ms.set_context(mode=MS_MODES[cfg.mode])
    device_id = os.environ.get("DEVICE_ID") if device == "Ascend" else None
    ms.set_device(device, None if device_id is None else int(device_id))
    if device == "CPU":
        _share_cpu_threads(int(os.environ.get("MS_WORKER_NUM", "1")) if distributed_launch() else 1)
    rank, size = _join_group() if distributed_launch() else (0, 1)
    if cfg.device_target == AUTO_DEVICE and rank == 0:
        if device == "CPU":
            logger.warning("device_target=auto: CPU, float32 (no Ascend device node or CANN environment "
                           "on this host, and no Ascend runtime: %s)", _load_error("Ascend"))
        else:
            logger.info("device_target=auto: Ascend")
    return rank, size


def _join_group() -> tuple[int, int]:
    """``(rank, group_size)`` after joining the msrun or rank-table group, gradients fused."""
    os.environ.setdefault("HCCL_CONNECT_TIMEOUT", HCCL_CONNECT_TIMEOUT)   # read by HCCL at init()
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


def all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """float32 sum of ``values`` over all ranks (CPU AllReduce supports SUM only)."""
    return ops.AllReduce(ops.ReduceOp.SUM)(ms.Tensor(values.astype(np.float32))).asnumpy()


def all_reduce_counts(counts: np.ndarray) -> np.ndarray:
    """Integer counts summed over all ranks (float32 holds counts below 2**24 exactly)."""
    if counts.max(initial=0) >= 2 ** 24:
        raise ValueError(f"counts up to {counts.max()} do not fit float32 exactly")
    return np.rint(all_reduce_sum(counts)).astype(np.int64)
