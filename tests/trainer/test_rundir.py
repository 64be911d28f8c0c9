"""The run folder: names, atomic writes, and a log that reads back in step order after a resume."""
from __future__ import annotations

import json
import re

import pytest

from trainer.plot import plot_run, smoothed
from trainer.rundir import RunDir, atomic_path


def _write_log(run: RunDir, records: list[dict]) -> None:
    for record in records:
        run.append_log(record)


def _window(epoch: int, step: int) -> dict:
    return {"epoch": epoch, "step": step, "loss": 1.0 / step, "lr": 0.01}


def test_resumed_run_reads_back_monotone_in_step(tmp_path):
    """Epoch 1 (steps 2, 4) and its eval; a stopped attempt at epoch 2 (6, 8); the resume from
    epoch 1 logs 6, 8 and the eval again: the log reads 2, 4, 6, 8 with one eval per epoch."""
    run = RunDir(tmp_path / "run")
    _write_log(run, [_window(1, 2), _window(1, 4), {"epoch": 1, "step": 4, "top1": 0.5, "top5": 1.0},
                     _window(2, 6), _window(2, 8),
                     _window(2, 6), _window(2, 8), {"epoch": 2, "step": 8, "top1": 0.7, "top5": 1.0}])
    train, evals = run.read_log()
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert [(r["epoch"], r["top1"]) for r in evals] == [(1, 0.5), (2, 0.7)]
    assert plot_run(run.path).is_file()                 # draws without a line back in time


def test_smoothing_follows_a_constant_and_lags_a_step():
    assert smoothed([2.0] * 5) == pytest.approx([2.0] * 5)     # debiased: no pull towards 0
    jump = smoothed([0.0] * 5 + [1.0] * 5)
    assert jump[4] == 0.0 and 0 < jump[5] < jump[9] < 1.0


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "best.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["best.json"]


def test_epoch_checkpoints_sort_by_number_and_prune(tmp_path):
    run = RunDir(tmp_path)
    for epoch in (9, 10, 2):
        path = run.epoch_checkpoint(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert [p.name for p in run.epoch_checkpoints()] == ["epoch-0002.ckpt", "epoch-0009.ckpt",
                                                         "epoch-0010.ckpt"]
    run.prune_checkpoints(keep=2)
    assert run.latest_checkpoint().name == "epoch-0010.ckpt" and len(run.epoch_checkpoints()) == 2
    run.write_best_score(3, 0.75)
    assert run.best_top1() == 0.75 and json.loads(run.best_score.read_text())["epoch"] == 3


def test_a_reused_run_name_is_refused_unless_resumed_or_overwritten(tmp_path):
    """``claim`` only reads (every rank runs it; a slow rank's claim used to delete the
    config.yaml rank 0 had just written): ``clear``, on rank 0, deletes."""
    run = RunDir(tmp_path / "demo")
    assert run.claim(resuming=False, overwrite=False) is None     # a new folder: nothing to refuse
    _write_log(run, [_window(1, 2)])
    run.epoch_checkpoint(1).parent.mkdir(parents=True)
    run.epoch_checkpoint(1).write_bytes(b"x")
    run.write_text(run.config, "name: demo\n")
    with pytest.raises(ValueError, match=r"already holds a run \(train.jsonl, 1 epoch checkpoint\(s\)\): "
                                         r"resume it with train.resume=auto, start another with a "
                                         r"new name=, or replace it with train.overwrite=true"):
        run.claim(resuming=False, overwrite=False)
    assert run.claim(resuming=True, overwrite=False) is None      # a resume continues the run
    assert run.claim(resuming=False, overwrite=True).startswith("train.overwrite=true: replacing")
    assert run.log.is_file() and run.config.is_file() and run.latest_checkpoint()   # nothing deleted
    run.clear()
    assert not run.holds_a_run() and not run.log.exists() and not run.config.exists()


def test_resume_auto_starts_over_a_run_stopped_in_its_first_epoch(tmp_path):
    """Ctrl-C before the first epoch checkpoint left train.jsonl only: resume=auto refused with
    "resume it with train.resume=auto", the setting given."""
    run = RunDir(tmp_path / "demo")
    _write_log(run, [_window(1, 2)])
    reason = run.claim(resuming=False, overwrite=False, auto=True)
    assert reason == ("train.resume=auto, and it holds no epoch checkpoint yet (train.jsonl): the run "
                      "stopped in its first epoch, starting it over")
    run.write_text(run.best_weights, "weights")               # something of value: refused
    with pytest.raises(ValueError, match="already holds a run"):
        run.claim(resuming=False, overwrite=False, auto=True)


def test_a_torn_last_log_line_is_skipped_once_and_cut_before_a_resume_appends(tmp_path, caplog):
    """A run killed while writing train.jsonl: the end-of-run summary raised (exit 2, no final
    push), and a resumed run's next line would have followed the torn one on its line."""
    run = RunDir(tmp_path / "run")
    _write_log(run, [_window(1, 2), _window(1, 4)])
    with run.log.open("a") as f:
        f.write('{"epoch": 1, "step": 6, "lo')
    with caplog.at_level("WARNING", logger="trainer.rundir"):
        assert [r["step"] for r in run.read_log()[0]] == [2, 4]
    assert [r.getMessage() for r in caplog.records] == [
        f"{run.log}: skipped its torn last line 3 (a run stopped while writing it)"]
    run.mend_log()
    _write_log(run, [_window(1, 6)])
    assert [r["step"] for r in run.read_log()[0]] == [2, 4, 6]
    assert run.log.read_text().count("\n") == 3


def test_a_torn_line_before_the_last_names_the_file_and_line(tmp_path):
    run = RunDir(tmp_path / "run")
    _write_log(run, [_window(1, 2)])
    with run.log.open("a") as f:
        f.write('{"epoch": 1, "st\n')
    _write_log(run, [_window(1, 4)])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(run.log))} line 2 is not JSON "
                                         + re.escape("""('{"epoch": 1, "st'): the log is damaged""")):
        run.read_log()
