"""scripts/launch.py, msrun's entry point: the module runs in a child whose exit code is passed
on, a failure only after the grace that lets every rank leave the cluster first."""
from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "scripts" / "launch.py"
FAILURE_GRACE = runpy.run_path(str(LAUNCH))["FAILURE_GRACE"]   # a script, not a package

MODULE = """
import os, signal, sys, time
print("args", sys.argv[1:], flush=True)
print("launcher", os.environ.get("STNET_LAUNCHER_PID"), flush=True)
how = sys.argv[1]
if how == "wait":
    time.sleep(60)
if how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(how))
"""


def _launch(tmp_path: Path, *args: str) -> subprocess.Popen:
    (tmp_path / "probe.py").write_text(MODULE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.Popen([sys.executable, str(LAUNCH), "probe", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)


def test_success_is_passed_on_at_once_with_the_module_arguments(tmp_path):
    start = time.monotonic()
    job = _launch(tmp_path, "0", "--config", "x.yaml")
    assert job.wait(timeout=60) == 0 and time.monotonic() - start < FAILURE_GRACE
    printed = job.stdout.read()
    assert "args ['0', '--config', 'x.yaml']" in printed
    assert f"launcher {os.getpid()}" in printed     # the launcher's parent (msrun's place), not it


def test_a_failure_is_passed_on_after_the_grace(tmp_path):
    start = time.monotonic()
    failed, killed = _launch(tmp_path, "3"), _launch(tmp_path, "kill")     # graces run side by side
    assert failed.wait(timeout=60) == 3
    assert time.monotonic() - start >= FAILURE_GRACE
    assert killed.wait(timeout=60) == 128 + signal.SIGKILL


def test_sigterm_reaches_the_module(tmp_path):
    job = _launch(tmp_path, "wait")
    assert job.stdout.readline().startswith("args")
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 128 + signal.SIGTERM


def test_the_launcher_is_named_as_trainer_cloud_reads_it():
    from trainer.cloud import LAUNCHER_PID_ENV
    assert runpy.run_path(str(LAUNCH))["LAUNCHER_PID_ENV"] == LAUNCHER_PID_ENV
