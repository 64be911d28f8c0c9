"""make targets keep the caller's PYTHONPATH (CANN's set_env.sh puts its op-impl paths there)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_CANN = "/opt/fake/cann"

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv/bin/python").exists(),
                                reason="needs make and the project's .venv")


def make_env(pythonpath: str | None) -> tuple[str, list[str]]:
    """``make -s env`` from the repo; returns PYTHONPATH and sys.path as the targets' python saw them."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MAKEFLAGS", "MAKELEVEL"}}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(["make", "-s", "env"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("mindspore: ") for line in lines), result.stdout
    environ_value = next(line for line in lines if line.startswith("PYTHONPATH: "))
    start = lines.index("sys.path:") + 1
    return (environ_value.removeprefix("PYTHONPATH: "),
            [line.strip() for line in lines[start:] if line.startswith("  ")])


@pytest.mark.parametrize("inherited, expected", [
    (FAKE_CANN, f"{ROOT}:{FAKE_CANN}"),
    (None, str(ROOT)),  # no trailing colon: an empty entry would put the cwd on sys.path
    (f"{ROOT}:{FAKE_CANN}", f"{ROOT}:{FAKE_CANN}"),  # a sub-make (make demo) adds no second root
])
def test_make_keeps_inherited_pythonpath(inherited, expected):
    environ_value, sys_path = make_env(inherited)
    assert environ_value == expected
    assert sys_path[:len(expected.split(":"))] == expected.split(":")
