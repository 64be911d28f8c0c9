"""Shards: deterministic assignment, one worker task per shard, verification and done markers.

A shard is *done* only when its MindRecord file is committed, read back and matched against what
was written (MindRecord drops bad rows with only a warning), and its marker
``shard-NNNNN.done.json`` (the shard's manifest rows and the settings) has been atomically put
beside it. Anything of a shard without a marker is partial and is removed before the shard is redone.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from mindspore.mindrecord import FileReader, FileWriter

from datatools import schema
from datatools.video import EncodedVideo, VideoError, encode_video

__all__ = ["Settings", "VideoTask", "ShardTask", "assign_shards", "manifest_row", "header_size",
           "sample_bytes",
           "convert_shard", "finished_rows", "clear_shard", "read_shard_ids", "shard_paths"]

log = logging.getLogger(__name__)

MIN_PAGE, MAX_PAGE = 1 << 15, 1 << 28         # MindRecord's limits; sizes must be powers of two
DEFAULT_PAGE = 1 << 25                          # 32 MiB: a 10 s clip at short side 256 fits easily
MIN_HEADER, MAX_HEADER = 1 << 14, 1 << 27
HEADER_BYTES_PER_PAGE = 512                     # page metadata in the header, generous
SAMPLE_OVERHEAD = 1024                          # per-sample bytes besides frames and offsets


@dataclass(frozen=True)
class Settings:
    """Conversion settings that change the stored bytes; a resumed run must use the same ones."""

    short_side: int
    quality: int
    max_fps: float | None
    videos_per_shard: int
    seed: int
    chroma_subsampling: str = "420"
    # MindDataset refuses to read shards whose page or header sizes differ, so both are fixed for
    # the whole split (header_size derives from page_size and videos_per_shard). A video must fit
    # in one page; pages hold several videos, so little is lost at page ends when it is a few
    # times the typical video.
    page_size: int = DEFAULT_PAGE


@dataclass(frozen=True)
class VideoTask:
    """One CSV entry to convert; ``order`` is its position in the CSV (manifest row order)."""

    order: int
    video_id: str
    label: int
    label_name: str
    source: str


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs to own shard ``index`` end to end (no frame data)."""

    index: int
    out_dir: str
    videos: tuple[VideoTask, ...]
    settings: Settings
    decode_threads: int = 0


def assign_shards(labels: Sequence[int], videos_per_shard: int, seed: int) -> list[int]:
    """Shard index per entry, from the entry order and ``seed`` only.

    Entries are grouped by label, shuffled within each label by ``seed``, then dealt round-robin
    over ``ceil(n / videos_per_shard)`` shards, so every shard gets a similar class mix.
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    n = len(labels)
    num_shards = max(1, math.ceil(n / videos_per_shard))
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(n)
    dealt = sorted(range(n), key=lambda i: (labels[i], tiebreak[i]))
    shards = [0] * n
    for position, i in enumerate(dealt):
        shards[i] = position % num_shards
    return shards


def manifest_row(task: VideoTask, shard: int, reason: str = "",
                 video: EncodedVideo | None = None) -> dict:
    """A manifest row (MANIFEST_SCHEMA columns plus ``order``): ok if ``video`` is given."""
    ok = video is not None
    return {
        "order": task.order, "video_id": task.video_id, "label": task.label,
        "label_name": task.label_name, "source": task.source, "shard": shard,
        "status": schema.STATUS_OK if ok else schema.STATUS_FAILED, "reason": reason,
        "num_frames": len(video.jpegs) if ok else 0, "fps": video.fps if ok else 0.0,
        "src_width": video.src_width if ok else 0, "src_height": video.src_height if ok else 0,
        "width": video.width if ok else 0, "height": video.height if ok else 0,
        "bytes": sum(map(len, video.jpegs)) if ok else 0,
    }


def shard_paths(out_dir: str | Path, index: int) -> dict[str, Path]:
    """Every file shard ``index`` may own: the record and its index, spool, marker."""
    record = Path(out_dir) / schema.shard_name(index)
    return {"record": record, "db": record.with_name(record.name + ".db"),
            "spool": record.with_suffix(".spool"), "done": record.with_suffix(".done.json"),
            "done_tmp": record.with_suffix(".done.tmp")}


def clear_shard(out_dir: str | Path, index: int) -> None:
    """Remove whatever a previous, unfinished attempt left of the shard."""
    for path in shard_paths(out_dir, index).values():
        path.unlink(missing_ok=True)


def finished_rows(task: ShardTask) -> list[dict] | None:
    """The shard's manifest rows if its marker says it is done for exactly these videos and
    settings and its record file is present; None if it must be (re)done."""
    paths = shard_paths(task.out_dir, task.index)
    if not paths["done"].is_file():
        return None
    done = json.loads(paths["done"].read_text())
    if done["settings"] != asdict(task.settings):
        raise ValueError(f"{task.out_dir} holds shards converted with other settings "
                         f"({done['settings']} vs {asdict(task.settings)}); use another --out "
                         f"or remove it")
    rows = done["rows"]
    if [r["video_id"] for r in rows] != [v.video_id for v in task.videos]:
        return None
    has_ok = any(r["status"] == schema.STATUS_OK for r in rows)
    if has_ok and not (paths["record"].is_file() and paths["db"].is_file()):
        return None
    return rows


def header_size(page_size: int, videos_per_shard: int) -> int:
    """Header bytes for the most pages a shard can take (one per video, plus the scalar fields)."""
    pages = videos_per_shard + 2
    return min(1 << math.ceil(math.log2(MIN_HEADER + pages * HEADER_BYTES_PER_PAGE)), MAX_HEADER)


def sample_bytes(num_frames: int, frame_bytes: int) -> int:
    """Bytes one video's sample takes in a page."""
    return frame_bytes + 8 * (num_frames + 1) + SAMPLE_OVERHEAD


def read_shard_ids(path: str | Path) -> list[str]:
    """Video ids in a MindRecord shard, checking each sample's frames against its offsets."""
    reader = FileReader(str(path), num_consumer=1,
                        columns=[schema.VIDEO_ID, schema.NUM_FRAMES, schema.OFFSETS, schema.FRAMES])
    ids = []
    try:
        for item in reader.get_next():
            offsets = item[schema.OFFSETS]
            if len(offsets) != int(item[schema.NUM_FRAMES]) + 1 or \
                    len(item[schema.FRAMES]) != int(offsets[-1]):
                raise OSError(f"{path}: sample {item[schema.VIDEO_ID]} has inconsistent frames/offsets")
            ids.append(str(item[schema.VIDEO_ID]))
    finally:
        reader.close()
    return ids


def convert_shard(task: ShardTask) -> list[dict]:
    """Convert the shard's videos, write and verify its MindRecord file, then mark it done.

    Returns the shard's manifest rows. Runs in a joblib worker: pure inputs, all output on disk.
    """
    clear_shard(task.out_dir, task.index)
    paths = shard_paths(task.out_dir, task.index)
    s = task.settings
    rows, spooled = [], []     # spooled: (sample without frames, spool offset, frame bytes)
    with open(paths["spool"], "wb") as spool:
        for v in task.videos:
            try:
                video = encode_video(v.source, s.short_side, s.quality, s.max_fps, task.decode_threads)
            except VideoError as exc:
                rows.append(manifest_row(v, task.index, str(exc)))
                continue
            blob, offsets = schema.pack_frames(video.jpegs)
            size = sample_bytes(len(video.jpegs), len(blob))
            if size > s.page_size:
                rows.append(manifest_row(v, task.index, f"too large: {size} bytes exceed the page "
                                         f"size {s.page_size}; convert with a larger --page-mb"))
                continue
            spooled.append(({schema.VIDEO_ID: v.video_id, schema.LABEL: v.label,
                             schema.NUM_FRAMES: len(video.jpegs), schema.HEIGHT: video.height,
                             schema.WIDTH: video.width, schema.OFFSETS: offsets},
                            spool.tell(), len(blob)))
            spool.write(blob)
            rows.append(manifest_row(v, task.index, video=video))
    if spooled:
        _write_record(paths, spooled, s)
    paths["spool"].unlink()
    _write_marker(paths, {"settings": asdict(s), "rows": rows})
    return rows


def _write_record(paths: dict[str, Path], spooled: list[tuple[dict, int, int]], s: Settings) -> None:
    """Write the spooled samples into one MindRecord file, commit, read back and compare."""
    page = s.page_size
    writer = FileWriter(str(paths["record"]), shard_num=1, overwrite=False)
    writer.set_page_size(page)
    writer.set_header_size(header_size(page, s.videos_per_shard))
    writer.add_schema(schema.RECORD_SCHEMA, "stnet video clips")
    with open(paths["spool"], "rb") as spool:
        batch, batch_bytes = [], 0
        for sample, offset, n in spooled:
            spool.seek(offset)
            batch.append({**sample, schema.FRAMES: spool.read(n)})
            batch_bytes += n
            if batch_bytes >= page:
                writer.write_raw_data(batch)
                batch, batch_bytes = [], 0
        if batch:
            writer.write_raw_data(batch)
    writer.commit()
    written = [sample[schema.VIDEO_ID] for sample, _, _ in spooled]
    found = read_shard_ids(paths["record"])
    if Counter(found) != Counter(written):
        missing = sorted(set(written) - set(found))[:3]
        raise OSError(f"{paths['record']}: verification failed: wrote {len(written)} videos, "
                      f"read back {len(found)} (missing e.g. {missing})")


def _write_marker(paths: dict[str, Path], content: dict) -> None:
    """Flush the record to disk, then atomically create the done marker (temp file + rename)."""
    for key in ("record", "db"):
        if paths[key].is_file():
            with open(paths[key], "rb") as f:
                os.fsync(f.fileno())
    with open(paths["done_tmp"], "w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(paths["done_tmp"], paths["done"])
