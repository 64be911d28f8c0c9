"""Write the label file of a Kinetics CSV or a video list: ``<class name> <idx>`` lines, sorted.

The reference's generate_label.py wrote the same file; the trainer reads it with
``datatools.schema.read_labels``. A list's lines that cannot be converted (no label, a path
outside the video root) name no class.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

from datatools.cli import run_cli
from datatools.lists import LIST_FORMS, read_entries

__all__ = ["class_names", "write_labels", "main"]


def class_names(labels: Iterable[str]) -> list[str]:
    """Sorted unique class names; the index in this list is the class index."""
    names = sorted(set(labels))
    bad = [n for n in names if "\n" in n or "\r" in n or n != n.strip()]
    if bad:
        raise ValueError(f"class names must be one line without outer spaces, got {bad[:3]}")
    return names


def write_labels(names: list[str], path: str | Path) -> Path:
    """Write ``<name> <idx>`` lines; the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name} {i}\n" for i, name in enumerate(names)), encoding="utf-8")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datatools.labels", description=__doc__.split("\n")[0])
    p.add_argument("csv", type=Path, nargs="?",
                   help="Kinetics CSV (label,youtube_id,time_start,time_end,split); or give --list")
    p.add_argument("out", type=Path, help="label file to write, e.g. records/kinetics400/labels.txt")
    p.add_argument("--list", help=f"a labelled video list instead of the CSV: {LIST_FORMS}")
    return p


def main(args: argparse.Namespace) -> int:
    names = class_names(e.label for e in read_entries(args.csv, args.list) if not e.problem)
    if not names:
        raise ValueError(f"{args.csv or args.list}: no convertible entry, so no classes")
    write_labels(names, args.out)
    print(f"wrote {len(names)} classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
