"""Shared command-line plumbing: argument types and one-line errors instead of tracebacks."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, NoReturn

__all__ = ["run_cli", "positive_int", "non_negative_int", "parse_size", "EXIT_USAGE", "EXIT_IO"]

EXIT_USAGE = 2   # unusable arguments or inputs (argparse uses 2 as well)
EXIT_IO = 1      # the output could not be written


def run_cli(main: Callable[[list[str] | None], int]) -> NoReturn:
    """Run a CLI ``main``; user errors become ``error: <message>`` on stderr, not a traceback.

    ValueError/TypeError/FileNotFoundError mean bad arguments or inputs (exit 2); any other
    OSError means the output could not be written (exit 1).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = main(None)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_IO)
    sys.exit(code)


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
