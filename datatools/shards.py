"""One shard, end to end in one worker: encode its videos, write, verify, digest, mark done.

A shard is *done* only when its MindRecord file is committed, read back and matched against what
was written (ids, labels, each sample's checksum: MindRecord drops bad rows with only a warning),
and its ``DoneMarker`` (rows, settings, label file digest, the sha256 of its files) has been
atomically put beside it. Anything of a shard without a marker is partial: the worker removes it
when the shard fails, and a re-run removes it before redoing the shard.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import shutil
import traceback
from enum import Enum, auto
from pathlib import Path
from typing import BinaryIO

from mindspore.mindrecord import FileWriter

from datatools import schema
from datatools.manifest import (LARGER_PAGE, STATUS_OK, DoneMarker, FileDigest, ManifestRow, Reason,
                                Settings, ShardFiles, source_stamp)
from datatools.pages import header_size, sample_bytes, write_calls
from datatools.plan import ShardTask, VideoTask
from datatools.verify import check_samples
from datatools.video import EncodedVideo, encode_or_reason

__all__ = ["ShardRows", "NoSpaceError", "Verdict", "convert_shard", "no_space_error", "shard_verdict",
           "clear_shard"]

log = logging.getLogger(__name__)

RESUMES = "the run resumes where it stopped"
# MindRecord's writer refuses to write while the disk has less than 10 MiB free ("No free disk to be
# used while writing mindrecord files, available free disk size: 9", in whole MiB).
MINDRECORD_MIN_FREE = 10 << 20

ShardRows = list[tuple[int, ManifestRow]]       # (CSV order, row) of a shard's videos


class NoSpaceError(OSError):
    """The output filesystem (or this process's file size limit) is full; finished shards are
    kept, so the same command resumes once there is room."""


class Verdict(Enum):
    """What a re-run does with a planned shard."""

    KEEP = auto()
    NEW = auto()            # no usable marker, or a marker for other videos: (re)done
    DAMAGED = auto()        # a file is missing or not the one verified: redone
    RETRY = auto()          # a retryable failure's source changed: redone


def _ok_row(task: VideoTask, shard: int, video: EncodedVideo) -> ManifestRow:
    return ManifestRow(task.video_id, task.label, task.label_name, task.source, shard,
                       status=STATUS_OK, num_frames=len(video.frames), fps=video.fps,
                       src_width=video.src_width, src_height=video.src_height, width=video.width,
                       height=video.height, bytes=sum(map(len, video.frames)))


def clear_shard(out_dir: str | Path, index: int) -> None:
    """Remove whatever a previous, unfinished attempt left of the shard."""
    for path in ShardFiles.of(out_dir, index).all():
        path.unlink(missing_ok=True)


def shard_verdict(task: ShardTask, marker: DoneMarker | None) -> tuple[Verdict, list[str]]:
    """Keep, do or redo a planned shard, and the ids of the videos a redo retries.

    A kept shard is checked against its marker: sizes, then the sha256 of its files. That reads
    each kept shard once, sequentially (~1 GB/s here), a few percent of converting it again
    (decoding and JPEG-encoding every frame of its videos: tens of seconds for 64 videos), and it
    is what tells a shard from one changed on disk since. A shard is retried when a video failed
    for a reason that can change (``Reason.RETRYABLE``) and its source file changed since
    (another size or mtime, or a file where there was none); unchanged failures are not retried,
    so a re-run over a split with a few broken downloads redoes nothing.
    """
    if marker is None or [row.video_id for _, row in marker.rows] != [v.video_id for v in task.videos]:
        return Verdict.NEW, []
    damaged = _damaged_file(task, marker)
    if damaged is not None:
        log.warning("%s is missing or differs from the file verified when it was converted: "
                    "redoing shard %d", damaged, task.index)
        return Verdict.DAMAGED, []
    retry = _changed_sources(task, marker)
    return (Verdict.RETRY if retry else Verdict.KEEP), retry


def _damaged_file(task: ShardTask, marker: DoneMarker) -> Path | None:
    """The first of the shard's files that is missing or not the one its marker describes."""
    if not any(row.ok for _, row in marker.rows):
        return None                         # no video stored, no record file
    files = ShardFiles.of(task.out_dir, task.index)
    for path in (files.record, files.db):
        digest = marker.files.get(path.name)
        if digest is None or not path.is_file() or path.stat().st_size != digest.size \
                or FileDigest.of(path) != digest:
            return path
    return None


def _changed_sources(task: ShardTask, marker: DoneMarker) -> list[str]:
    """Ids of the shard's retryable failures whose source file changed since they failed."""
    planned = {v.video_id: v.source for v in task.videos}
    return [row.video_id for _, row in marker.rows
            if row.retryable and marker.sources.get(row.video_id) != source_stamp(planned[row.video_id])]


def convert_shard(task: ShardTask) -> ShardRows:
    """Convert the shard's videos, write and verify its MindRecord file, then mark it done.

    Returns the shard's rows. Runs in a joblib worker: pure inputs, all output on disk. Whatever
    stops it removes the shard's files; a full disk is raised as NoSpaceError.
    """
    files = ShardFiles.of(task.out_dir, task.index)
    clear_shard(task.out_dir, task.index)
    try:
        return _convert(task, files)
    except BaseException as exc:
        # MindRecord closes a file only when its writer is freed: drop the failed frames' locals,
        # or the removed file would keep its disk space for as long as the traceback lives.
        traceback.clear_frames(exc.__traceback__)
        full = no_space_error(exc, files.record, task.settings.page_size)   # before freeing any
        clear_shard(task.out_dir, task.index)
        if full is not None:
            raise full from exc
        raise


def no_space_error(exc: BaseException, path: Path, page_size: int) -> NoSpaceError | None:
    """The one-line NoSpaceError naming ``path`` if ``exc`` comes from a full disk, else None.

    MindRecord's writer reports a full disk as a RuntimeError without errno ("No free disk...",
    "Failed to write file", SQLite's "database or disk is full"): for errors without errno the
    free space decides. MindRecord refuses to write below MINDRECORD_MIN_FREE, and a write stopped
    by a full disk leaves less than two pages more than that. It reports the file size limit
    (EFBIG, "Failed to seekp file") without errno too: a write it stopped leaves ``path`` within
    two pages of the limit.
    """
    code = getattr(exc, "errno", None)
    errorless = code is None and isinstance(exc, (OSError, RuntimeError))
    too_large = code == errno.EFBIG and isinstance(exc, OSError)
    if too_large or (errorless and _near_size_limit(path, page_size)):
        return NoSpaceError(f"file too large for this process or filesystem writing {path}: raise "
                            f"the file size limit (ulimit -f) or use another --out; {RESUMES}")
    full = code in (errno.ENOSPC, errno.EDQUOT) or (
        errorless and shutil.disk_usage(path.parent).free < MINDRECORD_MIN_FREE + 2 * page_size)
    return NoSpaceError(f"no space left on device writing {path}: free space or use another --out; "
                        f"{RESUMES}") if full else None


def _near_size_limit(path: Path, page_size: int) -> bool:
    """Whether ``path`` ends within two pages of this process's file size limit (``ulimit -f``)."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return False
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return size + 2 * page_size > limit


def _convert(task: ShardTask, files: ShardFiles) -> ShardRows:
    """convert_shard's work: spool the encoded frames, write the record, mark the shard done."""
    s = task.settings
    rows, spooled, sources = [], [], {}   # spooled: (sample without frames, spool offset, frame bytes)
    with open(files.spool, "wb") as spool:
        for v in task.videos:
            stamp = source_stamp(v.source)          # before decoding: a later change is a change
            video = (encode_or_reason(v.source, s, task.decode_threads, max_bytes=s.page_size)
                     if v.source else Reason.text(Reason.MISSING, f"tried {v.tried}"))
            if isinstance(video, str):
                rows.append((v.order, v.row(task.index, video)))
                if rows[-1][1].retryable:
                    sources[v.video_id] = stamp
                continue
            blob, offsets = schema.pack_frames(video.frames)
            size = sample_bytes(len(video.frames), len(blob))
            if size > s.page_size:
                reason = Reason.text(Reason.TOO_LARGE, f"{size} bytes exceed the page size "
                                                       f"{s.page_size}; {LARGER_PAGE}")
                rows.append((v.order, v.row(task.index, reason)))
                continue
            spooled.append(({schema.VIDEO_ID: v.video_id, schema.LABEL: v.label,
                             schema.NUM_FRAMES: len(video.frames), schema.HEIGHT: video.height,
                             schema.WIDTH: video.width, schema.OFFSETS: offsets,
                             schema.CHECKSUM: schema.sample_checksum(v.video_id, v.label, offsets, blob)},
                            spool.tell(), len(blob)))
            spool.write(blob)
            rows.append((v.order, _ok_row(v, task.index, video)))
    digests = _write_record(files, spooled, s) if spooled else {}
    files.spool.unlink()
    DoneMarker(s, task.labels_sha256, tuple(rows), digests, sources, task.input).write(files)
    return rows


def _write_record(files: ShardFiles, spooled: list[tuple[dict, int, int]],
                  s: Settings) -> dict[str, FileDigest]:
    """Write the spooled samples into one MindRecord file, commit, read back and compare; the
    digests of the record and its .db as verified."""
    writer = FileWriter(str(files.record), shard_num=1, overwrite=False)
    writer.set_page_size(s.page_size)
    writer.set_header_size(header_size(s.page_size, s.videos_per_shard))
    writer.add_schema(schema.RECORD_SCHEMA, "stnet video clips")
    _write_samples(writer, files.spool, spooled, s.page_size)
    writer.commit()
    written = {sample[schema.VIDEO_ID]: sample[schema.LABEL] for sample, _, _ in spooled}
    found, problems = check_samples(files.record, written)
    if sorted(found) != sorted(written) or problems:
        missing = sorted(set(written) - set(found))[:3]
        raise OSError(f"{files.record}: verification failed: wrote {len(written)} videos, read back "
                      f"{len(found)} (missing e.g. {missing}; {len(problems)} damaged, e.g. "
                      f"{problems[:1]})")
    return _synced_digests(files)


def _write_samples(writer: FileWriter, spool_path: Path, spooled: list[tuple[dict, int, int]],
                   page: int) -> None:
    """Add the spooled samples with their frames in the calls and order of ``write_calls``: pages
    filled, and the raw page last unless the shard is too big to hold at once (datatools/pages.py)."""
    sizes = [sample_bytes(sample[schema.NUM_FRAMES], n) for sample, _, n in spooled]
    with open(spool_path, "rb") as spool:
        for call in write_calls(sizes, page):
            writer.write_raw_data([{**spooled[i][0], schema.FRAMES: _read(spool, *spooled[i][1:])}
                                   for i in call])


def _read(spool: BinaryIO, offset: int, size: int) -> bytes:
    spool.seek(offset)
    return spool.read(size)


def _synced_digests(files: ShardFiles) -> dict[str, FileDigest]:
    """Flush the record and its .db to disk, then digest them as they will be kept."""
    digests = {}
    for path in (files.record, files.db):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        digests[path.name] = FileDigest.of(path)
    return digests
