"""The suite's check on MindSpore deprecations (tests/conftest.py): one logged while this
project's code is on the stack is kept, naming that code; one from elsewhere is not."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import DeprecationLog

ROOT = Path(__file__).resolve().parents[1]
CALL = "log.warning('The usage of %s is deprecated.', 'SpaceToBatch')"


def _logged_from(path: Path) -> list[str]:
    passed_on: list[str] = []
    log = DeprecationLog(lambda msg, *args: passed_on.append(msg % args))
    exec(compile(f"\n\n{CALL}\nlog.warning('an ordinary warning')", str(path), "exec"), {"log": log})
    assert passed_on == ["The usage of SpaceToBatch is deprecated.", "an ordinary warning"]
    return log.found


def test_a_deprecation_logged_from_project_code_is_kept_naming_the_line():
    assert _logged_from(ROOT / "trainer" / "model.py") == [
        f"{ROOT / 'trainer' / 'model.py'}:3: The usage of SpaceToBatch is deprecated."]


def test_a_deprecation_from_elsewhere_is_not():
    assert _logged_from(ROOT / "tests" / "somewhere.py") == []
