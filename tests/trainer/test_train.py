"""Training on real converted records: bit-exact resume, divergence stop, run folder contents,
altered samples skipped, float16 with loss scaling trains as float32 does.

The tiny runs are eager (``mode=pynative``): a graph compile of the train and eval networks
costs more than their few steps. Graph mode, the configs' default, trains the run-folder and
bit-exact resume runs, the overflow stop and the demo model (``learned_run``)."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

import trainer.train as train_module
from trainer.config import load_config
from trainer.rundir import RunDir
from trainer.train import (MAX_CONSECUTIVE_SKIPS, TooManyBadSamples, TrainingDiverged, summary_lines,
                           train)

from tests.trainer.conftest import LEARN_VAL_PER_CLASS, finetune_config, logged
from tests.trainer.inprocess import run_module
from tests.trainer.test_config import DEMO, REPO

TINY = ["model.width=8", "data.batch_size=4", "train.lr_schedule=step", "train.lr_milestones=[1]",
        "train.warmup_epochs=0", "train.lr=0.02", "train.scale_lr=false", "train.log_interval=2",
        "train.eval_interval=100", "mode=pynative"]


pytestmark = pytest.mark.slow   # tiny training runs, one of them graph mode


def _config(tiny_records, out, name, *overrides):
    return load_config(DEMO, [f"data.root={tiny_records}", f"train.output_dir={out}", f"name={name}",
                              *TINY, *overrides])


def _state(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


@pytest.fixture(scope="module")
def straight_run(tiny_h264_records, tmp_path_factory):
    """Two epochs without a stop, in graph mode, on h264 records (decoders reused across
    segments and threads): the reference for the resume test."""
    out = tmp_path_factory.mktemp("runs")
    metrics = train(_config(tiny_h264_records, out, "straight", "train.epochs=2", "mode=graph"))
    return out / "straight", metrics


def test_run_folder_holds_config_log_checkpoints_and_best(straight_run, tiny_h264_records):
    run_dir, metrics = straight_run
    assert metrics["videos"] == 12  # the whole val split, counted once
    run = RunDir(run_dir)
    assert load_config(run.config).data.root == str(tiny_h264_records)
    assert load_config(run.config).train.amp_level == "O0"   # auto, as it resolved here (CPU)
    records = [json.loads(line) for line in run.log.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert {"epoch", "step", "loss", "lr", "clips_per_s", "data_wait"} <= steps[0].keys()
    assert steps[-1]["step"] == 8 and all(np.isfinite(r["loss"]) for r in steps)
    assert [r["epoch"] for r in records if "top1" in r] == [2]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0001.ckpt", "epoch-0002.ckpt"]
    assert run.best_weights.is_file() and run.best_top1() == metrics["top1"]


@pytest.fixture(scope="module")
def one_epoch_run(tiny_records, tmp_path_factory) -> Path:
    """One epoch at batch 4 (4 steps), evaluated: epoch-0001.ckpt, best.ckpt and best.json."""
    out = tmp_path_factory.mktemp("runs")
    train(_config(tiny_records, out, "one", "train.epochs=1"))
    return out / "one"


def _copy(run_dir: Path, out: Path, name: str) -> Path:
    shutil.copytree(run_dir, out / name)
    return out / name


def test_resume_after_a_stop_is_bit_exact(straight_run, tiny_h264_records, tmp_path):
    """Epoch 2 resumed from the straight run's epoch-1 checkpoint (as a run stopped there would
    be) ends on the same tensors: weights, BN statistics, momentum, step counters."""
    stopped_at = straight_run[0] / "checkpoints" / "epoch-0001.ckpt"
    train(_config(tiny_h264_records, tmp_path, "resumed", "train.epochs=2", "mode=graph",
                  f"train.resume={stopped_at}"))
    resumed = _state(RunDir(tmp_path / "resumed").latest_checkpoint())
    straight = _state(RunDir(straight_run[0]).latest_checkpoint())
    assert resumed.keys() == straight.keys()
    assert int(resumed["epoch"]) == 2 and int(resumed["step"]) == 8
    different = [k for k in straight if not np.array_equal(straight[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


def _saved(run_dir: Path) -> dict[str, bytes]:
    """Every checkpoint and best-score file of a run folder, by relative path."""
    files = [*(run_dir / "checkpoints").iterdir(), run_dir / "best.ckpt", run_dir / "best.json"]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


def test_a_reused_run_name_is_refused_and_a_finished_run_left_alone(one_epoch_run, tiny_records,
                                                                   tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path, "again")
    before, config = _saved(run_dir), (run_dir / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run .*: resume it with train.resume=auto, "
                                         r"start another with a new name=, or replace it"):
        train(_config(tiny_records, tmp_path, "again", "train.epochs=1"))
    with logged("trainer.train") as messages:
        assert train(_config(tiny_records, tmp_path, "again", "train.epochs=1",
                             "train.resume=auto")) == {}
    assert sum("is finished: " in m and "holds epoch 1 of train.epochs=1" in m for m in messages) == 1
    assert _saved(run_dir) == before and (run_dir / "config.yaml").read_bytes() == config


def test_overwrite_replaces_the_old_run(one_epoch_run, tiny_records, tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path, "redo")
    (run_dir / "checkpoints" / "epoch-0007.ckpt").write_bytes(b"an older, longer run")
    train(_config(tiny_records, tmp_path, "redo", "train.epochs=1", "train.overwrite=true"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0001.ckpt"]
    windows, evals = RunDir(run_dir).read_log()
    assert [w["step"] for w in windows] == [2, 4] and len(evals) == 1   # one run's log, not two


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("overrides", [
    ("train.resume=auto", "model.depth=101"),                # not the checkpoint's network
    ("train.resume=auto", "data.root={missing}"),
    ("train.overwrite=true", "data.root={missing}"),         # the old run was deleted first
])
def test_a_refused_resume_or_overwrite_leaves_the_run_folder_as_it_was(one_epoch_run, tiny_records,
                                                                      tmp_path, overrides):
    """config.yaml was replaced (and, with train.overwrite, the old run deleted) before the
    resumed checkpoint or the records were checked."""
    run_dir = _copy(one_epoch_run, tmp_path, "kept")
    before = _files(run_dir)
    overrides = [o.format(missing=tmp_path / "missing") for o in overrides]
    with pytest.raises((ValueError, FileNotFoundError)):
        train(_config(tiny_records, tmp_path, "kept", "train.epochs=2", *overrides))
    assert _files(run_dir) == before


def test_the_summary_of_a_run_with_a_torn_last_log_line(one_epoch_run, tmp_path):
    """The end-of-run summary raised on it after training was done: exit 2, no final push."""
    run_dir = _copy(one_epoch_run, tmp_path, "torn")
    with (run_dir / "train.jsonl").open("a") as f:
        f.write('{"epoch": 2, "step": 5, "lo')
    lines = summary_lines(RunDir(run_dir), {}, 1.0)
    assert lines[1].startswith("best top1 ") and (run_dir / "curves.png").is_file()


@pytest.mark.parametrize("lr, stop", [
    ("1e30", r"step \d+: loss is (nan|inf)"),
    # The loss stays finite (~1e13) while 28 BatchNorm moving variances overflow: this used to be
    # saved as epoch-0002.ckpt (and best.ckpt on a better top-1), exit 0. Found at the epoch's end.
    # (At 1e6, the reported case, some runs of this tiny net also turn weights NaN; CPU kernels
    # are not bit-deterministic under load, so the first bad tensor may be a weight.)
    ("1e4", r"step 8: \d+ of \d+ tensors are not finite, first \S+ \((inf|nan)\)"),
])
def test_divergence_keeps_the_last_good_checkpoint_as_latest_and_best(one_epoch_run, tiny_records,
                                                                      tmp_path, lr, stop):
    run_dir = _copy(one_epoch_run, tmp_path, "diverge")
    before = _saved(run_dir)
    assert sorted(before) == ["best.ckpt", "best.json", "checkpoints/epoch-0001.ckpt"]
    with pytest.raises(TrainingDiverged, match=rf"^train stopped at epoch 2 {stop}; the last good "
                                               rf"checkpoint is checkpoints/epoch-0001\.ckpt$"):
        train(_config(tiny_records, tmp_path, "diverge", "train.epochs=2", "train.resume=auto",
                      f"train.lr={lr}"))
    assert _saved(run_dir) == before   # nothing newer, nothing overwritten
    if lr == "1e4":
        windows, _ = RunDir(run_dir).read_log()
        assert [w["step"] for w in windows if w["epoch"] == 2] == [6, 8]


def test_resume_with_another_batch_size_recomputes_the_step(one_epoch_run, tiny_records, tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path, "rebatch")
    # Epoch 1 took 4 steps at batch 4; at batch 2 an epoch is 8 steps, so epoch 2 is steps 9..16
    # (the step decay at epoch 1 gives them lr 0.002).
    with logged("trainer.checkpoint") as messages:
        train(_config(tiny_records, tmp_path, "rebatch", "train.epochs=2", "train.resume=auto",
                      "data.batch_size=2"))
    assert sum(m.endswith("step count recomputed: 1 epochs x 8 steps = 8") for m in messages) == 1
    state = _state(RunDir(run_dir).latest_checkpoint())
    assert (int(state["epoch"]), int(state["step"]), int(state["global_step"][0])) == (2, 16, 16)
    windows, _ = RunDir(run_dir).read_log()
    epoch2 = [w for w in windows if w["epoch"] == 2]
    assert [w["step"] for w in epoch2] == [10, 12, 14, 16]
    assert all(w["lr"] == pytest.approx(0.002) for w in epoch2)
    # Back to batch 4: 2 epochs are 8 steps, fewer than the 16 in the checkpoint (the per-step LR
    # array was indexed past its end: a Gather index error).
    train(_config(tiny_records, tmp_path, "rebatch", "train.epochs=3", "train.resume=auto"))
    state = _state(RunDir(run_dir).latest_checkpoint())
    assert (int(state["epoch"]), int(state["step"]), int(state["global_step"][0])) == (3, 12, 12)


def test_altered_samples_are_skipped_counted_and_logged_once(altered_records, tmp_path):
    with logged("trainer.train") as messages:
        train(_config(altered_records, tmp_path, "altered", "train.epochs=2"))
    windows, evaluations = RunDir(tmp_path / "altered").read_log()
    assert [sum(w["bad_samples"] for w in windows if w["epoch"] == e) for e in (1, 2)] == [2, 2]
    assert evaluations[-1]["videos"] == 12 and all(np.isfinite(w["loss"]) for w in windows)
    for video in (altered_records.frame_flipped, altered_records.label_changed):   # once per run
        assert sum(m.startswith(f"video {video}: checksum mismatch") for m in messages) == 1

    split = re.escape(str(altered_records.root / "train"))
    with pytest.raises(TooManyBadSamples, match=rf"^train stopped at epoch 1 step \d+: 2 bad samples "
                                                rf"in this epoch, more than data\.max_bad_samples=1: "
                                                rf"run datatools\.inspect {split}"):
        train(_config(altered_records, tmp_path, "strict", "train.epochs=1", "data.max_bad_samples=1"))
    assert RunDir(tmp_path / "strict").latest_checkpoint() is None


def test_ctrl_c_in_the_first_epoch_then_resume_auto_starts_the_run_over(tiny_records, tmp_path, capsys):
    """Ctrl-C after the first log line, before epoch 1's checkpoint (8 steps at batch 2), then
    the same command with train.resume=auto (as re-running ``make demo`` does): it used to refuse
    with "resume it with train.resume=auto" forever. (``make demo`` itself trains for minutes; this
    is its training command at tiny settings, re-run in-process.)"""
    args = ["--config", DEMO, f"data.root={tiny_records}", f"train.output_dir={tmp_path}",
            "name=interrupted", *TINY, "model.width=4", "data.batch_size=2", "train.log_interval=1",
            "train.epochs=1", "train.resume=auto"]
    run = RunDir(tmp_path / "interrupted")
    first = subprocess.Popen([sys.executable, "-m", "trainer.train", *map(str, args)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run.log.is_file() and run.log.read_text().count("\n")) and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) != 0, first.stderr.read()
    assert run.log.is_file() and run.latest_checkpoint() is None   # stopped inside epoch 1

    capsys.readouterr()
    assert run_module(train_module, args) == 0, capsys.readouterr().err
    assert "no epoch checkpoint yet (train.jsonl): the run stopped in its first epoch, starting it " \
           "over" in capsys.readouterr().out
    windows, evaluations = run.read_log()
    assert [w["step"] for w in windows] == list(range(1, 9)) and len(evaluations) == 1
    assert [p.name for p in run.epoch_checkpoints()] == ["epoch-0001.ckpt"]


def test_a_quick_check_stops_each_epoch_early_and_evaluates_a_few_videos(tiny_records, tmp_path):
    """train.limit_steps / test.limit_videos, as Lightning's fast_dev_run: a new config runs a
    short epoch (2 of its 4 steps) and evaluates 4 of the 12 val videos (2 batches of 2)."""
    cfg = _config(tiny_records, tmp_path, "quick", "train.epochs=1", "train.limit_steps=2",
                  "train.log_interval=1", "test.limit_videos=3", "test.batch_size=2")
    train(cfg)
    windows, evaluations = RunDir(tmp_path / "quick").read_log()
    assert [(w["epoch"], w["step"]) for w in windows] == [(1, 1), (1, 2)]
    assert [e["videos"] for e in evaluations] == [4]


def test_train_cli_reports_missing_records_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer.train", "--config", str(DEMO),
                             f"data.root={tmp_path}", f"train.output_dir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "split folder not found" in result.stderr, result.stderr


def test_demo_config_learns_far_above_chance(learned_run):
    assert learned_run.metrics["videos"] == 4 * LEARN_VAL_PER_CLASS
    assert learned_run.metrics["top1"] >= 0.6, learned_run.metrics  # chance is 0.25


def test_plot_draws_the_run_curves(straight_run, tmp_path):
    from PIL import Image

    from trainer.plot import plot_run
    train_lines, eval_lines = RunDir(straight_run[0]).read_log()
    assert len(train_lines) == 4 and len(eval_lines) == 1   # log_interval 2, 8 steps; one eval
    out = plot_run(straight_run[0], tmp_path / "curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1100, 400)
    with pytest.raises(FileNotFoundError, match="no train.jsonl"):
        plot_run(tmp_path)


def test_plot_does_not_import_mindspore():
    """Drawing a PNG from a run folder needs matplotlib, not a 4-second MindSpore import."""
    code = "import sys, trainer.plot; print(sorted(m for m in sys.modules if m.startswith('mindspore')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _losses(run_dir: Path) -> list[dict]:
    """The run's log windows (one per step here), in order."""
    windows, _ = RunDir(run_dir).read_log()
    return windows


def test_o2_fine_tuning_tracks_o0_step_by_step(finetuned_run, two_class_records, tmp_path):
    """Mixed precision with loss scaling trains like float32: the demo model fine-tuned in O2
    takes O0's steps (before the fix O2 took 1024x steps and ended a demo epoch at loss 37.8
    against 2.03).

    From trained weights float16 rounding stays small (from scratch it compounds through the 50
    layers, and BatchNorm statistics of a few steps overflow float16 at eval), so each step's
    loss is compared: an O2 that skipped its updates, or applied them 1024x too large or too
    small, leaves O0's path at the first update. Both losses fall from a fresh 2-class
    classifier's ~ln 2 to below half of it."""
    pretrained, out = finetuned_run.pretrained, tmp_path
    train(finetune_config(two_class_records, pretrained, out, "O2", "train.amp_level=O2"))
    o0, o2 = _losses(finetuned_run.run_dir), _losses(out / "O2")
    assert [w["step"] for w in o2] == [w["step"] for w in o0] == [1, 2, 3, 4, 5, 6]
    assert [w["skipped_steps"] for w in o2] == [0] * 6, o2
    assert all(w["loss_scale"] == 1024.0 for w in o2)   # dynamic: no overflow, window 2000
    for run in (o0, o2):
        first, late = run[0]["loss"], float(np.mean([w["loss"] for w in run[-3:]]))
        assert late < 0.5 * math.log(2) < first, [w["loss"] for w in run]
    pairs = [(a["loss"], b["loss"]) for a, b in zip(o0, o2)]
    assert all(abs(b - a) <= 0.05 * a for a, b in pairs), pairs


def test_32_overflowing_steps_in_a_row_stop_the_run_across_epochs(tiny_records, tmp_path):
    """A fixed loss scale of 3e38 overflows every float16 backward pass: every step is skipped.
    At batch 1 an epoch is 16 steps, so the 32 in a row span an epoch's end, where epoch 1 is
    saved (finite, if untrained); step 32 stops the run, before any evaluation."""
    assert MAX_CONSECUTIVE_SKIPS == 32   # the README's number
    cfg = _config(tiny_records, tmp_path, "overflow", "mode=graph", "model.width=4",
                  "data.batch_size=1", "train.epochs=3", "train.amp_level=O2",
                  "train.loss_scale_manager=fixed", "train.loss_scale=3e38", "train.log_interval=16")
    with pytest.raises(TrainingDiverged, match=r"^train stopped at epoch 2 step 32: 32 consecutive "
                                               r"steps overflowed \(loss [0-9.]+, loss scale 3e\+38\); "
                                               r"the last good checkpoint is "
                                               r"checkpoints/epoch-0001\.ckpt$"):
        train(cfg)
    run = RunDir(tmp_path / "overflow")
    windows, evaluations = run.read_log()
    assert [(w["step"], w["skipped_steps"]) for w in windows] == [(16, 16)] and not evaluations
    assert [p.name for p in run.epoch_checkpoints()] == ["epoch-0001.ckpt"]
