"""Kinetics CSV or video list + video tree -> sharded MindRecord + manifest.parquet, resumable.

The videos come from a Kinetics CSV (``--csv``) or a labelled list (``--list``: a plain list,
UCF101 or HMDB51 split files, ``datatools.lists``). Every entry becomes one manifest row, ``ok`` or
``failed`` with a one-line reason; bad videos never stop the run. ``datatools.plan`` decides the
shards; each joblib task owns one shard end to end (``datatools.shards``: decode, encode, write,
verify, mark done), so no frame data passes through this process, which only runs the tasks and
reports. One converter at a time holds the output folder (``datatools.lock``). Re-running the same
command keeps the shards marked done whose files still match their digests, redoes the rest, and
retries videos that failed for a reason that can change once their source file changed; a resume
must use the same settings and the same label file. A full disk stops the run with one line; it
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import joblib

from datatools import schema
from datatools.cli import non_negative_int, positive_int, run_cli
from datatools.lists import LIST_FORMS, read_entries
from datatools.lock import output_lock
from datatools.manifest import (CHROMA_420, CHROMA_SUBSAMPLINGS, DEFAULT_PAGE, MANIFEST_NAME, MB, DoneMarker,
                                FileDigest, ManifestRow, Settings, ShardFiles, write_manifest)
from datatools.plan import ShardTask, plan_shards
from datatools.shards import ShardRows, Verdict, clear_shard, convert_shard, no_space_error, shard_verdict

__all__ = ["ConvertResult", "convert", "summary_lines", "main"]

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0  # at most one progress line per this many seconds
# Backends whose tasks have all stopped once joblib raises (it kills or joins its local workers),
# so the shards they left unfinished can be removed; a cluster's tasks may still be running.
LOCAL_BACKENDS = frozenset({"loky", "multiprocessing", "threading", "sequential"})


@dataclass
class ConvertResult:
    """Outcome of one run: the full manifest rows (CSV order) and what this run did."""

    rows: list[ManifestRow]
    shards_kept: int
    shards_done: int
    videos_converted: int
    seconds: float
    real_bytes: int
    apparent_bytes: int
    shards_damaged: int = 0     # kept shards whose files no longer matched their digests: redone
    retried: int = 0            # failed videos retried because their source changed
    retried_ok: int = 0         # ... of which now converted


@dataclass
class _Resume:
    """What an existing output means for this run: rows kept, shards to (re)do, videos retried."""

    kept: ShardRows
    todo: list[ShardTask]
    damaged: int
    retried: set[str]


def convert(csv_path: str | Path | None, videos_root: str | Path, labels_path: str | Path,
            out_dir: str | Path, settings: Settings, workers: int = 1, backend: str = "loky",
            decode_threads: int = 0, video_list: str | None = None) -> ConvertResult:
    """Convert one split of ``csv_path`` or, with ``csv_path=None``, of ``video_list`` (a
    ``datatools.lists`` spec); see the module docstring. Raises ValueError/FileNotFoundError for
    unusable inputs before anything is written, OutputLocked while another converter holds
    ``out_dir``, NoSpaceError when the disk fills."""
    settings.check()
    if not Path(videos_root).is_dir():
        raise FileNotFoundError(f"--videos folder not found: {videos_root}")
    if not Path(labels_path).is_file():
        raise FileNotFoundError(f"--labels file not found: {labels_path}")
    names = schema.read_labels(labels_path)
    labels_sha256 = FileDigest.of(labels_path).sha256
    entries = read_entries(csv_path, video_list)
    source = {"list": video_list} if video_list is not None else {"csv": str(csv_path)}
    out_dir = Path(out_dir)
    tasks, pre_failed = plan_shards(entries, {n: i for i, n in enumerate(names)}, videos_root,
                                    out_dir, settings, labels_sha256, decode_threads)
    with output_lock(out_dir):
        resume = _resume(tasks, Path(labels_path), workers)
        total = sum(len(t.videos) for t in resume.todo)
        log.info("%d videos in %d shards: %d shards already done, converting %d videos in %d shards "
                 "with %d worker(s) (%s)", len(entries) - len(pre_failed), len(tasks),
                 len(tasks) - len(resume.todo), total, len(resume.todo), workers, backend)
        start = time.perf_counter()
        ordered = pre_failed + resume.kept + _run(resume.todo, workers, backend, total, start)
        seconds = time.perf_counter() - start
        rows = [row for _, row in sorted(ordered, key=lambda pair: pair[0])]
        _write_manifest(rows, out_dir, settings, tasks, **source, labels=str(labels_path),
                        labels_sha256=labels_sha256)
    real, apparent = _disk_bytes(out_dir, tasks)
    retried_ok = sum(r.ok for r in rows if r.video_id in resume.retried)
    return ConvertResult(rows, len(tasks) - len(resume.todo), len(resume.todo), total, seconds, real,
                         apparent, resume.damaged, len(resume.retried), retried_ok)


def _resume(tasks: list[ShardTask], labels_path: Path, workers: int) -> _Resume:
    """Sort the planned shards into kept and to-do after checking that the output was converted
    with these settings and this label file. The kept shards' digests are checked in threads:
    hashlib releases the GIL, so ``workers`` files are read at once."""
    markers = [DoneMarker.read(ShardFiles.of(t.out_dir, t.index).done) for t in tasks]
    for task, marker in zip(tasks, markers):
        if marker is not None:
            _check_same_inputs(task, marker, labels_path)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        verdicts = list(pool.map(shard_verdict, tasks, markers))
    resume = _Resume([], [], 0, set())
    for task, marker, (verdict, retry) in zip(tasks, markers, verdicts):
        if verdict is Verdict.KEEP:
            resume.kept.extend(marker.rows)
        else:
            resume.todo.append(task)
        resume.damaged += verdict is Verdict.DAMAGED
        resume.retried.update(retry)
    if resume.retried:
        log.info("retrying %d failed video(s) whose source changed, in %d shard(s)",
                 len(resume.retried), sum(v is Verdict.RETRY for v, _ in verdicts))
    return resume


def _check_same_inputs(task: ShardTask, marker: DoneMarker, labels_path: Path) -> None:
    """Refuse to resume an output converted with other settings or another label file: kept
    shards would disagree with new ones (class indices, frame sizes) without any error."""
    if marker.settings != task.settings:
        raise ValueError(f"{task.out_dir} holds shards converted with other settings "
                         f"({marker.settings.to_dict()} vs {task.settings.to_dict()}); use another "
                         f"--out or remove it")
    if marker.labels_sha256 != task.labels_sha256:
        raise ValueError(f"{task.out_dir} was converted with another label file than {labels_path} "
                         f"(sha256 {marker.labels_sha256[:12]}… vs {task.labels_sha256[:12]}…): use "
                         f"the original label file or a new --out")


def _run(todo: list[ShardTask], workers: int, backend: str, total: int, start: float) -> ShardRows:
    """Convert the shards in parallel joblib tasks; their rows as they finish. When one fails,
    joblib stops the others mid-shard: with a local backend their partial files are removed here."""
    rows: ShardRows = []
    if not todo:
        return rows
    progress = _Progress(total, start)
    try:
        with joblib.parallel_config(backend=backend, n_jobs=workers):
            results = joblib.Parallel(return_as="generator_unordered")(
                joblib.delayed(convert_shard)(t) for t in todo)
            for shard_rows in results:
                rows.extend(shard_rows)
                progress.update(len(shard_rows))
    except BaseException:
        if backend in LOCAL_BACKENDS:
            for t in todo:
                if not ShardFiles.of(t.out_dir, t.index).done.is_file():
                    clear_shard(t.out_dir, t.index)
        raise
    return rows


def _write_manifest(rows: list[ManifestRow], out_dir: Path, settings: Settings,
                    tasks: list[ShardTask], **meta: str) -> None:
    """The manifest with every shard's digests from its marker; a full disk is NoSpaceError."""
    digests: dict[str, FileDigest] = {}
    for t in tasks:
        digests.update(DoneMarker.read(ShardFiles.of(out_dir, t.index).done).files)
    try:
        write_manifest(rows, out_dir, settings, digests, **meta)
    except (OSError, RuntimeError) as exc:
        full = no_space_error(exc, out_dir / MANIFEST_NAME, settings.page_size)
        if full is None:
            raise
        raise full from exc


class _Progress:
    """Videos done / total, rate and ETA, at most one line per PROGRESS_SECONDS."""

    def __init__(self, total: int, start: float) -> None:
        self.total, self.start, self.done, self.last = total, start, 0, start

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info("%d/%d videos (%.0f%%), %.1f videos/s, ETA %.0f s", self.done, self.total,
                 100.0 * self.done / max(self.total, 1), rate, eta)


def _disk_bytes(out_dir: Path, tasks: list[ShardTask]) -> tuple[int, int]:
    """(allocated, apparent) bytes of the shard files: MindRecord files are sparse."""
    real = apparent = 0
    for t in tasks:
        files = ShardFiles.of(out_dir, t.index)
        for path in (files.record, files.db):
            if path.is_file():
                st = path.stat()
                real += st.st_blocks * 512
                apparent += st.st_size
    return real, apparent


def summary_lines(result: ConvertResult) -> list[str]:
    """The end-of-run table: ok / failed by reason kind, bytes, rate."""
    ok = [r for r in result.rows if r.ok]
    kinds = Counter(r.reason_kind for r in result.rows if not r.ok)
    lines = [f"{'status':<8} {'reason':<28} {'videos':>8}", f"{'ok':<8} {'':<28} {len(ok):>8}"]
    lines += [f"{'failed':<8} {kind:<28} {n:>8}" for kind, n in sorted(kinds.items())]
    jpeg = sum(r.bytes for r in ok)
    frames = sum(r.num_frames for r in ok)
    rate = result.videos_converted / result.seconds if result.seconds > 0 else 0.0
    lines += [
        f"jpeg bytes {jpeg / 1e6:.2f} MB; on disk {result.real_bytes / 1e6:.2f} MB allocated, "
        f"{result.apparent_bytes / 1e6:.2f} MB apparent (sparse MindRecord pages)",
        f"bytes/video {jpeg / max(len(ok), 1):.0f}; bytes/frame {jpeg / max(frames, 1):.0f}; "
        f"frames/video {frames / max(len(ok), 1):.1f}",
        f"shards: {result.shards_done} converted, {result.shards_kept} kept from an earlier run "
        f"({result.shards_damaged} found damaged and redone); "
        f"{result.videos_converted} videos in {result.seconds:.1f} s = {rate:.1f} videos/s",
        f"retried {result.retried} video(s) whose source changed, {result.retried_ok} now ok",
    ]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datatools.convert", description=__doc__.split("\n")[0])
    entries = p.add_mutually_exclusive_group(required=True)
    entries.add_argument("--csv", type=Path, help="Kinetics CSV of the split")
    entries.add_argument("--list", help=f"labelled video list of the split: {LIST_FORMS}")
    p.add_argument("--videos", required=True, type=Path,
                   help="video root (<root>/<label>/<id>.mp4; the root of a list's paths)")
    p.add_argument("--labels", required=True, type=Path, help="labels.txt from datatools.labels")
    p.add_argument("--out", required=True, type=Path, help="output folder of the split")
    p.add_argument("--short-side", type=int, default=256,
                   help="resize the short side to this (never up); 0 keeps the source size")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    p.add_argument("--max-fps", type=float, default=None, help="drop frames above this rate")
    p.add_argument("--chroma", default=CHROMA_420, choices=CHROMA_SUBSAMPLINGS,
                   help="JPEG chroma subsampling of the stored frames (default 420: half the "
                        "bytes of 444)")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel shard tasks")
    p.add_argument("--videos-per-shard", type=int, default=64)
    p.add_argument("--page-mb", type=float, default=DEFAULT_PAGE / MB,
                   help="MindRecord page size in MiB, a power of two, the same for every shard of "
                        f"a split; a video must fit in one (default {DEFAULT_PAGE // MB}: any 10 s "
                        "clip at short side 256; 1 suits small demo videos)")
    p.add_argument("--seed", type=int, default=0, help="shard assignment seed")
    p.add_argument("--backend", default="loky",
                   help="joblib backend: loky (default), threading, multiprocessing, or dask "
                        "(a cluster writing onto shared storage)")
    p.add_argument("--decode-threads", type=non_negative_int, default=0,
                   help="PyAV decoder threads per worker (0: FFmpeg decides)")
    return p


def main(args: argparse.Namespace) -> int:
    _check_backend(args.backend)
    settings = Settings(short_side=args.short_side, quality=args.quality, max_fps=args.max_fps,
                        videos_per_shard=args.videos_per_shard, seed=args.seed,
                        chroma_subsampling=args.chroma, page_size=int(args.page_mb * MB))
    result = convert(args.csv, args.videos, args.labels, args.out, settings, workers=args.workers,
                     backend=args.backend, decode_threads=args.decode_threads, video_list=args.list)
    print("\n".join(summary_lines(result)))
    return 0


def _check_backend(name: str) -> None:
    """Reject backend names joblib does not know, before anything is written.

    joblib registers ``dask`` itself when dask.distributed is installed; other cluster backends
    (e.g. ray's ``register_ray()``) must be registered by a wrapper script calling ``main``.
    """
    known = sorted(set(joblib.parallel.BACKENDS) | set(joblib.parallel.EXTERNAL_BACKENDS))
    if name not in known:
        raise ValueError(f"--backend must be one of {known}, got {name!r}")


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
