"""Check a converted split: counts, failures, bytes per video/frame, every shard against the manifest.

Exits non-zero if any shard differs from what the manifest says it holds. ``--sheet out.png``
draws a contact sheet (a few frames of a few videos, one row per video) for a person to look at.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simplejpeg
from mindspore.mindrecord import FileReader

from datatools import schema
from datatools.cli import positive_int, run_cli
from datatools.manifest import ShardFiles, ok_shard_paths, read_rows, shard_index
from datatools.shards import read_shard_ids

__all__ = ["SplitReport", "inspect_split", "report_lines", "contact_sheet", "main"]

log = logging.getLogger(__name__)


@dataclass
class SplitReport:
    """What a split holds and every disagreement between shards and manifest."""

    ok: int = 0
    failed: Counter = field(default_factory=Counter)
    frames: int = 0
    jpeg_bytes: int = 0
    disk_bytes: int = 0
    by_resolution: dict = field(default_factory=dict)   # "WxH" -> (videos, frames, bytes)
    shards: int = 0
    mismatches: list[str] = field(default_factory=list)


def inspect_split(split_dir: str | Path) -> SplitReport:
    """Read the manifest and every shard; compare ids per shard (counts included)."""
    split_dir = Path(split_dir)
    report = SplitReport()
    expected: dict[int, Counter] = defaultdict(Counter)
    resolution: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in read_rows(split_dir):
        if not row.ok:
            report.failed[row.reason_kind] += 1
            continue
        report.ok += 1
        report.frames += row.num_frames
        report.jpeg_bytes += row.bytes
        expected[row.shard][row.video_id] += 1
        stats = resolution[f"{row.src_width}x{row.src_height}"]
        stats[0], stats[1], stats[2] = stats[0] + 1, stats[1] + row.num_frames, stats[2] + row.bytes
    report.by_resolution = {k: tuple(v) for k, v in sorted(resolution.items())}
    on_disk = {shard_index(p) for p in split_dir.iterdir()} - {None}
    for extra in sorted(on_disk - set(expected)):
        report.mismatches.append(f"{ShardFiles.of(split_dir, extra).record.name}: on disk but the "
                                 f"manifest lists no ok video in it")
    for shard, ids in sorted(expected.items()):
        files = ShardFiles.of(split_dir, shard)
        path = files.record
        if not path.is_file():
            report.mismatches.append(f"{path.name}: missing, the manifest lists {sum(ids.values())} videos")
            continue
        report.shards += 1
        report.disk_bytes += sum(p.stat().st_blocks * 512 for p in (files.record, files.db) if p.is_file())
        try:
            found = Counter(read_shard_ids(path))
        except (OSError, RuntimeError) as exc:
            report.mismatches.append(f"{path.name}: unreadable: {' '.join(str(exc).split())[:200]}")
            continue
        if found != ids:
            missing, extra = ids - found, found - ids
            report.mismatches.append(f"{path.name}: {sum(found.values())} videos, manifest says "
                                     f"{sum(ids.values())} (missing {sorted(missing)[:3]}, "
                                     f"unexpected {sorted(extra)[:3]})")
    return report


def report_lines(report: SplitReport) -> list[str]:
    failed = sum(report.failed.values())
    lines = [f"videos: {report.ok} ok, {failed} failed, in {report.shards} shards"]
    lines += [f"  failed {kind}: {n}" for kind, n in sorted(report.failed.items())]
    if report.ok:
        lines.append(f"bytes/video {report.jpeg_bytes / report.ok:.0f}, bytes/frame "
                     f"{report.jpeg_bytes / max(report.frames, 1):.0f}, frames/video "
                     f"{report.frames / report.ok:.1f}, on disk {report.disk_bytes / 1e6:.2f} MB")
    lines += [f"  source {res}: {v} videos, {b / max(f, 1):.0f} bytes/frame"
              for res, (v, f, b) in report.by_resolution.items()]
    lines += [f"MISMATCH {m}" for m in report.mismatches]
    lines.append("verified: every shard matches the manifest" if not report.mismatches
                 else f"FAILED: {len(report.mismatches)} shard(s) differ from the manifest")
    return lines


def contact_sheet(split_dir: str | Path, out_png: str | Path, num_videos: int = 6,
                  num_frames: int = 8) -> Path:
    """A PNG grid: one row per video (one per class first, in shard order, then repeats),
    ``num_frames`` frames spread evenly over each, titled with video id, class and frame index."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split_dir = Path(split_dir)
    names = _class_names(split_dir)
    picked, spare = [], []
    for path in ok_shard_paths(split_dir):
        reader = FileReader(path, num_consumer=1)
        try:
            for item in reader.get_next():
                if int(item[schema.LABEL]) not in {int(p[schema.LABEL]) for p in picked}:
                    picked.append(item)
                elif len(spare) < num_videos:
                    spare.append(item)
                if len(picked) == num_videos:
                    break
        finally:
            reader.close()
        if len(picked) == num_videos:
            break
    picked += spare[:num_videos - len(picked)]
    if not picked:
        raise ValueError(f"{split_dir}: no converted video to draw")
    fig, axes = plt.subplots(len(picked), num_frames, squeeze=False,
                             figsize=(1.8 * num_frames, 1.6 * len(picked)))
    for row, item in zip(axes, picked):
        offsets, count = item[schema.OFFSETS], int(item[schema.NUM_FRAMES])
        label = int(item[schema.LABEL])
        for col, (ax, index) in enumerate(zip(row, np.linspace(0, count - 1, num_frames).round().astype(int))):
            frame = simplejpeg.decode_jpeg(bytes(schema.frame_bytes(item[schema.FRAMES], offsets, index)))
            ax.imshow(frame)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"frame {index}", fontsize=7)
            if col == 0:
                ax.set_ylabel(f"{names.get(label, label)}\n{item[schema.VIDEO_ID]}", fontsize=7)
    fig.suptitle(f"{split_dir}: {len(picked)} videos, {num_frames} frames each", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _class_names(split_dir: Path) -> dict[int, str]:
    """Class names from ``labels.txt`` beside the split folder, if it is there."""
    path = split_dir.parent / schema.LABELS_NAME
    return dict(enumerate(schema.read_labels(path))) if path.is_file() else {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datatools.inspect", description=__doc__.split("\n")[0])
    p.add_argument("split", type=Path, help="converted split folder, e.g. records/demo/train")
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG here")
    p.add_argument("--sheet-videos", type=positive_int, default=6)
    p.add_argument("--sheet-frames", type=positive_int, default=8)
    return p


def main(args: argparse.Namespace) -> int:
    report = inspect_split(args.split)
    print("\n".join(report_lines(report)))
    if args.sheet is not None:
        print(f"contact sheet: {contact_sheet(args.split, args.sheet, args.sheet_videos, args.sheet_frames)}")
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
