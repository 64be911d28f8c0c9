"""Progress of long work: a bar on a terminal, a plain line every few seconds in a log.

Conversion, evaluation, synthesis and preprocessing run for minutes; a user must see that they
move and when they will end. tqdm draws the bar when stderr is a terminal; otherwise (msrun's
worker logs, CI, ``| tee``) a bar would be one endless line of carriage returns, so a log line
with count, rate and ETA is written at most every ``every`` seconds and at the end.
"""
from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress"]


class Progress:
    """``with Progress(total, "videos") as bar: bar.update(n)``."""

    def __init__(self, total: int, unit: str, *, logger: logging.Logger, every: float = 5.0,
                 desc: str = "") -> None:
        self.total, self.unit, self.logger, self.every = total, unit, logger, every
        self.desc = desc
        self.done = 0
        self.start = self.last = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit=f" {unit}", desc=desc or None, leave=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.logger.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``120/600 videos (20%), 3.1 videos/s, ETA 155 s``."""
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        prefix = f"{self.desc}: " if self.desc else ""
        return (f"{prefix}{self.done}/{self.total} {self.unit} "
                f"({100.0 * self.done / max(self.total, 1):.0f}%), {rate:.1f} {self.unit}/s, ETA {eta:.0f} s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
