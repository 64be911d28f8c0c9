"""YAML configs with ``key=value`` overrides, checked against the recipe that defines every key.

A config either is a root file (it defines the keys and their types, like
``configs/stnet_r50_k400.yaml``) or names one with ``base: <file>`` and changes some values.
Neither a config file nor an override may add a key or change a value's type, so a typo fails at
start-up instead of being ignored for 60 epochs.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = ["Config", "ConfigError", "load_config", "save_config", "config_parser", "config_from_args"]

BASE_KEY = "base"


class ConfigError(ValueError):
    """A config file or override that does not fit the recipe."""


class Config(dict):
    """Nested dict with attribute access (``cfg.train.lr``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _coerce(key: str, value: Any, reference: Any) -> Any:
    """``value`` converted to the type of ``reference`` (the recipe's value), or ConfigError."""
    if reference is None or value is None:
        return value
    if isinstance(reference, bool):
        ok = isinstance(value, bool)
    elif isinstance(reference, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(reference, float):
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(reference, list):
        ok = isinstance(value, list)
        if ok and reference:
            value = [_coerce(f"{key}[{i}]", v, reference[0]) for i, v in enumerate(value)]
    else:
        ok = isinstance(value, type(reference))
    if not ok:
        raise ConfigError(f"config key {key!r} expects {type(reference).__name__}, got {value!r}")
    return value


def _merge(base: dict, changes: dict, prefix: str = "") -> dict:
    merged = dict(base)
    for key, value in changes.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {name!r}; known here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} is a section, got {value!r}")
            merged[key] = _merge(base[key], value, f"{name}.")
        else:
            merged[key] = _coerce(name, value, base[key])
    return merged


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config base cycle: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    return _merge(_resolve(path.parent / base, seen + (path,)), data)


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override must look like section.key=value, got {text!r}")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def _to_config(data: dict) -> Config:
    return Config({k: _to_config(v) if isinstance(v, dict) else v for k, v in data.items()})


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Resolve ``path`` (following ``base:``) and apply ``key=value`` overrides."""
    data = _resolve(Path(path))
    for text in overrides:
        keys, value = _parse_override(text)
        change: Any = value
        for key in reversed(keys):
            change = {key: change}
        data = _merge(data, change)
    return _to_config(data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (no ``base:``) so a run can be repeated from its folder."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the ``--config FILE [key=value ...]`` shape every trainer command shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a config value, e.g. train.lr=0.02 model.xception=dense")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
