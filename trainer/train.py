"""Train StNet on MindRecord shards, alone or as one rank of an msrun job.

    python -m trainer.train --config configs/demo.yaml [key=value ...]
    msrun --worker_num=8 --local_worker_num=8 --master_port=8118 trainer/train.py --config ...

The run folder (``trainer.rundir``) gets the resolved config, ``train.jsonl`` (one JSON object per
log window and per evaluation), the last K epoch checkpoints (full state) and ``best.ckpt``
(weights with the best validation top-1). Only rank 0 writes.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from datatools.cli import RunStopped, run_cli, setup_logging
from trainer.checkpoint import restore_training_state, save_training_state, save_weights
from trainer.config import Config, config_from_args, config_parser, save_config
from trainer.data import create_dataset
from trainer.eval import evaluate
from trainer.model import create_model
from trainer.precision import cast_network
from trainer.pretrained import load_pretrained
from trainer.rundir import RunDir
from trainer.runtime import all_reduce_sum, init_runtime
from trainer.schedule import build_lr
from trainer.train_step import build_train_cell, run_step

__all__ = ["TrainingDiverged", "train", "train_one_epoch", "average_bn_statistics", "main"]

logger = logging.getLogger(__name__)

# Under loss scaling a skipped step is normal (a dynamic scale probes upwards). This many in a
# row means the loss itself diverged: a dynamic scale starting anywhere up to 2**24 has by then
# sat at its floor of 1 for 8 steps.
MAX_CONSECUTIVE_SKIPS = 32


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite; the last epoch checkpoint is the last good state."""


class RunLog:
    """``train.jsonl`` on rank 0; nothing elsewhere."""

    def __init__(self, run: RunDir | None):
        self.run = run

    def write(self, **record) -> None:
        if self.run is not None:
            self.run.append_log(record)


def train_one_epoch(train_cell: nn.Cell, dataset, *, epoch: int, step: int, lr: np.ndarray,
                    clips_per_step: int, log_interval: int, run_log: RunLog) -> int:
    """One pass over ``dataset``; returns the optimizer step count after it."""
    train_cell.set_train(True)
    window_loss, window_steps, window_skipped, window_wait = [], 0, 0, 0.0
    window_start, consecutive_skips = time.perf_counter(), 0
    iterator = dataset.create_tuple_iterator(num_epochs=1)
    batch_count = dataset.get_dataset_size()
    for i in range(batch_count):
        wait_start = time.perf_counter()
        clip, label = next(iterator)[:2]
        window_wait += time.perf_counter() - wait_start
        result = run_step(train_cell, clip, label)
        step += 1
        window_steps += 1
        consecutive_skips = consecutive_skips + 1 if result.skipped else 0
        if result.skipped:
            window_skipped += 1
            logger.debug("step %d: gradient overflow, update skipped, loss scale now %g",
                         step, result.loss_scale)
        if consecutive_skips > MAX_CONSECUTIVE_SKIPS:
            raise TrainingDiverged(f"{consecutive_skips} consecutive steps overflowed at epoch "
                                   f"{epoch + 1} step {step} (loss {result.loss}, loss scale "
                                   f"{result.loss_scale:g})")
        if not result.skipped and not math.isfinite(result.loss):
            raise TrainingDiverged(f"loss is {result.loss} at epoch {epoch + 1} step {step}")
        if math.isfinite(result.loss):
            window_loss.append(result.loss)
        if window_steps == log_interval or i == batch_count - 1:
            elapsed = time.perf_counter() - window_start
            record = dict(epoch=epoch + 1, step=step,
                          loss=float(np.mean(window_loss)) if window_loss else float("nan"),
                          lr=float(lr[min(step - 1, len(lr) - 1)]),
                          clips_per_s=clips_per_step * window_steps / elapsed,
                          data_wait=window_wait / elapsed,
                          loss_scale=result.loss_scale, skipped_steps=window_skipped)
            logger.info("epoch %d step %d loss %.4f lr %.5f clips/s %.1f data wait %.0f%%%s",
                        record["epoch"], step, record["loss"], record["lr"], record["clips_per_s"],
                        100 * record["data_wait"],
                        f" loss scale {result.loss_scale:g} skipped {window_skipped}"
                        if result.loss_scale != 1.0 or window_skipped else "")
            run_log.write(**record)
            window_loss, window_steps, window_skipped, window_wait = [], 0, 0, 0.0
            window_start = time.perf_counter()
    return step


def average_bn_statistics(net: nn.Cell, group_size: int) -> None:
    """Give every rank the mean of the ranks' BatchNorm moving statistics.

    Data parallelism averages gradients, not BN statistics: each rank's moving mean/variance
    follow its own batches. Averaging them before evaluation and checkpointing makes the ranks
    hold one model, the one rank 0 saves, so the evaluated top-1 is that of ``best.ckpt``.
    """
    stats = [p for p in net.get_parameters() if p.name.endswith(("moving_mean", "moving_variance"))]
    if group_size == 1 or not stats:
        return
    flat = np.concatenate([p.asnumpy().ravel() for p in stats])
    flat = all_reduce_sum(flat) / group_size
    start = 0
    for p in stats:
        p.set_data(ms.Tensor(flat[start:start + p.size].reshape(p.shape), p.dtype))
        start += p.size


def _resume_path(cfg: Config, run: RunDir) -> Path | None:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return run.latest_checkpoint()
    return Path(cfg.train.resume)


def train(cfg: Config) -> dict:
    """Train to ``train.epochs``; returns the last evaluation (empty if none ran)."""
    rank, group_size = init_runtime(cfg)
    setup_logging(rank)
    run = RunDir.of(cfg)
    is_writer = rank == 0
    if is_writer:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    run_log = RunLog(run if is_writer else None)
    ms.set_seed(cfg.seed)

    net = create_model(cfg)
    resume = _resume_path(cfg, run)
    if resume is None and cfg.model.pretrained:
        load_pretrained(net, cfg.model.pretrained)
    net = cast_network(net, cfg)   # the same cast as trainer.eval and trainer.export
    steps_per_epoch = create_dataset(cfg, cfg.data.train_split, training=True, rank=rank,
                                     group_size=group_size).get_dataset_size()
    lr = build_lr(cfg.train, steps_per_epoch)
    train_cell = build_train_cell(net, cfg, lr)
    start_epoch, step = 0, 0
    if resume is not None:
        start_epoch, step = restore_training_state(train_cell, resume)
        logger.info("resumed from %s: %d epochs, %d steps done", resume, start_epoch, step)
    best = run.best_top1()
    logger.info("run %s: %d ranks, %d steps/epoch, %d clips/step, epochs %d..%d",
                run.path, group_size, steps_per_epoch, cfg.data.batch_size * group_size,
                start_epoch + 1, cfg.train.epochs)

    metrics: dict = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        dataset = create_dataset(cfg, cfg.data.train_split, training=True, rank=rank,
                                 group_size=group_size, epoch=epoch)
        step = train_one_epoch(train_cell, dataset, epoch=epoch, step=step, lr=lr,
                               clips_per_step=cfg.data.batch_size * group_size,
                               log_interval=cfg.train.log_interval, run_log=run_log)
        average_bn_statistics(net, group_size)
        if is_writer:
            save_training_state(train_cell, run, epoch + 1, step, cfg.train.keep_checkpoints)
        last = epoch + 1 == cfg.train.epochs
        if (epoch + 1) % cfg.train.eval_interval and not last:
            continue
        val = create_dataset(cfg, cfg.data.val_split, training=False, rank=rank, group_size=group_size)
        metrics = evaluate(net, val, cfg.model.num_classes, group_size=group_size)
        logger.info("epoch %d eval top1 %.4f top5 %.4f videos %d", epoch + 1, metrics["top1"],
                    metrics["top5"], metrics["videos"])
        run_log.write(epoch=epoch + 1, step=step, top1=metrics["top1"], top5=metrics["top5"],
                      videos=metrics["videos"])
        if is_writer and metrics["top1"] > best:
            best = metrics["top1"]
            save_weights(net, run.best_weights, epoch + 1)
            run.write_best_score(epoch + 1, best)
    return metrics


def main(args: argparse.Namespace) -> dict:
    return train(config_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    return config_parser("Train StNet on MindRecord shards (alone, or one rank under msrun).")


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
