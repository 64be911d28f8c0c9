"""Train StNet on MindRecord shards, alone or as one rank of an msrun job.

    python -m trainer.train --config configs/demo.yaml [key=value ...]
    msrun --worker_num=8 --local_worker_num=8 --master_port=8118 trainer/train.py --config ...

The run folder (``trainer.rundir``) gets the resolved config, ``train.jsonl`` (one JSON object per
log window and per evaluation), the last K epoch checkpoints (full state) and ``best.ckpt``
(weights with the best validation top-1). Only rank 0 writes, and never a NaN or an infinity:
every tensor is checked after each epoch, before anything is saved (docs/design.md §3). In cloud
mode (``trainer.cloud``) the records are pulled first and rank 0 pushes the run folder to OBS
after every epoch.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from datatools.cli import RunStopped, run_cli, setup_logging
from trainer import cloud
from trainer.checkpoint import (checkpoint_epoch, non_finite, restore_training_state,
                                save_training_state, save_weights)
from trainer.config import Config, config_from_args, config_parser, save_config
from trainer.data import bad_samples, check_records, create_dataset, split_dir
from trainer.eval import evaluate
from trainer.model import create_model
from trainer.precision import PixelInput, cast_network, recorded_config, run_precision
from trainer.pretrained import CLASSIFIER_PREFIX, load_pretrained
from trainer.rundir import RunDir, atomic_path
from trainer.runtime import all_reduce_counts, all_reduce_sum, init_runtime
from trainer.schedule import build_lr, scaled_lr
from trainer.train_step import PendingStep, StepResult, build_train_cell, launch_step

__all__ = ["TrainingDiverged", "TooManyBadSamples", "BadSamples", "OverflowStreak", "train",
           "train_one_epoch", "average_bn_statistics", "main"]

logger = logging.getLogger(__name__)

# Under loss scaling a skipped step is normal (a dynamic scale probes upwards). This many in a
# row means the loss itself diverged: a dynamic scale starting anywhere up to 2**24 has by then
# sat at its floor of 1 for 8 steps.
MAX_CONSECUTIVE_SKIPS = 32

# Fault injection for tests/trainer/test_rank_nan.py and nothing else: STNET_TEST_NAN_AT=R:S makes
# rank R's classifier weights NaN before step S (as a flipped bit would), so that rank alone has a
# NaN loss at step S; its gradients reach the other ranks through the AllReduce, NaN at step S+1.
# (A NaN clip would not do: on CPU the first ReLU turns NaN into 0 and the loss stays finite.)
TEST_NAN_AT_ENV = "STNET_TEST_NAN_AT"


class TrainingDiverged(RunStopped):
    """The loss, a weight or a BatchNorm statistic became NaN or infinite; the last epoch
    checkpoint is the last good state."""


class TooManyBadSamples(RunStopped):
    """More bad samples in one epoch than ``data.max_bad_samples``."""


class BadSamples:
    """The training samples the loader flagged (checksum mismatch, a frame that does not decode)
    and the loss left out.

    Each is logged once per run. Counts are summed over the ranks at every log window (the same
    steps on every rank), so all ranks see one total and stop together when an epoch holds more
    than ``limit``.
    """

    def __init__(self, limit: int, group_size: int, split: Path) -> None:
        self.limit = limit
        self.group_size = group_size
        self.split = split
        self.logged: set[str] = set()
        self.in_epoch = 0

    def start_epoch(self) -> None:
        self.in_epoch = 0

    def flagged(self, problems: np.ndarray) -> int:
        """How many samples of a batch's ``problem`` column are bad; logs the new ones."""
        found = bad_samples(problems)
        for text in sorted(set(found) - self.logged):
            self.logged.add(text)
            logger.warning("%s: left out of training (each bad sample is logged once)", text)
        return len(found)

    def window(self, count: int, *, epoch: int, step: int) -> int:
        """A log window's count summed over the ranks; stops the run once the epoch's total is
        past the limit."""
        if self.group_size > 1:
            count = int(all_reduce_counts(np.array([count]))[0])
        self.in_epoch += count
        if self.in_epoch > self.limit:
            raise TooManyBadSamples(
                f"train stopped at epoch {epoch} step {step}: {self.in_epoch} bad samples in "
                f"this epoch, more than data.max_bad_samples={self.limit}: run datatools.inspect "
                f"{self.split} and reconvert the videos it reports, or raise data.max_bad_samples")
        return count


class OverflowStreak:
    """Overflowing (skipped) steps in a row, counted across epochs: an epoch may hold fewer steps
    than the limit, and a diverged loss keeps overflowing past an epoch's end."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_SKIPS) -> None:
        self.limit = limit
        self.count = 0

    def add(self, result: StepResult, at: str) -> None:
        """Count one step's result; the ``limit``-th overflow in a row stops the run."""
        self.count = self.count + 1 if result.skipped else 0
        if self.count >= self.limit:
            raise TrainingDiverged(f"train stopped at {at}: {self.count} consecutive steps "
                                   f"overflowed (loss {result.loss}, loss scale {result.loss_scale:g})")


class RunLog:
    """``train.jsonl`` on rank 0; nothing elsewhere."""

    def __init__(self, run: RunDir | None):
        self.run = run

    def write(self, **record) -> None:
        if self.run is not None:
            self.run.append_log(record)


def train_one_epoch(train_cell: nn.Cell, dataset, *, epoch: int, step: int, lr: np.ndarray,
                    clips_per_step: int, log_interval: int, run_log: RunLog, bad: BadSamples,
                    epochs: int = 0, overflows: OverflowStreak | None = None, rank: int = 0,
                    group_size: int = 1) -> int:
    """One pass over ``dataset``; returns the optimizer step count after it.

    Steps are launched without reading their results; the host waits for the device once per
    log window, where the window's losses, overflow flags and scale are read and checked (a NaN
    loss or too many overflows in a row stop the run, naming the step; ``overflows`` carries the
    count over from the epochs before). Under msrun the ranks agree on the NaN check first, so
    all of them stop at the same step, naming the first bad rank. Each log line says
    ``epoch e/E step i/n`` and the time left in the epoch and in the run (``epochs`` = E; the
    rate is the last log window's).
    """
    train_cell.set_train(True)
    window: list[tuple[PendingStep, bool]] = []    # launched steps, and whether all were bad
    window_bad, window_wait, window_start = 0, 0.0, time.perf_counter()
    overflows = overflows if overflows is not None else OverflowStreak()
    bad.start_epoch()
    iterator = dataset.create_tuple_iterator(num_epochs=1)
    batch_count = dataset.get_dataset_size()
    for i in range(batch_count):
        wait_start = time.perf_counter()
        clip, label, problems = next(iterator)
        window_wait += time.perf_counter() - wait_start
        flagged = bad.flagged(problems)
        window_bad += flagged
        step += 1
        _inject_fault(train_cell, rank, step)
        window.append((launch_step(train_cell, clip, label), flagged == len(problems)))
        if len(window) < log_interval and i < batch_count - 1:
            continue
        results = [launched.result() for launched, _ in window]   # the window's one wait
        diverged = _agreed_loss_check(results, rank, group_size)
        losses, skipped = [], 0
        for k, ((_, all_bad), result) in enumerate(zip(window, results)):
            at = f"epoch {epoch + 1} step {step - len(window) + k + 1}"
            if result.skipped:
                skipped += 1
                logger.debug("%s: gradient overflow, update skipped", at)
            overflows.add(result, at)
            if diverged is not None and diverged.index == k:
                raise TrainingDiverged(
                    f"train stopped at {at}{diverged.where}: loss is {diverged.value}")
            if math.isfinite(result.loss) and not all_bad:   # all bad: loss 0, not a mean
                losses.append(result.loss)
        scale = results[-1].loss_scale
        window_bad = bad.window(window_bad, epoch=epoch + 1, step=step)
        elapsed = time.perf_counter() - window_start
        record = dict(epoch=epoch + 1, step=step,
                      loss=float(np.mean(losses)) if losses else float("nan"),
                      lr=float(lr[min(step - 1, len(lr) - 1)]),
                      clips_per_s=clips_per_step * len(window) / elapsed,
                      data_wait=window_wait / elapsed,
                      loss_scale=scale, skipped_steps=skipped, bad_samples=window_bad)
        seconds_per_step = elapsed / len(window)
        left_in_epoch = batch_count - i - 1
        left_in_run = left_in_epoch + max(epochs - epoch - 1, 0) * batch_count
        logger.info("epoch %d/%d step %d/%d loss %.4f lr %.5f clips/s %.1f data wait %.0f%% "
                    "ETA epoch %s run %s%s%s", record["epoch"], max(epochs, epoch + 1), i + 1,
                    batch_count, record["loss"], record["lr"], record["clips_per_s"],
                    100 * record["data_wait"], _duration(left_in_epoch * seconds_per_step),
                    _duration(left_in_run * seconds_per_step),
                    f" loss scale {scale:g} skipped {skipped}"
                    if scale != 1.0 or skipped else "",
                    f" bad samples {window_bad}" if window_bad else "")
        run_log.write(**record)
        window, window_bad, window_wait, window_start = [], 0, 0.0, time.perf_counter()
    return step


@dataclass(frozen=True)
class _RankFailure:
    """The first failure the ranks agreed on: the bad rank, at ``index`` (a step of the log
    window), with its ``value``."""

    rank: int
    index: int
    value: float
    group_size: int

    @property
    def where(self) -> str:
        """`` on rank r`` under msrun, "" alone."""
        return f" on rank {self.rank}" if self.group_size > 1 else ""


def _first_failure(index: int | None, value: float, rank: int,
                   group_size: int) -> _RankFailure | None:
    """The failure every rank acts on: each rank gives its first failed ``index`` (None: passed)
    and that ``value``; the smallest index over the ranks wins, the lowest rank on a tie.

    One AllReduce of a (ranks, 2) matrix holding only this rank's row, so every rank reads the
    same answer: a rank that stopped on its own finding would leave the others waiting in their
    next collective, and msrun would hang.
    """
    rows = np.zeros((group_size, 2), np.float32)
    rows[rank] = (0.0, 0.0) if index is None else (index + 1.0, value)   # 0: passed
    if group_size > 1:
        rows = all_reduce_sum(rows)
    failed = [r for r in range(group_size) if rows[r, 0] > 0]
    if not failed:
        return None
    first = min(failed, key=lambda r: (rows[r, 0], r))
    return _RankFailure(first, int(rows[first, 0]) - 1, float(rows[first, 1]), group_size)


def _agreed_loss_check(results: list[StepResult], rank: int, group_size: int) -> _RankFailure | None:
    """The log window's first non-finite loss of an applied step over all ranks, or None.

    Under O0 the loss is each rank's own: a rank's NaN reaches the others through the gradient
    AllReduce only at the next step. (A skipped step's loss may be anything: under loss scaling
    every rank skips alike, ``LossScaledTrainStep`` agrees on the overflow.)
    """
    bad = [k for k, r in enumerate(results) if not r.skipped and not math.isfinite(r.loss)]
    return _first_failure(bad[0] if bad else None, results[bad[0]].loss if bad else 0.0,
                          rank, group_size)


def _check_finite_state(train_cell: nn.Cell, rank: int, group_size: int, at: str) -> None:
    """Stop every rank if any rank holds a non-finite weight, BN statistic or moment.

    Averaged gradients and BN statistics make the ranks' states alike, but not a NaN that
    stays in one rank's weights (a ReLU after a NaN weight passes no NaN gradient): the ranks
    agree before any of them stops, so none waits in the evaluation's collectives.
    """
    problem = non_finite((p.name, p) for p in train_cell.get_parameters())
    failure = _first_failure(0 if problem else None, 0.0, rank, group_size)
    if failure is not None:
        what = (problem if failure.rank == rank
                else f"tensors are not finite (listed in rank {failure.rank}'s log)")
        raise TrainingDiverged(f"train stopped at {at}{failure.where}: {what}")


def _inject_fault(train_cell: nn.Cell, rank: int, step: int) -> None:
    """NaN classifier weights at the rank and step ``TEST_NAN_AT_ENV`` names."""
    if os.environ.get(TEST_NAN_AT_ENV) == f"{rank}:{step}":
        for p in train_cell.get_parameters():
            if p.name.startswith(CLASSIFIER_PREFIX):
                p.set_data(ms.Tensor(np.full(p.shape, np.nan), p.dtype))


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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


def _last_good(run: RunDir) -> str:
    """The run's latest epoch checkpoint, relative to the run folder, or ``none``."""
    latest = run.latest_checkpoint()
    return str(latest.relative_to(run.path)) if latest else "none"


def _resume_path(cfg: Config, run: RunDir) -> Path | None:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return run.latest_checkpoint()
    return Path(cfg.train.resume)


def _take_run_folder(cfg: Config, run: RunDir, clearing: str | None) -> None:
    """Rank 0, once the model, the data and the resumed state passed their checks: clear an
    earlier run's files (``clearing`` says why; with train.overwrite, also the run pushed to
    train_url), cut a torn last log line, write the config.
    Nothing in the folder is touched before a check that could refuse the run."""
    if clearing:
        logger.info("%s: %s", run.path, clearing)
        run.clear()
    cloud.clear_run(cfg)
    run.mend_log()
    with atomic_path(run.config) as tmp:
        save_config(recorded_config(cfg), tmp)


def train(cfg: Config) -> dict:
    """Train to ``train.epochs``; returns the last evaluation (empty if none ran)."""
    rank, group_size = init_runtime(cfg)
    setup_logging(rank)
    # After init_runtime: msrun's cluster start-up times out if a rank pulls before joining.
    cfg = cloud.prepare(cfg, (cfg.data.train_split, cfg.data.val_split))
    cloud.pull_run(cfg)
    check_records(cfg)   # labels.txt against model.num_classes and both splits, before any step
    run = RunDir.of(cfg)
    is_writer = rank == 0
    resume = _resume_path(cfg, run)
    clearing = run.claim(resuming=resume is not None, overwrite=cfg.train.overwrite,
                         auto=cfg.train.resume == "auto")
    done = checkpoint_epoch(resume) if resume is not None else 0
    if resume is not None:   # go on in the precision the resumed run trained in
        cfg = run_precision(cfg, resume)
    if done >= cfg.train.epochs:
        logger.info("%s is finished: %s holds epoch %d of train.epochs=%d; raise train.epochs to "
                    "extend it", run.path, resume, done, cfg.train.epochs)
        return {}
    run_log = RunLog(run if is_writer else None)
    ms.set_seed(cfg.seed)
    started = time.perf_counter()

    net = create_model(cfg)
    if resume is None and cfg.model.pretrained:
        load_pretrained(net, cfg.model.pretrained)
    # The network trainer.eval and trainer.predict run: cast alike, taking the loader's pixels.
    net = PixelInput(cast_network(net, cfg))
    steps_per_epoch = create_dataset(cfg, "train", training=True, rank=rank,
                                     group_size=group_size).get_dataset_size()
    global_batch = cfg.data.batch_size * group_size
    lr = build_lr(cfg.train, steps_per_epoch, global_batch)
    logger.info("lr %g for %d clips a step (%s)", scaled_lr(cfg.train, global_batch), global_batch,
                f"train.lr {cfg.train.lr:g} is for train.lr_batch={cfg.train.lr_batch}, scaled linearly; "
                f"train.scale_lr=false keeps it" if cfg.train.scale_lr else "train.scale_lr=false: as given")
    train_cell = build_train_cell(net, cfg, lr)
    start_epoch, step = 0, 0
    if resume is not None:
        start_epoch, step = restore_training_state(train_cell, resume, steps_per_epoch)
        logger.info("resumed from %s: %d epochs, %d steps done", resume, start_epoch, step)
    if is_writer:
        _take_run_folder(cfg, run, clearing)
    bad = BadSamples(cfg.data.max_bad_samples, group_size, split_dir(cfg, "train"))
    overflows = OverflowStreak()
    best = run.best_top1() if is_writer else -1.0   # only rank 0 saves best.ckpt
    logger.info("run %s: %d ranks, %d steps/epoch, %d clips/step, epochs %d..%d",
                run.path, group_size, steps_per_epoch, global_batch,
                start_epoch + 1, cfg.train.epochs)

    metrics: dict = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        dataset = create_dataset(cfg, "train", training=True, rank=rank,
                                 group_size=group_size, epoch=epoch)
        try:
            step = train_one_epoch(train_cell, dataset, epoch=epoch, step=step, lr=lr,
                                   clips_per_step=global_batch,
                                   log_interval=cfg.train.log_interval, run_log=run_log, bad=bad,
                                   epochs=cfg.train.epochs, overflows=overflows, rank=rank,
                                   group_size=group_size)
            average_bn_statistics(net, group_size)
            _check_finite_state(train_cell, rank, group_size, at=f"epoch {epoch + 1} step {step}")
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"{exc}; the last good checkpoint is {_last_good(run)}") from None
        if is_writer:
            saved = save_training_state(train_cell, run, epoch + 1, step, cfg.train.keep_checkpoints)
            logger.info("saved %s", saved)
        last = epoch + 1 == cfg.train.epochs
        if (epoch + 1) % cfg.train.eval_interval == 0 or last:
            val = create_dataset(cfg, "val", training=False, rank=rank, group_size=group_size)
            metrics = evaluate(net, val, cfg.model.num_classes, group_size=group_size)
            logger.info("epoch %d eval top1 %.4f top5 %.4f videos %d", epoch + 1, metrics["top1"],
                        metrics["top5"], metrics["videos"])
            run_log.write(epoch=epoch + 1, step=step, top1=metrics["top1"], top5=metrics["top5"],
                          videos=metrics["videos"])
            if is_writer and metrics["top1"] > best:
                best = metrics["top1"]
                save_weights(net, run.best_weights, epoch + 1)
                run.write_best_score(epoch + 1, best)
                logger.info("saved %s: top1 %.4f at epoch %d", run.best_weights, best, epoch + 1)
        if is_writer:
            cloud.push_run(cfg, run)
    if is_writer:
        for line in summary_lines(run, metrics, time.perf_counter() - started):
            logger.info("%s", line)
        cloud.push_run(cfg, run, final=True)   # the curves, and a last try at what failed
    return metrics


def summary_lines(run: RunDir, last: dict, seconds: float) -> list[str]:
    """The end of a run: best and last metrics, wall time, and where the files are."""
    from trainer.plot import plot_run   # matplotlib only when a run ends
    windows, evals = run.read_log() if run.log.is_file() else ([], [])
    lines = [f"run {run.path} done in {_duration(seconds)}"]
    if evals:
        top = max(evals, key=lambda r: r["top1"])
        lines.append(f"best top1 {top['top1']:.4f} top5 {top['top5']:.4f} at epoch {top['epoch']}"
                     + (f"; last top1 {last['top1']:.4f} top5 {last['top5']:.4f}" if last else ""))
    curves = plot_run(run.path) if windows else None
    lines += [f"best weights {run.best_weights}" if run.best_weights.is_file()
              else "no evaluation yet: no best.ckpt",
              f"log {run.log}" + (f", curves {curves}" if curves else "")]
    return lines


def main(args: argparse.Namespace) -> dict:
    return train(config_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    return config_parser("Train StNet on MindRecord shards (alone, or one rank under msrun).")


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
