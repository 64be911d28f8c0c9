"""``make demo`` stopped with Ctrl-C during its first epoch, then run again, finishes (issue 22,
item 1: the re-run used to refuse forever, "resume it with train.resume=auto", the setting it
had). The whole demo, with CI's short settings: minutes of CPU, so `.ci/run` runs it after
`make test` (`make test-e2e`), not `make test`."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from trainer.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
NAME = "ci-demo"
DEMO = ["make", "--no-print-directory", "demo", "NPROC=2", f"DEMO_NAME={NAME}",
        "DEMO_TRAIN_ARGS=train.epochs=1 train.log_interval=2"]
MINUTES = 60


def _first_window_logged(run: RunDir) -> bool:
    return run.log.is_file() and run.log.read_text().count("\n") >= 1


def test_make_demo_interrupted_in_its_first_epoch_then_run_again_finishes(tmp_path):
    run = RunDir(ROOT / "runs" / NAME)
    assert not run.path.exists(), f"{run.path} exists: this test starts the demo run afresh"
    log = tmp_path / "first.log"
    with log.open("w") as out:    # a terminal's Ctrl-C: SIGINT to make's whole process group
        first = subprocess.Popen(DEMO, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + MINUTES * 60
        while not _first_window_logged(run) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, f"make demo ended before its first log window:\n{log.read_text()[-3000:]}"
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(timeout=300) != 0
    assert run.latest_checkpoint() is None, "stopped after epoch 1's checkpoint: not the case under test"

    again = subprocess.run(DEMO, cwd=ROOT, capture_output=True, text=True, timeout=MINUTES * 60)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "the run stopped in its first epoch, starting it over" in again.stdout
    assert "== demo done: top1=" in again.stdout
    windows, evaluations = run.read_log()      # one epoch from its first step, logged once
    steps = [w["step"] for w in windows]
    assert steps[0] == 2 and steps == sorted(set(steps)) and len(evaluations) == 1
    assert [p.name for p in run.epoch_checkpoints()] == ["epoch-0001.ckpt"]
