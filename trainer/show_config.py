"""The config a trainer command would run with, resolved (``base:`` merged, overrides applied):
the whole YAML, or one value.

    python -m trainer.show_config --config configs/demo.yaml train.lr=0.01
    python -m trainer.show_config --config configs/demo.yaml name=mine --key name

Printed as a run saves it in ``runs/<name>/config.yaml``; ``--config runs/<name>/config.yaml``
repeats a run with exactly its settings. The Makefile reads a run's name here (its exports go
to ``export/<name>/``).
"""
from __future__ import annotations

import argparse
import sys

import yaml

from datatools.cli import run_cli
from trainer.config import Config, ConfigError, config_from_args, config_parser

__all__ = ["value_at", "main"]


def value_at(cfg: Config, key: str) -> object:
    """The value at dotted ``key`` (``train.lr``); ConfigError naming the key if there is none."""
    value: object = cfg
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"--key {key}: the config has no such key")
        value = value[part]
    return value


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    value = cfg if args.key is None else value_at(cfg, args.key)
    if isinstance(value, Config):       # a section: YAML, as the run's config.yaml holds it
        print(yaml.safe_dump(value.to_dict(), sort_keys=False), end="")
    else:
        print(value)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(__doc__.split("\n")[0])
    parser.prog = "python -m trainer.show_config"
    parser.add_argument("--key", default=None, help="print only this value (dotted: train.lr, name)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
