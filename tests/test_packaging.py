"""The project is an installed package: pyproject.toml declares it, requirements.txt pins exactly
its dependencies, and its modules run from any directory without PYTHONPATH."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """PEP 503 normalized project name of a requirement line (extras and pin dropped)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0]).lower()


def _pins(requirements: list[str]) -> dict[str, str]:
    return {_name(r): r.replace(" ", "") for r in requirements}


def test_requirements_lock_pins_exactly_the_declared_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for group in project["optional-dependencies"].values()
                                          for r in group]
    assert all("==" in r for r in declared), "every dependency is pinned to the tested version"
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    locked = [line for line in lines if line]
    tools = {"setuptools"}   # what `pip install --no-build-isolation -e .` builds with
    assert {k: v for k, v in _pins(locked).items() if k not in tools} == _pins(declared)


def test_modules_run_from_outside_the_checkout_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "trainer.train", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m trainer.train")
    where = subprocess.run([sys.executable, "-c", "import datatools, benchmarks, trainer.infer310 as p; "
                            "print(datatools.__file__, benchmarks.__file__, p.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(ROOT / "datatools/__init__.py"), str(ROOT / "benchmarks/__init__.py"),
                                    str(ROOT / "trainer/infer310/__init__.py")]
