"""The run folder ``<train.output_dir>/<name>/``: every file name in it, and how each is written.

    config.yaml                 the resolved config of the run (no ``base:``; train.amp_level
                                resolved: the precision the run trained with, trainer.precision)
    train.jsonl                 one JSON object per log window and per evaluation
    checkpoints/epoch-NNNN.ckpt full training state after epoch NNNN (the newest K kept)
    best.ckpt, best.json        weights with the best validation top-1, and that top-1 and epoch
    curves.png                  loss/accuracy curves (trainer.plot)

Training, checkpointing, evaluation, export and plotting find these files here and nowhere else.
Writes are atomic (a temporary name, then a rename), so a killed run never leaves a half-written
file under a final name. Imports no MindSpore: ``trainer.plot`` reads a run without it.
"""
from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from trainer.config import AMP_LEVELS, AUTO_AMP, Config, ConfigError, check_run_name

__all__ = ["RunDir", "atomic_path"]

logger = logging.getLogger(__name__)

_EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.ckpt$")


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary name beside ``path``; on success it replaces ``path``.

    ``suffix`` ends the temporary name (``ms.save_checkpoint`` appends ``.ckpt`` to any other).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RunDir:
    """One run folder; ``RunDir.of(cfg)`` is the run a config names."""

    CONFIG = "config.yaml"
    LOG = "train.jsonl"
    CHECKPOINTS = "checkpoints"
    BEST_WEIGHTS = "best.ckpt"
    BEST_SCORE = "best.json"
    CURVES = "curves.png"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: Config) -> "RunDir":
        """``<train.output_dir>/<name>``; a name that is not one folder name is refused (it would
        make the run folder output_dir itself, or one outside it)."""
        check_run_name(cfg.name)
        return cls(Path(cfg.train.output_dir) / cfg.name)

    @classmethod
    def holding(cls, checkpoint: str | Path) -> "RunDir | None":
        """The run folder ``checkpoint`` lies in (beside its config.yaml, or in its checkpoints/
        folder), or None for a checkpoint outside any run folder."""
        parent = Path(checkpoint).parent
        folder = parent.parent if parent.name == cls.CHECKPOINTS else parent
        return cls(folder) if (folder / cls.CONFIG).is_file() else None

    def trained_amp_level(self) -> str | None:
        """The resolved ``train.amp_level`` config.yaml records, or None where it records none
        (no config.yaml, or ``auto``: written before runs recorded their level).

        Read from the YAML alone, not ``load_config``: a run saved under an older recipe (a key
        since added) still tells its level.
        """
        if not self.config.is_file():
            return None
        level = (yaml.safe_load(self.config.read_text()) or {}).get("train", {}).get("amp_level")
        if level is not None and level not in AMP_LEVELS:
            raise ConfigError(f"{self.config}: train.amp_level must be one of "
                              f"{'|'.join(AMP_LEVELS)}, got {level!r}")
        return None if level in (None, AUTO_AMP) else level

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def best_weights(self) -> Path:
        return self.path / self.BEST_WEIGHTS

    @property
    def best_score(self) -> Path:
        return self.path / self.BEST_SCORE

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.path / self.CHECKPOINTS / f"epoch-{epoch:04d}.ckpt"

    def epoch_checkpoints(self) -> list[Path]:
        """Epoch checkpoints, oldest first (by epoch number, not file time)."""
        folder = self.path / self.CHECKPOINTS
        found = [p for p in folder.iterdir() if _EPOCH_FILE.match(p.name)] if folder.is_dir() else []
        return sorted(found, key=lambda p: int(_EPOCH_FILE.match(p.name).group(1)))

    def latest_checkpoint(self) -> Path | None:
        found = self.epoch_checkpoints()
        return found[-1] if found else None

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` (at least one) epoch checkpoints."""
        for old in self.epoch_checkpoints()[:-max(keep, 1)]:
            old.unlink()

    def holds_a_run(self) -> bool:
        """Whether an earlier run wrote here (a log, a checkpoint or best weights)."""
        return self.log.is_file() or self.best_weights.is_file() or bool(self.epoch_checkpoints())

    def claim(self, resuming: bool, overwrite: bool, auto: bool = False) -> str | None:
        """Refuse to train from scratch into another run's folder; else why an earlier run's files
        must be cleared first (None: nothing to clear).

        Two runs in one folder would interleave their train.jsonl, overwrite some checkpoints and
        keep the other run's best.ckpt. With ``auto`` (train.resume=auto and no epoch checkpoint
        to resume from) a run that never finished its first epoch starts over: nothing of value
        is lost. Reads only: every rank asks, rank 0 alone ``clear``s, once every other check
        passed.
        """
        if resuming or not self.holds_a_run():
            return None
        if auto and not self.best_weights.is_file():
            return (f"train.resume=auto, and it holds no epoch checkpoint yet ({self.describe()}): "
                    f"the run stopped in its first epoch, starting it over")
        if not overwrite:
            raise ValueError(f"{self.path} already holds a run ({self.describe()}): resume it with "
                             f"train.resume=auto, start another with a new name=, or replace it "
                             f"with train.overwrite=true")
        return f"train.overwrite=true: replacing the run it holds ({self.describe()})"

    def clear(self) -> None:
        """Delete the files of an earlier run (``claim`` said why)."""
        for path in (self.log, self.best_weights, self.best_score, self.curves, self.config,
                     *self.epoch_checkpoints()):
            path.unlink(missing_ok=True)

    def describe(self) -> str:
        """``train.jsonl, 3 epoch checkpoints, best.ckpt`` (what holds_a_run found)."""
        found = [self.LOG] if self.log.is_file() else []
        checkpoints = self.epoch_checkpoints()
        if checkpoints:
            found.append(f"{len(checkpoints)} epoch checkpoint(s)")
        if self.best_weights.is_file():
            found.append(self.BEST_WEIGHTS)
        return ", ".join(found)

    def write_text(self, path: Path, text: str) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(text)

    def append_log(self, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> tuple[list[dict], list[dict]]:
        """(training log windows, evaluations) of ``train.jsonl``, in step order.

        A run resumed from an epoch checkpoint logs again the steps after it that a stopped
        attempt had logged: a later line replaces every earlier one at or past its step.
        """
        if not self.log.is_file():
            raise FileNotFoundError(f"no {self.LOG} in {self.path}: is it a run folder of trainer.train?")
        kept: list[dict] = []
        for record in self._records():
            while kept and kept[-1]["step"] >= record["step"] and \
                    not (kept[-1]["step"] == record["step"] and "top1" in record):
                kept.pop()
            kept.append(record)
        return [r for r in kept if "loss" in r], [r for r in kept if "top1" in r]

    def _records(self) -> list[dict]:
        """The log's JSON lines. A torn last line (a run killed mid-write) is skipped with a
        warning; a torn line before it is an error naming the file and line."""
        lines = self.log.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if number < len(lines):
                    raise ValueError(f"{self.log} line {number} is not JSON ({line[:40]!r}): the "
                                     f"log is damaged; fix or delete that line") from None
                logger.warning("%s: skipped its torn last line %d (a run stopped while writing it)",
                               self.log, number)
        return records

    def mend_log(self) -> None:
        """Cut a torn last line off the log (a run killed mid-write) before a resumed run appends
        to it: written after it, the next line would be torn too, and no longer the last."""
        if not self.log.is_file():
            return
        text = self.log.read_bytes()
        if text and not text.endswith(b"\n"):
            with self.log.open("r+b") as f:
                f.truncate(text.rfind(b"\n") + 1)
            logger.warning("%s: cut its torn last line (a run stopped while writing it)", self.log)

    def best_top1(self) -> float:
        """The best validation top-1 so far, -1 before the first evaluation."""
        return json.loads(self.best_score.read_text())["top1"] if self.best_score.is_file() else -1.0

    def write_best_score(self, epoch: int, top1: float) -> None:
        self.write_text(self.best_score, json.dumps({"epoch": epoch, "top1": top1}) + "\n")
