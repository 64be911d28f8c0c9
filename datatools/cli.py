"""The one command-line entry for every tool of both packages: parse, run, and turn a user's
error into one line instead of a traceback.

Every command module has ``build_parser()`` and ``main(args)`` and ends with
``sys.exit(run_cli(build_parser(), main))``; an int returned by ``main`` is the exit code
(anything else, e.g. a result a caller in Python wants, means success). The trainer may import
it (docs/design.md §1 lists what else of datatools, tests/test_layering.py checks it). Stdlib
only: the 310 package ships it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

__all__ = ["RunStopped", "run_cli", "setup_logging", "positive_int", "non_negative_int",
           "parse_size", "EXIT_USAGE", "EXIT_FAILED"]

EXIT_USAGE = 2    # unusable arguments or inputs (argparse uses 2 as well)
EXIT_FAILED = 1   # the output could not be written, or a run stopped
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunStopped(Exception):
    """A run that cannot go on for a reason the user must see (e.g. a diverged loss)."""


def run_cli(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], object],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run ``main`` and return the exit code.

    ValueError/TypeError/FileNotFoundError mean bad arguments or inputs: ``error: ...``, exit 2.
    Any other OSError means an output could not be written (e.g. a full disk, an unwritable
    folder): ``error: ...``, exit 1. RunStopped: ``stopped: ...``, exit 1.
    """
    parser.prog = _module_prog(parser.prog)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format=LOG_FORMAT)  # if unset
    try:
        code = main(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RunStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _module_prog(prog: str) -> str:
    """``python -m trainer.train`` instead of argparse's ``train.py`` in usage lines, when the
    command runs as a module (as every command here does)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if prog.endswith(".py") and spec is not None else prog


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """INFO on rank 0, warnings only elsewhere, so 8 ranks do not print 8 copies."""
    logging.basicConfig(stream=sys.stdout, level=level if rank == 0 else logging.WARNING,
                        format=LOG_FORMAT, force=True)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_size(text: str) -> tuple[int, int]:
    """argparse type: ``WxH`` with positive integers, e.g. ``160x120``."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected WxH with positive integers, got {text!r}")
    return int(parts[0]), int(parts[1])


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
