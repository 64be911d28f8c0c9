"""The official Kinetics CSV and video-tree layout.

CSV: ``label,youtube_id,time_start,time_end,split[,is_cc]`` with a header line; labels may be
quoted and hold commas. Videos live at ``<root>/<label>/<ytid>_<start:06d>_<end:06d>.mp4``; common
download variants (label folder with underscores, ``.mkv``/``.webm``, a flat folder) are accepted.
A label or youtube_id that is absolute or holds ``..`` is a failed row, as a list's path is
(``datatools.plan.outside_videos``).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from datatools.plan import outside_videos

__all__ = ["REQUIRED_COLUMNS", "VIDEO_EXTENSIONS", "CsvEntry", "read_csv", "find_video"]

REQUIRED_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")


@dataclass(frozen=True)
class CsvEntry:
    """One CSV row; ``line`` is its 1-based line number in the file (the header is line 1)."""

    line: int
    label: str
    youtube_id: str
    time_start: int
    time_end: int

    @property
    def video_id(self) -> str:
        return f"{self.youtube_id}_{self.time_start:06d}_{self.time_end:06d}"

    @property
    def where(self) -> str:
        """Where the entry is, for a duplicate's reason."""
        return f"CSV line {self.line}"

    @property
    def problem(self) -> str:
        """Why the row cannot be converted whatever its file holds: a label or youtube_id that
        would lead the video's path outside --videos (``read_csv`` refuses unparsable rows)."""
        return outside_videos(self.where, self.label, self.video_id)

    def locate(self, videos_root: str | Path) -> Path | None:
        return find_video(videos_root, self)

    def tried(self, videos_root: str | Path) -> str:
        exts = ",".join(ext.lstrip(".") for ext in VIDEO_EXTENSIONS)
        return ", ".join(f"{Path(videos_root) / folder / self.video_id}.{{{exts}}}"
                         for folder in _folders(self))


def read_csv(path: str | Path) -> list[CsvEntry]:
    """Rows of a Kinetics CSV in file order.

    Raises FileNotFoundError for a missing file and ValueError naming the file and line for a
    missing column, a row with the wrong number of fields or a non-numeric time.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {missing}; expected a header with "
                             f"{','.join(REQUIRED_COLUMNS)},split; got {header}")
        cols = {c: header.index(c) for c in REQUIRED_COLUMNS}
        entries = []
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} fields ({','.join(header)}), "
                                 f"got {len(fields)}: {fields}")
            label = fields[cols["label"]].strip()
            ytid = fields[cols["youtube_id"]].strip()
            if not label or not ytid:
                raise ValueError(f"{path}:{line}: empty label or youtube_id: {fields}")
            entries.append(CsvEntry(line, label, ytid, _time(path, line, fields[cols["time_start"]]),
                                    _time(path, line, fields[cols["time_end"]])))
    return entries


def _time(path: Path, line: int, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}:{line}: time must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or value != int(value):     # int() of inf/nan raises
        raise ValueError(f"{path}:{line}: time must be a whole number of seconds >= 0, got {text!r}")
    return int(value)


def find_video(root: str | Path, entry: CsvEntry) -> Path | None:
    """The first existing file among the accepted layouts, or None."""
    root = Path(root)
    for folder in _folders(entry):
        for ext in VIDEO_EXTENSIONS:
            candidate = root / folder / f"{entry.video_id}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _folders(entry: CsvEntry) -> list[str]:
    """The folders under the root a video may be in: its label's, with underscores, the root."""
    return list(dict.fromkeys([entry.label, entry.label.replace(" ", "_"), ""]))
