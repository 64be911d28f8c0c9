"""Check a converted split: counts, failures, bytes per video/frame, every shard against the manifest.

Every stored video is read back and checked: its id and label against the manifest, its frames
against its offsets, its checksum (``datatools.schema.sample_checksum``), and with ``--decode``
every frame (each JPEG, each h264 GOP on its own: ``datatools.frames``); each shard file's sha256 against the manifest's. Each shard is read in a child
process, so a shard that kills MindRecord's reader is one finding, not the end of the run. Prints
one line per bad video or shard and exits non-zero on any. ``--sheet out.png`` draws a contact
sheet (a few frames of a few videos, one row per video) for a person to look at.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import numpy as np
from mindspore.mindrecord import FileReader

from datatools import schema
from datatools.cli import positive_int, run_cli
from datatools.frames import codec_of, stored_frames
from datatools.manifest import (FileDigest, ManifestRow, ShardFiles, read_digests, read_manifest,
                                read_settings, rows_of, shard_index)
from datatools.pages import disk_bytes
from datatools.verify import ShardCheck, ShardJob, check_shards

__all__ = ["SplitReport", "inspect_split", "failed_lines", "report_lines", "contact_sheet", "pick_videos", "row_label",
           "main"]

log = logging.getLogger(__name__)


@dataclass
class SplitReport:
    """What a split holds and everything wrong with it, one line per bad video or shard."""

    ok: int = 0
    failed: Counter = field(default_factory=Counter)
    frames: int = 0
    jpeg_bytes: int = 0             # the payload: JPEG frames as the manifest lists them
    allocated_bytes: int = 0        # of the shard files (records and .db) on disk
    apparent_bytes: int = 0         # ... as their sizes say: holes included (docs/design.md §8)
    by_resolution: dict = field(default_factory=dict)   # "WxH" -> (videos, frames, bytes)
    shards: int = 0
    failed_rows: list[ManifestRow] = field(default_factory=list)    # --failed lists them
    problems: list[str] = field(default_factory=list)
    bad_shards: set[int] = field(default_factory=set)
    split_problems: int = 0         # of the problems: the split's own (its label file), no shard's
    checked: list[str] = field(default_factory=list)     # what "verified" covers


def inspect_split(split_dir: str | Path, decode: bool = False, workers: int = 1) -> SplitReport:
    """Read the manifest and every shard (``workers`` at a time); check every video."""
    split_dir = Path(split_dir)
    report = SplitReport(checked=["ids", "labels", "checksums"])
    table = read_manifest(split_dir)
    expected = _tally(rows_of(table), report)
    digests = read_digests(table)
    codec = codec_of(read_settings(table))
    if digests:
        report.checked.append("digests")
    if decode:
        report.checked.append(stored_frames(codec).checked)
    labels = _labels_problem(split_dir)
    if labels:
        report.problems.append(labels)
        report.split_problems += 1
    else:
        report.checked.append("label file")
    present = _present_shards(split_dir, expected, report)
    jobs = [ShardJob(str(split_dir), shard, expected[shard], decode, codec) for shard in present]
    for job, check in zip(jobs, check_shards(jobs, workers)):
        for line in _shard_problems(ShardFiles.of(split_dir, job.index), job.labels, check, digests):
            _problem(report, job.index, line)
    return report


def _labels_problem(split_dir: Path) -> str:
    """A line if ``labels.txt`` beside the split is not the label file it was converted with
    (its labels would be read as other classes; the trainer refuses the same), else "". A split
    with no label file beside it has nothing to compare."""
    path = split_dir.parent / schema.LABELS_NAME
    return (schema.split_labels_problem(split_dir, path) or "") if path.is_file() else ""


def _present_shards(split_dir: Path, expected: dict[int, dict[str, int]],
                    report: SplitReport) -> list[int]:
    """The listed shards whose record is on disk (counting their bytes); a listed shard not on
    disk, or a shard on disk that is not listed, is a problem."""
    on_disk = {shard_index(p) for p in split_dir.iterdir()} - {None}
    for extra in sorted(on_disk - set(expected)):
        _problem(report, extra, f"{ShardFiles.of(split_dir, extra).record.name}: on disk but the "
                                f"manifest lists no ok video in it")
    present = []
    for shard, labels in sorted(expected.items()):
        files = ShardFiles.of(split_dir, shard)
        if not files.record.is_file():
            _problem(report, shard, f"{files.record.name}: missing, the manifest lists {len(labels)} videos")
            continue
        present.append(shard)
        allocated, apparent = disk_bytes((files.record, files.db))
        report.allocated_bytes += allocated
        report.apparent_bytes += apparent
    report.shards = len(present)
    return present


def _tally(rows: list[ManifestRow], report: SplitReport) -> dict[int, dict[str, int]]:
    """Count the manifest into the report; the label of each ok video by shard and id."""
    expected: dict[int, dict[str, int]] = defaultdict(dict)
    resolution: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        if not row.ok:
            report.failed[row.reason_kind] += 1
            report.failed_rows.append(row)
            continue
        report.ok += 1
        report.frames += row.num_frames
        report.jpeg_bytes += row.bytes
        expected[row.shard][row.video_id] = row.label
        stats = resolution[f"{row.src_width}x{row.src_height}"]
        stats[0], stats[1], stats[2] = stats[0] + 1, stats[1] + row.num_frames, stats[2] + row.bytes
    report.by_resolution = {k: tuple(v) for k, v in sorted(resolution.items())}
    return expected


def _problem(report: SplitReport, shard: int, line: str) -> None:
    report.problems.append(line)
    report.bad_shards.add(shard)


def _shard_problems(files: ShardFiles, labels: dict[str, int], check: ShardCheck,
                    digests: dict[str, FileDigest]) -> list[str]:
    """One line per bad video of the shard, then per file whose digest is not the manifest's;
    an unreadable shard is one line."""
    name = files.record.name
    if check.unreadable:
        return [f"{name}: unreadable ({check.unreadable})"]
    lines = []
    found, listed = Counter(check.ids), Counter(list(labels))
    if found != listed:
        lines.append(f"{name}: {sum(found.values())} videos, manifest says {len(labels)} (missing "
                     f"{sorted(listed - found)[:3]}, unexpected {sorted(found - listed)[:3]})")
    lines += [f"{name}: {problem}" for problem in check.problems]
    lines += [f"{file}: sha256 differs from the manifest's" for file, digest in check.digests.items()
              if file in digests and digests[file] != digest]
    return lines


def failed_lines(rows: list[ManifestRow], shown: int | None = None) -> list[str]:
    """The failed videos of ``rows``, one line each (id and reason: a missing file's names the
    paths tried), at most ``shown`` of them (None: all) and a line counting the rest."""
    failed = [r for r in rows if not r.ok]
    lines = ["failed videos:"] if failed else []
    lines += [f"  {r.video_id}: {r.reason}" for r in failed[:shown]]
    if shown is not None and len(failed) > shown:
        lines.append(f"  ... and {len(failed) - shown} more: datatools.inspect --failed lists them all")
    return lines


def report_lines(report: SplitReport) -> list[str]:
    failed = sum(report.failed.values())
    lines = [f"videos: {report.ok} ok, {failed} failed, in {report.shards} shards"]
    lines += [f"  failed {kind}: {n}" for kind, n in sorted(report.failed.items())]
    if report.ok:
        lines.append(f"bytes/video {report.jpeg_bytes / report.ok:.0f}, bytes/frame "
                     f"{report.jpeg_bytes / max(report.frames, 1):.0f}, frames/video "
                     f"{report.frames / report.ok:.1f}")
    lines += [f"  source {res}: {v} videos, {b / max(f, 1):.0f} bytes/frame"
              for res, (v, f, b) in report.by_resolution.items()]
    if report.shards:
        lines.append(f"shard files: {report.apparent_bytes / 1e6:.2f} MB apparent, "
                     f"{report.allocated_bytes / 1e6:.2f} MB allocated (apparent/allocated "
                     f"{report.apparent_bytes / max(report.allocated_bytes, 1):.3f}), "
                     f"{report.jpeg_bytes / 1e6:.2f} MB payload")
    lines += [f"BAD {p}" for p in report.problems]
    lines.append(f"verified: every shard matches the manifest ({', '.join(report.checked)})"
                 if not report.problems else f"FAILED: {_problem_count(report)}")
    return lines


def _problem_count(report: SplitReport) -> str:
    """``3 problem(s) in 2 shard(s)``, ``1 problem(s) with the label file``, or both."""
    in_shards = len(report.problems) - report.split_problems
    parts = [f"{in_shards} problem(s) in {len(report.bad_shards)} shard(s)"] if in_shards else []
    parts += [f"{report.split_problems} problem(s) with the label file"] if report.split_problems else []
    return ", ".join(parts)


def contact_sheet(split_dir: str | Path, out_png: str | Path, num_videos: int = 6,
                  num_frames: int = 8, skip: Collection[str] = ()) -> Path:
    """A PNG grid: one row per video (``pick_videos``: every class before any repeats),
    ``num_frames`` frames spread evenly over each, titled by ``row_label`` and frame index.
    Shards in ``skip`` (found bad: reading one may abort the process) are left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split_dir = Path(split_dir)
    names = _class_names(split_dir)
    table = read_manifest(split_dir)
    frames = stored_frames(codec_of(read_settings(table)))
    usable = [r for r in rows_of(table) if str(ShardFiles.of(split_dir, r.shard).record) not in skip]
    picked = pick_videos(usable, num_videos)
    if not picked:
        raise ValueError(f"{split_dir}: no converted video to draw")
    items = _read_items(split_dir, picked)
    fig, axes = plt.subplots(len(picked), num_frames, squeeze=False,
                             figsize=(1.8 * num_frames, 1.6 * len(picked)))
    for row, video in zip(axes, picked):
        item = items[video.video_id]
        offsets, count = item[schema.OFFSETS], int(item[schema.NUM_FRAMES])
        shown = np.linspace(0, count - 1, num_frames).round().astype(int).tolist()
        pictures = {index: image.copy() for index, _, image
                    in frames.decode(item[schema.FRAMES], offsets, sorted(set(shown)))}
        for col, (ax, index) in enumerate(zip(row, shown)):
            ax.imshow(pictures[index])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"frame {index}", fontsize=7)
            if col == 0:
                ax.set_ylabel(row_label(video, names), fontsize=7)
    fig.suptitle(f"{split_dir}: {len(picked)} videos, {num_frames} frames each", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def pick_videos(rows: list[ManifestRow], num_videos: int) -> list[ManifestRow]:
    """Ok videos round-robin over classes in class order (the first of each class in manifest
    order, then the second of each, ...), so a sheet shows as many classes as it has rows."""
    by_class: dict[int, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        if row.ok:
            by_class[row.label].append(row)
    queues = [by_class[label] for label in sorted(by_class)]
    depth = max(map(len, queues), default=0)
    return [q[i] for i in range(depth) for q in queues if i < len(q)][:num_videos]


def row_label(row: ManifestRow, names: dict[int, str]) -> str:
    """Class, video id and stored frame size: a sheet row says what it shows and at what size."""
    return f"{names.get(row.label, row.label)}\n{row.video_id}\n{row.width}x{row.height}"


def _read_items(split_dir: Path, rows: list[ManifestRow]) -> dict[str, dict]:
    """The stored samples of ``rows`` by video id, reading each of their shards once."""
    wanted: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        wanted[row.shard].add(row.video_id)
    items = {}
    for shard, ids in sorted(wanted.items()):
        reader = FileReader(str(ShardFiles.of(split_dir, shard).record), num_consumer=1)
        try:
            for item in reader.get_next():
                video_id = str(item[schema.VIDEO_ID])
                if video_id in ids:
                    items[video_id] = item
                    ids.discard(video_id)
                if not ids:
                    break
        finally:
            reader.close()
    return items


def _class_names(split_dir: Path) -> dict[int, str]:
    """Class names from ``labels.txt`` beside the split folder, if it is there."""
    path = split_dir.parent / schema.LABELS_NAME
    return dict(enumerate(schema.read_labels(path))) if path.is_file() else {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datatools.inspect", description=__doc__.split("\n")[0])
    p.add_argument("split", type=Path, help="converted split folder, e.g. records/demo/train")
    p.add_argument("--decode", action="store_true",
                   help="also decode every frame (a full decode of the split: slow on a large one)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="shards checked at once, each in its own process (default: one per CPU)")
    p.add_argument("--failed", action="store_true",
                   help="also list every failed video: its id and reason (a missing file's reason "
                        "names the paths tried)")
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG here")
    p.add_argument("--sheet-videos", type=positive_int, default=6)
    p.add_argument("--sheet-frames", type=positive_int, default=8)
    return p


def main(args: argparse.Namespace) -> int:
    report = inspect_split(args.split, args.decode, args.workers)
    if args.failed:
        print("\n".join(failed_lines(report.failed_rows)))
    print("\n".join(report_lines(report)))
    if args.sheet is not None:
        bad = {str(ShardFiles.of(args.split, shard).record) for shard in report.bad_shards}
        sheet = contact_sheet(args.split, args.sheet, args.sheet_videos, args.sheet_frames, skip=bad)
        print(f"contact sheet: {sheet}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
