"""A command's ``python -m`` behaviour without a new interpreter (4-5 s each with MindSpore).

``run_module(module, argv)`` runs ``run_cli(module.build_parser(), module.main, argv)`` as the
module's ``__main__`` block does: the same exit code and one-line ``error: ...`` on stderr (read
with capsys), argparse's errors as SystemExit. Each entry point keeps one real subprocess test;
the other CLI paths use this.
"""
from __future__ import annotations

import logging
from types import ModuleType
from typing import Sequence

import mindspore as ms

from datatools.cli import run_cli

__all__ = ["run_module"]


def run_module(module: ModuleType, argv: Sequence[object]) -> int:
    """The exit code of ``python -m <module> *argv``, run in this process.

    Commands reset the root logger to stdout (``setup_logging``) and set MindSpore's execution
    mode; both are put back afterwards, so later tests keep pytest's log capture and the mode
    they expect.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    mode = ms.get_context("mode")
    try:
        return run_cli(module.build_parser(), module.main, [str(arg) for arg in argv])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        ms.set_context(mode=mode)
