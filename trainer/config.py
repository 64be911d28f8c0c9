"""YAML configs with ``key=value`` overrides, checked against the recipe that defines every key.

A config either is a root file (it defines the keys and their types, like
``configs/stnet_r50_k400.yaml``) or names one with ``base: <file>`` and changes some values.
Neither a config file nor an override may add a key or change a value's type, and every value
must pass its rule in ``RULES``, so a typo or an impossible value (``train.eval_interval=0``)
fails at start-up in every command instead of after an epoch, or being ignored for 60 epochs.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

__all__ = ["Config", "ConfigError", "load_config", "save_config", "config_parser", "config_from_args",
           "DEVICE_TARGETS", "AUTO_DEVICE", "MODES", "RESIZE_MODES", "BLOCKS_PER_STAGE",
           "XCEPTION_VARIANTS", "LR_SCHEDULES", "AUTO_AMP", "AMP_LEVELS", "LOSS_SCALE_MANAGERS",
           "TEST_CROPS", "NULLABLE_TYPES", "RULES", "RUN_NAME", "run_name_problem",
           "check_run_name"]

BASE_KEY = "base"

# The choices of the choice keys. The modules acting on a key import its tuple from here (this
# module needs no MindSpore), so what load_config accepts is what they handle.
AUTO_DEVICE = "auto"   # Ascend where its runtime loads, else CPU (trainer.runtime.resolve_device_target)
DEVICE_TARGETS = (AUTO_DEVICE, "Ascend", "CPU", "GPU")
MODES = ("graph", "pynative")
RESIZE_MODES = ("keep", "zoo")
BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}  # ResNet depth -> blocks
XCEPTION_VARIANTS = ("depthwise", "dense")
LR_SCHEDULES = ("step", "cosine")
AUTO_AMP = "auto"      # per device (trainer.precision.amp_level), or the level a checkpoint's run recorded
AMP_LEVELS = (AUTO_AMP, "O0", "O1", "O2", "O3")
LOSS_SCALE_MANAGERS = ("dynamic", "fixed")
TEST_CROPS = (1, 3)    # spatial test crops: the centre | left, centre, right along the long side

# A run name is one folder below train.output_dir (and <train_url>/): an empty name, ".." or a "/"
# would make the run folder output_dir itself or one outside it, which train.overwrite clears.
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")

# The type of each key whose recipe default is null (a null cannot say it). Only these keys may
# be null; any other null fails at load time.
NULLABLE_TYPES: dict[str, type] = {"model.pretrained": str, "train.resume": str, "cloud.data_url": str,
                                   "cloud.train_url": str, "cloud.checkpoint_url": str,
                                   "cloud.endpoint": str}
# ModelArts passes a job's input and output locations as these flags; config_parser takes them and
# config_from_args folds them into the overrides (cloud.data_url, cloud.train_url).
CLOUD_FLAGS = ("data_url", "train_url")


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


# A rule returns None for an allowed value, else what is allowed ("> 0", "one of step|cosine");
# it also gets the whole config for limits set by another key.
Rule = Callable[[Any, Mapping], "str | None"]


def _get(data: Mapping, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range(low: float, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
    """``low <= value`` (``<`` if ``low_open``) and likewise ``value <= high`` when given."""
    if high is None:
        allowed = f"{'>' if low_open else '>='} {low}"
    else:
        allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def rule(value: Any, data: Mapping) -> str | None:
        ok = _is_number(value) and (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
        return None if ok else allowed
    return rule


def _one_of(choices: Iterable) -> Rule:
    choices = tuple(choices)
    allowed = f"one of {'|'.join(map(str, choices))}"
    return lambda value, data: None if value in choices else allowed


def _all(*rules: Rule) -> Rule:
    return lambda value, data: next(filter(None, (r(value, data) for r in rules)), None)


def _within_epochs(value: Any, data: Mapping) -> str | None:
    """Warmup fits the run (a 1-epoch smoke run of a config with 1 warmup epoch is all warmup)."""
    epochs = _get(data, "train.epochs")
    return None if _is_number(value) and value <= epochs else f"<= train.epochs ({epochs})"


def _fits_short_side(value: Any, data: Mapping) -> str | None:
    """A crop fits the frames; with ``data.short_side: 0`` (as stored) it is checked against the
    stored short side when a split is read (trainer.data.clip_decoder)."""
    side = _get(data, "data.short_side")
    ok = side == 0 or (_is_number(value) and value <= side)
    return None if ok else f"<= data.short_side ({side})"


def _non_empty(value: Any, data: Mapping) -> str | None:
    """A string with something in it (a null passes: only NULLABLE_TYPES keys get here as null)."""
    return None if value is None or (isinstance(value, str) and value.strip()) else "a non-empty string"


def run_name_problem(name: Any) -> str | None:
    """None for a usable run name, else what a run name must be (also checked where a run folder
    is deleted, whatever built the config)."""
    ok = isinstance(name, str) and RUN_NAME.fullmatch(name) and name not in (".", "..")
    return None if ok else "letters, digits, '.', '_' or '-' (one folder name, not '.' or '..')"


def check_run_name(name: Any) -> None:
    """Raise ConfigError unless ``name`` is one folder name (see ``RUN_NAME``)."""
    problem = run_name_problem(name)
    if problem:
        raise ConfigError(f"name must be {problem}, got {name!r}")


def _location(value: Any, data: Mapping) -> str | None:
    """Null, a local path, or an OBS URL that datatools.obs parses (imported only for a URL: it
    loads the OBS SDK)."""
    allowed = "null, a local path or obs://bucket/prefix"
    if _non_empty(value, data):
        return allowed
    if isinstance(value, str) and ("://" in value or value.startswith("obs:")):
        from datatools.obs import parse_url
        try:
            parse_url(value)
        except ValueError as exc:
            return f"{allowed} ({exc})"
    return None


def _increasing_epochs(value: Any, data: Mapping) -> str | None:
    ok = isinstance(value, list) and all(_is_number(v) and v >= 1 for v in value) and all(
        a < b for a, b in zip(value, value[1:]))
    return None if ok else "a strictly increasing list of epochs >= 1"


_POSITIVE = _range(1)
# Checked in this order, so a key that limits another (data.short_side) passes its rule first.
RULES: dict[str, Rule] = {
    "name": lambda value, data: run_name_problem(value),
    "seed": _range(0),
    "device_target": _one_of(DEVICE_TARGETS),
    "mode": _one_of(MODES),
    "data.num_segments": _POSITIVE,
    "data.frames_per_segment": _POSITIVE,
    "data.short_side": _range(0),
    "data.resize": _one_of(RESIZE_MODES),
    "data.crop_size": _all(_POSITIVE, _fits_short_side),
    "data.batch_size": _POSITIVE,
    "data.num_workers": _POSITIVE,
    "data.max_bad_samples": _range(0),
    "model.depth": _one_of(BLOCKS_PER_STAGE),
    "model.width": _POSITIVE,
    "model.xception": _one_of(XCEPTION_VARIANTS),
    "model.num_classes": _POSITIVE,
    "train.epochs": _POSITIVE,
    "train.lr": _range(0, low_open=True),
    "train.lr_batch": _POSITIVE,
    "train.momentum": _range(0, 1, high_open=True),
    "train.weight_decay": _range(0),
    "train.lr_schedule": _one_of(LR_SCHEDULES),
    "train.lr_milestones": _increasing_epochs,
    "train.lr_gamma": _range(0, 1, low_open=True),
    "train.warmup_epochs": _all(_range(0), _within_epochs),
    "train.label_smoothing": _range(0, 1, high_open=True),
    "train.head_lr_mult": _range(0, low_open=True),
    "train.amp_level": _one_of(AMP_LEVELS),
    "train.loss_scale_manager": _one_of(LOSS_SCALE_MANAGERS),
    "train.loss_scale": _range(1),
    "train.loss_scale_window": _POSITIVE,
    "train.log_interval": _POSITIVE,
    "train.eval_interval": _POSITIVE,
    "train.keep_checkpoints": _POSITIVE,
    "train.limit_steps": _range(0),
    "test.segments": _POSITIVE,
    "test.crop": _all(_POSITIVE, _fits_short_side),
    "test.clips": _POSITIVE,
    "test.crops": _one_of(TEST_CROPS),
    "test.batch_size": _POSITIVE,
    "test.limit_videos": _range(0),
    "cloud.data_url": _location,
    "cloud.train_url": _location,
    "cloud.checkpoint_url": _location,
    "cloud.cache_dir": _non_empty,
    "cloud.endpoint": _non_empty,
}


def _safe_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` with its multi-line parse error folded into one ConfigError line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{source} is not valid YAML: {problem}{where}") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = _safe_load(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _coerce(key: str, value: Any, reference: Any) -> Any:
    """``value`` converted to the type of ``reference`` (the recipe's value), or ConfigError."""
    if reference is None or value is None:  # typed by NULLABLE_TYPES in _check
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


def _leaves(data: Mapping, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check(data: dict) -> None:
    """Nulls only where NULLABLE_TYPES allows them, with its type otherwise; then every rule."""
    for key, value in _leaves(data):
        expected = NULLABLE_TYPES.get(key)
        if value is None and expected is None:
            raise ConfigError(f"config key {key!r} may not be null "
                              f"(only {', '.join(NULLABLE_TYPES)} may)")
        if value is not None and expected is not None and not isinstance(value, expected):
            raise ConfigError(f"config key {key!r} expects {expected.__name__} or null, got {value!r}")
    for key, rule in RULES.items():
        try:
            value = _get(data, key)
        except KeyError:
            raise ConfigError(f"config key {key!r} is missing: a root config (no base:) defines "
                              f"every key") from None
        allowed = rule(value, data)
        if allowed is not None:  # worded as the modules' own checks word it
            raise ConfigError(f"{key} must be {allowed}, got {value!r}")


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
    return key.split("."), _safe_load(raw, f"override {text!r}") if raw else ""


def _to_config(data: dict) -> Config:
    return Config({k: _to_config(v) if isinstance(v, dict) else v for k, v in data.items()})


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Resolve ``path`` (following ``base:``), apply ``key=value`` overrides, check every value."""
    data = _resolve(Path(path))
    for text in overrides:
        keys, value = _parse_override(text)
        change: Any = value
        for key in reversed(keys):
            change = {key: change}
        data = _merge(data, change)
    _check(data)
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
    for flag in CLOUD_FLAGS:
        parser.add_argument(f"--{flag}", metavar="URL",
                            help=f"cloud.{flag} (as ModelArts passes it): obs://bucket/prefix or a local path")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of a ``config_parser`` command line; ``--data_url``/``--train_url`` become
    overrides (quoted, so any text stays a string), checked like any other."""
    flags = [f"cloud.{flag}={json.dumps(value)}" for flag in CLOUD_FLAGS
             if (value := getattr(args, flag, None)) is not None]
    return load_config(args.config, [*args.overrides, *flags])
