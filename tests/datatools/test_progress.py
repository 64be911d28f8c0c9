"""Progress lines in logs: count, percentage, rate and ETA, at most every few seconds, and the end."""
from __future__ import annotations

import logging

from datatools.progress import Progress


def test_log_lines_are_throttled_and_the_last_is_always_written(caplog):
    logger = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        with Progress(4, "videos", logger=logger, every=3600, desc="synth") as progress:
            for _ in range(4):
                progress.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("synth: 4/4 videos (100%), ")
    assert "videos/s, ETA 0 s" in lines[0]
