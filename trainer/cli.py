"""The shared ending of every trainer command: a user error is one line on stderr, not a traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

__all__ = ["RunStopped", "run_cli"]


class RunStopped(Exception):
    """A run that cannot go on for a reason the user must see (e.g. a diverged loss)."""


def run_cli(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], object]) -> int:
    """Parse, run, and map user errors to ``error: <message>`` with exit 2 (1 for a stopped run)."""
    args = parser.parse_intermixed_args()
    try:
        main(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    return 0
