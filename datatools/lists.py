"""Labelled video lists besides the Kinetics CSV: a plain list, UCF101 and HMDB51 split files.

``--list`` takes (every video path is relative to ``--videos``):

    FILE                  lines ``relative/path/to/video label``: whitespace separated, the label
                          is the last field (so a path may hold spaces); or, when the first line is
                          the header ``path,label``, a CSV of those two columns
    ucf101:FILE           a UCF101 trainlist/testlist (``ApplyEyeMakeup/v_..._c01.avi 1``); the
                          numbers are those of ``classInd.txt`` beside FILE; a testlist line has no
                          number: the class is the video's folder
    hmdb51:DIR:N[:test]   the HMDB51 split files ``DIR/<class>_test_splitN.txt`` (``video.avi 0|1|2``):
                          split N's train videos (1), or with ``:test`` its test videos (2); the
                          class is the file name prefix, the video is ``<class>/video.avi``

The video_id is the path without its extension (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01``), so
two paths that differ only in extension are duplicates. A line without a label (one field, or a
last field that ends in a video extension) or whose path is absolute or climbs out of ``--videos``
becomes a failed manifest row (``datatools.plan``); a list with no labelled line is refused.
"""
from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from datatools.kinetics import read_csv
from datatools.manifest import Reason
from datatools.plan import Entry, outside_videos

__all__ = ["ListEntry", "read_list", "read_entries", "LIST_FORMS"]

VIDEO_SUFFIXES = (".avi", ".mkv", ".mov", ".mp4", ".webm")
CSV_HEADER = ["path", "label"]
UCF101, HMDB51 = "ucf101", "hmdb51"
UCF101_CLASSES = "classInd.txt"
HMDB51_FLAGS = {"train": "1", "test": "2"}      # "0": in neither half of the split
LIST_FORMS = "FILE ('relative/path label' lines or a 'path,label' CSV), ucf101:FILE or hmdb51:DIR:N[:test]"


@dataclass(frozen=True)
class ListEntry:
    """One list line: ``relpath`` under --videos, ``label`` ("" if the line has none)."""

    where: str          # "trainlist01.txt line 3"
    relpath: str
    label: str

    @property
    def video_id(self) -> str:
        return posixpath.splitext(str(PurePosixPath(self.relpath)))[0]

    @property
    def problem(self) -> str:
        """Why the line cannot be converted whatever its file holds, or ""."""
        outside = outside_videos(self.where, self.relpath)
        if outside:
            return outside
        if not self.label:
            return Reason.text(Reason.NO_LABEL, self.where)
        return ""

    def locate(self, videos_root: str | Path) -> Path | None:
        path = Path(videos_root) / self.relpath
        return path if path.is_file() else None

    def tried(self, videos_root: str | Path) -> str:
        return str(Path(videos_root) / self.relpath)


def read_entries(csv_path: str | Path | None, video_list: str | None) -> list[Entry]:
    """The entries of a Kinetics CSV or of a video list (exactly one must be given); an empty
    CSV or a list without a labelled line is refused."""
    if (csv_path is None) == (video_list is None):
        raise ValueError("give exactly one of --csv (Kinetics) and --list (a video list)")
    if video_list is not None:
        return read_list(video_list)
    entries = read_csv(csv_path)
    if not entries:
        raise ValueError(f"{csv_path}: no rows")
    return entries


def read_list(spec: str) -> list[ListEntry]:
    """The lines of ``spec`` (any form in the module docstring) as entries, in file order."""
    kind, _, rest = spec.partition(":")
    if kind == UCF101:
        entries = _ucf101(Path(rest))
    elif kind == HMDB51:
        entries = _hmdb51(rest)
    else:
        entries = _plain(Path(spec))
    if not any(e.label for e in entries):
        raise ValueError(f"{spec}: no labelled video in the list; expected {LIST_FORMS}")
    return entries


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines."""
    if not path.is_file():
        raise FileNotFoundError(f"list not found: {path}")
    text = path.read_text(encoding="utf-8")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _plain(path: Path) -> list[ListEntry]:
    lines = _lines(path)
    if lines and lines[0][1].replace(" ", "").lower().split(",") == CSV_HEADER:
        return _csv(path, lines[1:])
    entries = []
    for n, text in lines:
        fields = text.rsplit(None, 1)
        if len(fields) == 1 or fields[1].lower().endswith(VIDEO_SUFFIXES):
            entries.append(ListEntry(f"{path.name} line {n}", text, ""))
        else:
            entries.append(ListEntry(f"{path.name} line {n}", fields[0], fields[1]))
    return entries


def _csv(path: Path, lines: list[tuple[int, str]]) -> list[ListEntry]:
    """``path,label`` rows; a row without exactly two fields has no label."""
    entries = []
    for n, text in lines:
        fields = [f.strip() for f in next(csv.reader(io.StringIO(text)))]
        label = fields[1] if len(fields) == 2 else ""
        entries.append(ListEntry(f"{path.name} line {n}", fields[0], label))
    return entries


def _ucf101(path: Path) -> list[ListEntry]:
    classes = _class_ind(path.parent / UCF101_CLASSES)
    entries = []
    for n, text in _lines(path):
        relpath, _, number = text.partition(" ")
        number = number.strip()
        label = classes.get(number, number) if number else PurePosixPath(relpath).parent.name
        entries.append(ListEntry(f"{path.name} line {n}", relpath, label))
    return entries


def _class_ind(path: Path) -> dict[str, str]:
    """UCF101's ``<number> <class>`` lines as {number: class}; an unknown number stays itself
    (an unknown label row)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a ucf101: list needs {UCF101_CLASSES} beside it")
    classes = {}
    for n, text in _lines(path):
        fields = text.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<number> <class>', got {text!r}")
        classes[fields[0]] = fields[1]
    return classes


def _hmdb51(rest: str) -> list[ListEntry]:
    parts = rest.split(":")
    half = parts[2] if len(parts) == 3 else "train"
    if len(parts) not in (2, 3) or not parts[1].isdigit() or half not in HMDB51_FLAGS:
        raise ValueError(f"expected hmdb51:DIR:N or hmdb51:DIR:N:test, got hmdb51:{rest}")
    folder, suffix = Path(parts[0]), f"_test_split{parts[1]}.txt"
    files = sorted(folder.glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"no HMDB51 split files *{suffix} in {folder}")
    entries = []
    for path in files:
        label = path.name[:-len(suffix)]
        for n, text in _lines(path):
            fields = text.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{n}: expected 'video.avi 0|1|2', got {text!r}")
            if fields[1] == HMDB51_FLAGS[half]:
                entries.append(ListEntry(f"{path.name} line {n}", f"{label}/{fields[0]}", label))
    return entries
