"""Read a shard back and check every sample against what the manifest says it holds.

The converter checks each shard it wrote in its own worker (``check_samples``). ``datatools.inspect``
checks each shard in a short-lived child process (``check_shards``): MindRecord aborts the whole
process with a C++ assertion on some damaged headers, so a shard that kills its reader becomes
one finding about that shard instead of the end of the inspection.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Mapping

import numpy as np
import mindspore.dataset as ds

from datatools import schema
from datatools.frames import stored_frames
from datatools.manifest import JPEG, FileDigest, ShardFiles

__all__ = ["ShardJob", "ShardCheck", "check_samples", "check_shard", "check_shards"]

# A child per shard, forked from a server that imported MindRecord once (a spawned child would
# import MindSpore again, seconds per shard); forking the caller itself is unsafe once MindSpore
# has started its threads.
START_METHOD = "forkserver"


@dataclass(frozen=True)
class ShardJob:
    """One shard to check: its files, the manifest's label per video id it should hold, and
    whether to decode every frame of ``codec`` (slow: a full decode of the split)."""

    split_dir: str
    index: int
    labels: dict[str, int]
    decode: bool = False
    codec: str = JPEG


@dataclass
class ShardCheck:
    """What reading one shard found; ``unreadable`` says why it could not be read ("" if it could)."""

    ids: list[str] = field(default_factory=list)        # video ids in file order
    problems: list[str] = field(default_factory=list)   # "<video_id>: <problem>; <problem>"
    digests: dict[str, FileDigest] = field(default_factory=dict)   # by file name
    unreadable: str = ""


def check_samples(path: str | Path, labels: Mapping[str, int], decode: bool = False,
                  codec: str = JPEG) -> tuple[list[str], list[str]]:
    """(video ids, problems) of the shard at ``path``, one problem line per bad video.

    Read with MindDataset, as the trainer reads it: MindRecord's Python ``FileReader`` turns each
    blob into a Python list first, ~30 ms a 2 MB video against ~2 ms. Raises what MindRecord
    raises (RuntimeError) for a file it cannot read.
    """
    rows = ds.MindDataset([str(path)], shuffle=False, num_parallel_workers=1)
    ids, problems = [], []
    for item in rows.create_dict_iterator(num_epochs=1, output_numpy=True):
        video_id = str(item[schema.VIDEO_ID])
        ids.append(video_id)
        found = sample_problems(item, labels.get(video_id), decode, codec)
        if found:
            problems.append(f"{video_id}: {'; '.join(found)}")
    return ids, problems


def sample_problems(item: dict, label: int | None, decode: bool, codec: str = JPEG) -> list[str]:
    """Everything wrong with one stored video: label against the manifest's (None: not listed),
    frames against offsets, the checksum, and with ``decode`` every frame of ``codec`` (each
    JPEG; each h264 GOP on its own: ``datatools.frames``)."""
    video_id, stored = str(item[schema.VIDEO_ID]), int(item[schema.LABEL])
    blob, offsets = np.frombuffer(item[schema.FRAMES], np.uint8), np.asarray(item[schema.OFFSETS])
    found = []
    if label is not None and stored != label:
        found.append(f"label {stored} in the shard, {label} in the manifest")
    if not _offsets_fit(offsets, int(item[schema.NUM_FRAMES]), len(blob)):
        return found + ["frames and offsets disagree"]
    if schema.sample_checksum(video_id, stored, offsets, blob) != int(item[schema.CHECKSUM]):
        found.append("checksum mismatch")
    if decode:
        found += stored_frames(codec).problems(blob, offsets, int(item[schema.HEIGHT]),
                                               int(item[schema.WIDTH]))
    return found


def _offsets_fit(offsets: np.ndarray, num_frames: int, blob_size: int) -> bool:
    """num_frames + 1 rising offsets from 0 to the end of the blob."""
    return (len(offsets) == num_frames + 1 > 1 and offsets[0] == 0 and offsets[-1] == blob_size
            and bool(np.all(np.diff(offsets) > 0)))


def check_shard(job: ShardJob) -> ShardCheck:
    """Digest the shard's files and check its samples, in this process."""
    files = ShardFiles.of(job.split_dir, job.index)
    try:
        digests = {p.name: FileDigest.of(p) for p in (files.record, files.db) if p.is_file()}
        ids, problems = check_samples(files.record, job.labels, job.decode, job.codec)
    except Exception as exc:   # in a checking child, any failure is a finding about the shard
        return ShardCheck(unreadable=_one_line(exc))
    return ShardCheck(ids, problems, digests)


def _one_line(exc: BaseException) -> str:
    """MindRecord's own message line ("[ERROR] Invalid file, ...") instead of its banner."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    error = next((line for line in lines if line.startswith("[ERROR]")), lines[0] if lines else "")
    return error.removeprefix("[ERROR]").strip() or type(exc).__name__


def check_shards(jobs: list[ShardJob], workers: int) -> list[ShardCheck]:
    """``check_shard`` of each job (in order), each in its own short-lived child process, up to
    ``workers`` at a time; a child that dies is reported as the shard being unreadable."""
    context = multiprocessing.get_context(START_METHOD)
    context.set_forkserver_preload([__name__])
    results: dict[int, ShardCheck] = {}
    pending = list(enumerate(jobs))
    running: dict[Connection, tuple[int, multiprocessing.process.BaseProcess]] = {}
    while pending or running:
        while pending and len(running) < workers:
            position, job = pending.pop(0)
            reader, writer = context.Pipe(duplex=False)
            child = context.Process(target=_child, args=(writer, job), daemon=True)
            child.start()
            writer.close()
            running[reader] = (position, child)
        for reader in wait(list(running)):
            position, child = running.pop(reader)
            results[position] = _collect(reader, child)
    return [results[i] for i in range(len(jobs))]


def _child(writer: Connection, job: ShardJob) -> None:
    """Child body: send the check back. Its stderr goes to /dev/null: an abort's C++ assertion
    text would only repeat the finding the parent reports."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    writer.send(check_shard(job))
    writer.close()


def _collect(reader: Connection, child: multiprocessing.process.BaseProcess) -> ShardCheck:
    """The child's check, or the shard unreadable with how its reader died."""
    try:
        check = reader.recv()
    except EOFError:
        check = None
    reader.close()
    child.join()
    if check is not None:
        return check
    code = child.exitcode or 0
    how = (f"the MindRecord reader aborted: {signal.Signals(-code).name}" if code < 0
           else f"the reader exited with code {code}")
    return ShardCheck(unreadable=how)
