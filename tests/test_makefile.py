"""make targets run the installed project and keep the caller's PYTHONPATH as it is (CANN's
set_env.sh puts its op-impl paths there)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
FAKE_CANN = "/opt/fake/cann"

pytestmark = [pytest.mark.slow,   # make starts a MindSpore process per target
              pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv/bin/python").exists(),
                                 reason="needs make and the project's .venv")]


def make_env(pythonpath: str | None) -> dict:
    """``make -s env`` from the repo: what the targets' python saw (PYTHONPATH, sys.path, the
    file ``trainer`` was imported from)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MAKEFLAGS", "MAKELEVEL"}}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(["make", "-s", "env"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("mindspore: ") for line in lines), result.stdout
    value = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines
             if line.startswith(("PYTHONPATH: ", "trainer: "))}
    start = lines.index("sys.path:") + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  "))
    return {**value, "sys.path": [line.strip() for line in lines[start:end]]}


@pytest.mark.parametrize("inherited", [FAKE_CANN, None, f"{FAKE_CANN}:/opt/fake/other"])
def test_make_keeps_inherited_pythonpath_and_runs_the_installed_project(inherited):
    seen = make_env(inherited)
    assert seen["PYTHONPATH"] == (inherited or "<unset>")
    if inherited:
        assert seen["sys.path"][:len(inherited.split(":"))] == inherited.split(":")
    assert seen["trainer"] == str(ROOT / "trainer" / "__init__.py")


def _held(port: int) -> socket.socket | None:
    """A listening socket on ``port`` (as another job's msrun would hold it), or None if the
    port is in use already (held either way)."""
    sock = socket.socket()
    try:
        sock.bind(("", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_make_eval_under_msrun_ends_with_the_result_line(tiny_records, tmp_path):
    """``make eval NPROC=2`` with 8118 (the old fixed port) held by another process: the job takes
    a free port, and the README calls ``top1=... top5=... videos=...`` the last line, with no
    MindSpore warning (cluster start-up retries that look fatal) on the console."""
    import mindspore as ms

    from trainer.checkpoint import save_weights
    from trainer.config import load_config
    from trainer.model import create_model

    overrides = [f"data.root={tiny_records}", "model.width=8", f"train.output_dir={tmp_path}"]
    ms.set_seed(0)
    ckpt = tmp_path / "fresh.ckpt"
    save_weights(create_model(load_config(ROOT / "configs/demo.yaml", overrides)), ckpt, epoch=1)
    env = {k: v for k, v in os.environ.items()
           if k not in {"MAKEFLAGS", "MAKELEVEL", "GLOG_v", "MASTER_PORT"}}
    held = _held(8118)
    try:
        result = subprocess.run(["make", "eval", "NPROC=2", f"CKPT={ckpt}", f"MSRUN_LOG={tmp_path / 'msrun'}",
                                 f"ARGS={' '.join(overrides)}"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        if held:
            held.close()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("top1=") and lines[-1].endswith("videos=12"), lines[-5:]
    assert not [line for line in lines + result.stderr.splitlines() if "[WARNING]" in line]


@pytest.mark.parametrize("codec, records, name", [("", "records/demo", "demo"),
                                                  ("jpeg", "records/demo-jpeg", "demo-jpeg")])
def test_demo_keeps_a_records_folder_and_run_per_codec(codec, records, name):
    """A split keeps the codec it was converted with, so ``make demo CODEC=...`` converts into
    its own folder and every later stage (train, eval, export) reads that one."""
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "CODEC"}}
    result = subprocess.run(["make", "-n", "demo", f"CODEC={codec}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.replace("\\\n", " ").splitlines()]
    converts = [line for line in lines if f"--out {records}/$split" in line]
    assert len(converts) == 1 and ("--codec jpeg" in converts[0]) == (codec == "jpeg"), lines
    stages = [line for line in lines
              if ("msrun --worker_num" in line or line.startswith(".venv/bin/python -m trainer."))
              and "trainer.infer310.package" not in line]
    assert len(stages) == 4, stages     # train, eval, export, the 310 preprocess
    assert all(f"name={name} data.root={records}" in line for line in stages), stages


NASTY = """clips/a b$HOME`id`"q'.mp4"""      # a space, $, a backquote, " and '


@pytest.mark.parametrize("target, var, module", [("predict", "VIDEO", "trainer.predict"),
                                                 ("eval", "CKPT", "trainer.eval"),
                                                 ("records", "CSV", "datatools.convert"),
                                                 ("records", "OUT", "datatools.convert")])
def test_file_names_reach_the_commands_as_given(target, var, module):
    """``make -n``: the command a target runs gets a file name as one argument, as given: no
    word split, no $ or backquote expansion, whatever quotes it holds."""
    import shlex
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL"}}
    given = {"CSV": "kinetics/train.csv", "VIDEOS": "kinetics/train", var: NASTY}
    result = subprocess.run(["make", "-n", target, *(f"{k}={v}" for k, v in given.items())], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.replace("\\\n", " ").splitlines() if f" {module} " in line]
    words = shlex.split(line)
    assert (NASTY if var != "OUT" else f"{NASTY}/train") in words, line


def _make(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MASTER_PORT", "NPROC"}}
    return subprocess.run(["make", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("nproc, msrun", [(None, False), ("1", False), ("2", True)])
def test_eval_runs_msrun_only_for_several_processes(nproc, msrun):
    result = _make("-n", "eval", *([f"NPROC={nproc}"] if nproc else []))
    assert result.returncode == 0, result.stderr
    assert ("msrun --worker_num" in result.stdout) == msrun, result.stdout
    assert ("-m trainer.eval" in result.stdout) != msrun


def test_a_taken_master_port_fails_at_once_in_one_line():
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = _make("eval", "NPROC=2", f"MASTER_PORT={port}")
    assert result.returncode != 0 and time.monotonic() - started < 30
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: MASTER_PORT={port} is taken on this host (another msrun job or service "
                      f"holds it): leave MASTER_PORT unset for a free port, or give another"]


def test_several_nodes_need_the_port_given():
    """Every node must join the same master port: a free port picked on each would differ."""
    port = subprocess.run([sys.executable, "scripts/port.py", "2"], cwd=ROOT, capture_output=True,
                          text=True)
    assert port.returncode == 2 and port.stderr.startswith("error: NNODES=2: give every node the same "
                                                             "MASTER_PORT=")


@pytest.mark.parametrize("name", ["first-run", "second-run"])
def test_each_run_exports_and_packages_into_its_own_folder(name):
    result = _make("-n", "export-310", "CONFIG=configs/demo.yaml", f"ARGS=name={name}")
    assert result.returncode == 0, result.stderr
    out = f"export/{name}/310"
    assert f"--out {out} " in result.stdout and f"--out {out}/package" in result.stdout
    assert f"bash {out}/package/run.sh CPU" in result.stdout


def test_a_run_name_that_is_refused_stops_the_package_in_one_line():
    result = _make("package-310", "CONFIG=configs/demo.yaml", "ARGS=name=../x")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1 and "name" in errors[0], result.stderr
    assert "-m trainer.export" not in result.stdout
