"""make targets run the installed project and keep the caller's PYTHONPATH as it is (CANN's
set_env.sh puts its op-impl paths there)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port

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


def test_make_eval_under_msrun_ends_with_the_result_line(tiny_records, tmp_path):
    """``make eval NPROC=2``: the README calls ``top1=... top5=... videos=...`` the last line, and
    no MindSpore warning (cluster start-up retries that look fatal) reaches the console."""
    import mindspore as ms

    from trainer.checkpoint import save_weights
    from trainer.config import load_config
    from trainer.model import create_model

    overrides = [f"data.root={tiny_records}", "model.width=8", f"train.output_dir={tmp_path}"]
    ms.set_seed(0)
    ckpt = tmp_path / "fresh.ckpt"
    save_weights(create_model(load_config(ROOT / "configs/demo.yaml", overrides)), ckpt, epoch=1)
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "GLOG_v"}}
    result = subprocess.run(["make", "eval", "NPROC=2", f"MASTER_PORT={free_port()}", f"CKPT={ckpt}",
                             f"MSRUN_LOG={tmp_path / 'msrun'}", f"ARGS={' '.join(overrides)}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
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
    stages = [line for line in lines if line.startswith(("msrun", ".venv/bin/python -m trainer."))
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
