"""One shard, end to end in one worker: encode its videos, write, verify, mark done.

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
from pathlib import Path

from mindspore.mindrecord import FileReader, FileWriter

from datatools import schema
from datatools.manifest import LARGER_PAGE, STATUS_OK, ManifestRow, Reason, Settings, ShardFiles
from datatools.plan import ShardTask, VideoTask
from datatools.video import EncodedVideo, VideoError, encode_video

__all__ = ["ShardRows", "header_size", "sample_bytes", "convert_shard", "finished_rows",
           "clear_shard", "read_shard_ids"]

log = logging.getLogger(__name__)

MIN_HEADER, MAX_HEADER = 1 << 14, 1 << 27
HEADER_BYTES_PER_PAGE = 512                     # page metadata in the header, generous
SAMPLE_OVERHEAD = 1024                          # per-sample bytes besides frames and offsets
ORDER = "order"                                 # a marker row's CSV position, beside its columns

ShardRows = list[tuple[int, ManifestRow]]       # (CSV order, row) of a shard's videos


def _ok_row(task: VideoTask, shard: int, video: EncodedVideo) -> ManifestRow:
    return ManifestRow(task.video_id, task.label, task.label_name, task.source, shard,
                       status=STATUS_OK, num_frames=len(video.jpegs), fps=video.fps,
                       src_width=video.src_width, src_height=video.src_height, width=video.width,
                       height=video.height, bytes=sum(map(len, video.jpegs)))


def clear_shard(out_dir: str | Path, index: int) -> None:
    """Remove whatever a previous, unfinished attempt left of the shard."""
    for path in ShardFiles.of(out_dir, index).all():
        path.unlink(missing_ok=True)


def finished_rows(task: ShardTask) -> ShardRows | None:
    """The shard's rows if its marker says it is done for exactly these videos and settings
    and its record file is present; None if it must be (re)done."""
    files = ShardFiles.of(task.out_dir, task.index)
    if not files.done.is_file():
        return None
    done = json.loads(files.done.read_text())
    if done["settings"] != task.settings.to_dict():
        raise ValueError(f"{task.out_dir} holds shards converted with other settings "
                         f"({done['settings']} vs {task.settings.to_dict()}); use another --out "
                         f"or remove it")
    rows = [(stored.pop(ORDER), ManifestRow(**stored)) for stored in done["rows"]]
    if [row.video_id for _, row in rows] != [v.video_id for v in task.videos]:
        return None
    if any(row.ok for _, row in rows) and not (files.record.is_file() and files.db.is_file()):
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


def convert_shard(task: ShardTask) -> ShardRows:
    """Convert the shard's videos, write and verify its MindRecord file, then mark it done.

    Returns the shard's rows. Runs in a joblib worker: pure inputs, all output on disk.
    """
    clear_shard(task.out_dir, task.index)
    files = ShardFiles.of(task.out_dir, task.index)
    s = task.settings
    rows, spooled = [], []     # spooled: (sample without frames, spool offset, frame bytes)
    with open(files.spool, "wb") as spool:
        for v in task.videos:
            try:
                video = encode_video(v.source, s.short_side, s.quality, s.max_fps, task.decode_threads,
                                     max_bytes=s.page_size, chroma=s.chroma_subsampling)
            except VideoError as exc:
                rows.append((v.order, v.row(task.index, str(exc))))
                continue
            blob, offsets = schema.pack_frames(video.jpegs)
            size = sample_bytes(len(video.jpegs), len(blob))
            if size > s.page_size:
                reason = Reason.text(Reason.TOO_LARGE, f"{size} bytes exceed the page size "
                                                       f"{s.page_size}; {LARGER_PAGE}")
                rows.append((v.order, v.row(task.index, reason)))
                continue
            spooled.append(({schema.VIDEO_ID: v.video_id, schema.LABEL: v.label,
                             schema.NUM_FRAMES: len(video.jpegs), schema.HEIGHT: video.height,
                             schema.WIDTH: video.width, schema.OFFSETS: offsets,
                             schema.CHECKSUM: schema.sample_checksum(v.video_id, v.label, offsets, blob)},
                            spool.tell(), len(blob)))
            spool.write(blob)
            rows.append((v.order, _ok_row(v, task.index, video)))
    if spooled:
        _write_record(files, spooled, s)
    files.spool.unlink()
    _write_marker(files, {"settings": s.to_dict(),
                          "rows": [{ORDER: order, **row.to_dict()} for order, row in rows]})
    return rows


def _write_record(files: ShardFiles, spooled: list[tuple[dict, int, int]], s: Settings) -> None:
    """Write the spooled samples into one MindRecord file, commit, read back and compare."""
    page = s.page_size
    writer = FileWriter(str(files.record), shard_num=1, overwrite=False)
    writer.set_page_size(page)
    writer.set_header_size(header_size(page, s.videos_per_shard))
    writer.add_schema(schema.RECORD_SCHEMA, "stnet video clips")
    with open(files.spool, "rb") as spool:
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
    found = read_shard_ids(files.record)
    if Counter(found) != Counter(written):
        missing = sorted(set(written) - set(found))[:3]
        raise OSError(f"{files.record}: verification failed: wrote {len(written)} videos, "
                      f"read back {len(found)} (missing e.g. {missing})")


def _write_marker(files: ShardFiles, content: dict) -> None:
    """Flush the record to disk, then atomically create the done marker (temp file + rename)."""
    for path in (files.record, files.db):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    with open(files.done_tmp, "w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(files.done_tmp, files.done)
