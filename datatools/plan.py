"""Which video goes to which shard: a pure function of the CSV (or list), the labels and the seed.

Planning reads no video and writes nothing, so a resumed run plans the same shards, and rows
that can fail before decoding (a list line's own problem, unknown label, duplicate id) are known
up front. Then ``settle_page`` settles an ``auto`` page size, from the shards already done or by
encoding a few of the planned videos.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Protocol, Sequence

import numpy as np

from datatools.manifest import (AUTO_PAGE, MB, NO_SHARD, DoneMarker, InputId, ManifestRow, Reason,
                                Settings)
from datatools.pages import AUTO_PAGES, PageRange, choose_page, sample_bytes
from datatools.video import encode_or_reason

__all__ = ["Entry", "VideoTask", "ShardTask", "outside_videos", "assign_shards", "plan_shards",
           "settle_page"]

log = logging.getLogger(__name__)

PROBE_VIDEOS = 4        # videos encoded to choose an auto page size: seconds, a few % of a shard


class Entry(Protocol):
    """One video to convert: a Kinetics CSV row (``datatools.kinetics.CsvEntry``) or a video
    list line (``datatools.lists.ListEntry``); each knows where its file is."""

    @property
    def label(self) -> str: ...
    @property
    def video_id(self) -> str: ...
    @property
    def where(self) -> str: ...             # "CSV line 3", "trainlist01.txt line 3"
    @property
    def problem(self) -> str: ...           # a failure reason known from the line alone, or ""
    def locate(self, videos_root: str | Path) -> Path | None: ...
    def tried(self, videos_root: str | Path) -> str: ...    # where ``locate`` looks, for a missing file


def outside_videos(where: str, *parts: str) -> str:
    """The failure reason of an entry whose path under --videos is joined from ``parts`` when
    one of them is absolute or climbs out with ``..`` (a join would read a file outside
    --videos), else "". Every entry kind applies this rule before it looks for its file."""
    if any(PurePosixPath(p).is_absolute() or ".." in PurePosixPath(p).parts for p in parts):
        return Reason.text(Reason.OUTSIDE_VIDEOS, f"{'/'.join(parts)!r} at {where}")
    return ""


@dataclass(frozen=True)
class VideoTask:
    """One entry to convert; ``order`` is its position in the CSV or list (manifest row order)."""

    order: int
    video_id: str
    label: int
    label_name: str
    source: str
    tried: str = ""         # where the file was looked for, when it was not found

    def row(self, shard: int, reason: str = "") -> ManifestRow:
        """The entry's manifest row before conversion: failed with ``reason``."""
        return ManifestRow(self.video_id, self.label, self.label_name, self.source, shard,
                           reason=reason)


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs to own shard ``index`` end to end (no frame data);
    ``labels_sha256`` (of the label file the labels come from) goes into its done marker."""

    index: int
    out_dir: str
    videos: tuple[VideoTask, ...]
    settings: Settings
    labels_sha256: str
    decode_threads: int = 1
    input: InputId | None = None        # the CSV or list planned from, for the done marker


def assign_shards(labels: Sequence[int], videos_per_shard: int, seed: int) -> list[int]:
    """Shard index per entry, from the entry order and ``seed`` only.

    Entries are grouped by label, shuffled within each label by ``seed``, then dealt round-robin
    over ``ceil(n / videos_per_shard)`` shards, so every shard gets a similar class mix.
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    n = len(labels)
    num_shards = max(1, math.ceil(n / videos_per_shard))
    tiebreak = np.random.default_rng(seed).permutation(n)
    dealt = sorted(range(n), key=lambda i: (labels[i], tiebreak[i]))
    shards = [0] * n
    for position, i in enumerate(dealt):
        shards[i] = position % num_shards
    return shards


def plan_shards(entries: Sequence[Entry], class_index: dict[str, int], videos_root: str | Path,
                out_dir: str | Path, settings: Settings, labels_sha256: str, decode_threads: int = 1,
                input_id: InputId | None = None) -> tuple[list[ShardTask], list[tuple[int, ManifestRow]]]:
    """Shard tasks plus the (entry order, row) of entries that fail before any decoding.

    Assignment depends only on the entries and the labels (not on which files exist), so a
    resumed run sees the same shards.
    """
    pre_failed, assignable, first_seen = [], [], {}
    for order, e in enumerate(entries):
        label = class_index.get(e.label, -1)
        reason = _pre_failure(e, label, first_seen)
        if reason:
            task = VideoTask(order, e.video_id, label, e.label, "")
            pre_failed.append((order, task.row(NO_SHARD, reason)))
            continue
        first_seen[e.video_id] = e.where
        source = e.locate(videos_root)
        assignable.append(VideoTask(order, e.video_id, label, e.label, str(source or ""),
                                    "" if source else e.tried(videos_root)))
    shard_of = assign_shards([v.label for v in assignable], settings.videos_per_shard, settings.seed)
    per_shard: dict[int, list[VideoTask]] = {}
    for v, shard in zip(assignable, shard_of):
        per_shard.setdefault(shard, []).append(v)
    tasks = [ShardTask(i, str(out_dir), tuple(videos), settings, labels_sha256, decode_threads, input_id)
             for i, videos in sorted(per_shard.items())]
    return tasks, pre_failed


def settle_page(tasks: list[ShardTask], settings: Settings, markers: Sequence[DoneMarker | None],
                pages: PageRange = AUTO_PAGES) -> tuple[list[ShardTask], Settings]:
    """The tasks and settings with an ``auto`` page size (AUTO_PAGE) settled; others as given.

    MindDataset reads no split of mixed page sizes, so a split with shards done (``markers``,
    the tasks' done markers, None for a shard not done) keeps their page; a new split gets the
    page of ``pages`` that ``choose_page`` finds for PROBE_VIDEOS of its videos, spread over the
    plan and encoded with its settings (the floor if none encodes).
    """
    if settings.page_size != AUTO_PAGE:
        return tasks, settings
    done = next((marker for marker in markers if marker is not None), None)
    if done is not None:
        page = done.settings.page_size
        log.info("page %g MiB (auto): the page of the shards already done in %s", page / MB,
                 tasks[0].out_dir)
    else:
        page = _probed_page(tasks, pages)
    settled = replace(settings, page_size=page)
    return [replace(t, settings=settled) for t in tasks], settled


def _probed_page(tasks: list[ShardTask], pages: PageRange) -> int:
    """``choose_page``'s page for the sample sizes of the probe videos that encode."""
    found = [(task, v) for task in tasks for v in task.videos if v.source]
    probe = found[::max(1, len(found) // PROBE_VIDEOS)][:PROBE_VIDEOS]
    sizes = [size for task, v in probe if (size := _sample_size(task, v, pages.ceiling)) is not None]
    if not sizes:
        log.info("page %g MiB (auto, the least it chooses): no probe video encoded (%d tried)",
                 pages.floor / MB, len(probe))
        return pages.floor
    count = max(len(task.videos) for task in tasks)
    page, ratio = choose_page(sizes, count, pages)
    log.info("page %g MiB (auto): expected apparent/allocated %.3f for shards of %d videos like "
             "the %d probe videos (%.2f MB mean)", page / MB, ratio, count, len(sizes),
             sum(sizes) / len(sizes) / 1e6)
    return page


def _sample_size(task: ShardTask, video: VideoTask, max_bytes: int) -> int | None:
    """Bytes of ``video``'s sample encoded with the task's settings, None if it fails to encode."""
    s = task.settings
    encoded = encode_or_reason(video.source, s, task.decode_threads, max_bytes=max_bytes)
    if isinstance(encoded, str):
        return None
    return sample_bytes(len(encoded.frames), sum(map(len, encoded.frames)))


def _pre_failure(entry: Entry, label: int, first_seen: dict[str, str]) -> str:
    """Why the entry cannot be converted whatever its file holds, or ""."""
    if entry.problem:
        return entry.problem
    if label < 0:
        return Reason.text(Reason.UNKNOWN_LABEL, f"{entry.label!r} is not in the label file")
    if entry.video_id in first_seen:
        return Reason.text(Reason.DUPLICATE_ID, f"first at {first_seen[entry.video_id]}")
    return ""
