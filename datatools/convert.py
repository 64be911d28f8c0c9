"""Kinetics CSV or video list + video tree -> sharded MindRecord + manifest.parquet, resumable.

The videos come from a Kinetics CSV (``--csv``) or a labelled list (``--list``: a plain list,
UCF101 or HMDB51 split files, ``datatools.lists``). Every entry becomes one manifest row, ``ok`` or
``failed`` with a one-line reason; bad videos never stop the run. ``datatools.plan`` decides the
shards; each task owns one shard end to end (``datatools.shards``: decode, encode, write,
verify, mark done), so no frame data passes through this process, which only runs the tasks and
reports. One converter at a time holds the output folder (``datatools.lock``). Re-running the same
command keeps the shards marked done whose files still match their digests, redoes the rest, and
retries videos that failed for a reason that can change once their source file changed; a resume
must use the same settings, the same label file and the same entries (``manifest.InputId``), or
``--replace`` the split. A full disk stops the run with one line; it resumes where it stopped. A
run in which no video converted exits 1, naming the failed videos.

The tasks run on joblib's local workers or on a Dask cluster (``datatools.cluster``), which
writes onto storage this process shares. With ``--upload obs://bucket/prefix`` each task pushes
its shard to OBS as soon as it is marked done, from the machine that wrote it
(``datatools.sync.SplitPush``), and returns its done marker, so the manifest is written here even
when this machine does not see the workers' disks; then the label file and the manifest follow.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from datatools import schema
from datatools.cli import EXIT_FAILED, non_negative_int, positive_int, run_cli
from datatools.cluster import BACKENDS, DASK, ENV_SCHEDULER, Pool, open_pool
from datatools.inspect import failed_lines
from datatools.lists import LIST_FORMS, read_entries
from datatools.lock import output_lock
from datatools.manifest import (AUTO, CHROMA_420, CHROMA_SUBSAMPLINGS, CODECS, DEFAULT_CODEC, H264,
                                JPEG, MANIFEST_NAME, MAX_PAGE, MB, MIN_PAGE, PAGE_ALIGN, X264_PRESETS,
                                DoneMarker, InputId, ManifestRow, Settings, ShardFiles,
                                page_size_of, read_input, shards_on_disk, write_manifest)
from datatools.pages import AUTO_PAGES, PageRange, choose_page, disk_bytes, sample_bytes
from datatools.plan import PROBE_VIDEOS, ShardTask, plan_shards, settle_page
from datatools.shards import Verdict, clear_shard, convert_shard, no_space_error, shard_verdict
from datatools.sync import SplitPush

__all__ = ["ConvertResult", "convert", "summary_lines", "main"]

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0  # at most one progress line per this many seconds
HOLES_WARNING = 4       # shard files this many times the bytes they allocate: mostly holes
FAILED_SHOWN = 20       # failed videos the summary names (datatools.inspect --failed lists all)
DEFAULT_QUALITY = 90
H264_DEFAULTS = Settings(0, DEFAULT_QUALITY, None, 1, 0, codec=H264)     # the defaults of its fields
JPEG_OPTIONS = {"quality": "--quality", "chroma": "--chroma"}
H264_OPTIONS = {"crf": "--crf", "gop": "--gop", "preset": "--preset", "fastdecode": "--fastdecode"}


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
    page_size: int = 0          # the split's MindRecord page
    videos_per_shard: int = 0


@dataclass
class _Resume:
    """What an existing output means for this run: shards kept (their markers by shard index),
    shards to (re)do, videos retried."""

    kept: dict[int, DoneMarker]
    todo: list[ShardTask]
    damaged: int
    retried: set[str]


def convert(csv_path: str | Path | None, videos_root: str | Path, labels_path: str | Path,
            out_dir: str | Path, settings: Settings, workers: int = 1, backend: str = "loky",
            decode_threads: int = 1, video_list: str | None = None, scheduler: str | None = None,
            upload: SplitPush | None = None, auto_pages: PageRange = AUTO_PAGES,
            replace: bool = False) -> ConvertResult:
    """Convert one split of ``csv_path`` or, with ``csv_path=None``, of ``video_list`` (a
    ``datatools.lists`` spec); see the module docstring. ``backend="dask"`` runs the tasks on the
    cluster of the scheduler at ``scheduler``, else on a LocalCluster of ``workers`` processes;
    ``upload`` pushes the split to OBS as it converts; an ``auto`` page size (AUTO_PAGE) is
    settled within ``auto_pages`` (``datatools.plan.settle_page``). An ``out_dir`` that holds
    a split converted from other entries is refused unless ``replace``, which removes what it
    holds once every check passed. Raises ValueError/FileNotFoundError for unusable inputs
    before anything is written, OutputLocked while another converter holds ``out_dir``,
    NoSpaceError when the disk fills."""
    settings.check()
    if not Path(videos_root).is_dir():
        raise FileNotFoundError(f"--videos folder not found: {videos_root}")
    if not Path(labels_path).is_file():
        raise FileNotFoundError(f"--labels file not found: {labels_path}")
    names = schema.read_labels(labels_path)
    labels_sha256 = schema.labels_sha256(labels_path)
    entries = read_entries(csv_path, video_list)
    source = {"list": video_list} if video_list is not None else {"csv": str(csv_path)}
    given = InputId.of(next(iter(source.values())), ((e.video_id, e.label) for e in entries))
    out_dir = Path(out_dir)
    tasks, pre_failed = plan_shards(entries, {n: i for i, n in enumerate(names)}, videos_root,
                                    out_dir, settings, labels_sha256, decode_threads, given)
    if upload is not None:
        upload.check(Path(labels_path), given, replace)
    with open_pool(backend, workers, scheduler) as pool, output_lock(out_dir):
        _claim_split(out_dir, given, replace)
        markers = [DoneMarker.read(ShardFiles.of(t.out_dir, t.index).done) for t in tasks]
        tasks, settings = settle_page(tasks, settings, markers, auto_pages)
        resume = _resume(tasks, markers, Path(labels_path), workers)
        if upload is not None:
            upload.start(out_dir, sorted(resume.kept), bool(resume.todo), workers)
        total = sum(len(t.videos) for t in resume.todo)
        log.info("%d videos in %d shards: %d shards already done, converting %d videos in %d shards "
                 "on %s", len(entries) - len(pre_failed), len(tasks), len(tasks) - len(resume.todo),
                 total, len(resume.todo), pool)
        start = time.perf_counter()
        markers = [*resume.kept.values(), *_run(resume.todo, pool, upload, total, start)]
        seconds = time.perf_counter() - start
        ordered = pre_failed + [pair for marker in markers for pair in marker.rows]
        rows = [row for _, row in sorted(ordered, key=lambda pair: pair[0])]
        _write_manifest(rows, out_dir, settings, markers, **source, labels=str(labels_path),
                        labels_sha256=labels_sha256, input_sha256=given.sha256)
        if upload is not None:
            upload.finish(out_dir, Path(labels_path))
    # MindRecord files are sparse: allocated and apparent sizes differ.
    real, apparent = disk_bytes(path for t in tasks for files in [ShardFiles.of(out_dir, t.index)]
                                for path in (files.record, files.db))
    retried_ok = sum(r.ok for r in rows if r.video_id in resume.retried)
    return ConvertResult(rows, len(tasks) - len(resume.todo), len(resume.todo), total, seconds, real,
                         apparent, resume.damaged, len(resume.retried), retried_ok, settings.page_size,
                         settings.videos_per_shard)


def _claim_split(out_dir: Path, given: InputId, replace: bool) -> None:
    """Refuse a split converted from other entries than ``given`` (a resume must be of the same
    input; a split stored before inputs were is taken as it is); with ``replace``, remove its
    shards and manifest, whatever they hold, so the split is converted anew."""
    if replace:
        for index in shards_on_disk(out_dir):
            clear_shard(out_dir, index)
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        return
    stored = read_input(out_dir)
    if stored is not None and stored.sha256 != given.sha256:
        raise ValueError(f"{out_dir} holds a split converted from {stored.name}, not from {given.name} "
                         f"(other videos or labels): convert into another --out, or add --replace "
                         f"to replace that split")


def _resume(tasks: list[ShardTask], markers: list[DoneMarker | None], labels_path: Path,
            workers: int) -> _Resume:
    """Sort the planned shards into kept and to-do, given their done markers (None: not done),
    after checking that the output was converted with these settings and this label file. The
    kept shards' digests are checked in threads: hashlib releases the GIL, so ``workers`` files
    are read at once."""
    for task, marker in zip(tasks, markers):
        if marker is not None:
            _check_same_inputs(task, marker, labels_path)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        verdicts = list(pool.map(shard_verdict, tasks, markers))
    resume = _Resume({}, [], 0, set())
    for task, marker, (verdict, retry) in zip(tasks, markers, verdicts):
        if verdict is Verdict.KEEP:
            resume.kept[task.index] = marker
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
        raise ValueError(f"{task.out_dir} holds shards converted with other settings: "
                         f"{', '.join(marker.settings.changes_to(task.settings))}; convert with the "
                         f"split's settings, use another --out, or add --replace to replace that split")
    if marker.labels_sha256 != task.labels_sha256:
        raise ValueError(f"{task.out_dir} was converted with another label file than {labels_path} "
                         f"(sha256 {marker.labels_sha256[:12]}… vs {task.labels_sha256[:12]}…): use "
                         f"the original label file or a new --out")


def _run(todo: list[ShardTask], pool: Pool, upload: SplitPush | None, total: int,
         start: float) -> list[DoneMarker]:
    """Convert the shards in parallel tasks; their markers as they finish. When one fails, the
    pool stops the others (``Pool.stop``); once none runs, their partial files are removed here."""
    markers: list[DoneMarker] = []
    if not todo:
        return markers
    progress = _Progress(total, start)
    try:
        for marker in pool.imap_unordered(partial(_shard_job, upload=upload), todo,
                                          [f"shard {t.index}" for t in todo]):
            markers.append(marker)
            progress.update(len(marker.rows))
    except BaseException:
        if pool.stop():
            for t in todo:
                if not ShardFiles.of(t.out_dir, t.index).done.is_file():
                    clear_shard(t.out_dir, t.index)
        raise
    return markers


def _shard_job(task: ShardTask, upload: SplitPush | None) -> DoneMarker:
    """One shard in a worker: convert it, push it when uploading, return its marker. The folder
    is made here for a worker on a machine that does not share this one's disk."""
    os.makedirs(task.out_dir, exist_ok=True)
    convert_shard(task)
    files = ShardFiles.of(task.out_dir, task.index)
    if upload is not None:
        upload.shard(files)
    return DoneMarker.read(files.done)


def _write_manifest(rows: list[ManifestRow], out_dir: Path, settings: Settings,
                    markers: list[DoneMarker], **meta: str) -> None:
    """The manifest with every shard's digests from its marker; a full disk is NoSpaceError."""
    digests = {name: digest for marker in markers for name, digest in marker.files.items()}
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


def summary_lines(result: ConvertResult) -> list[str]:
    """The end-of-run table: ok / failed by reason kind, bytes, rate; then the failed videos."""
    ok = [r for r in result.rows if r.ok]
    kinds = Counter(r.reason_kind for r in result.rows if not r.ok)
    lines = [f"{'status':<8} {'reason':<28} {'videos':>8}", f"{'ok':<8} {'':<28} {len(ok):>8}"]
    lines += [f"{'failed':<8} {kind:<28} {n:>8}" for kind, n in sorted(kinds.items())]
    jpeg = sum(r.bytes for r in ok)
    frames = sum(r.num_frames for r in ok)
    rate = result.videos_converted / result.seconds if result.seconds > 0 else 0.0
    lines += [
        f"frame bytes {jpeg / 1e6:.2f} MB; on disk {result.real_bytes / 1e6:.2f} MB allocated, "
        f"{result.apparent_bytes / 1e6:.2f} MB apparent (sparse MindRecord pages)",
        f"bytes/video {jpeg / max(len(ok), 1):.0f}; bytes/frame {jpeg / max(frames, 1):.0f}; "
        f"frames/video {frames / max(len(ok), 1):.1f}",
        f"shards: {result.shards_done} converted, {result.shards_kept} kept from an earlier run "
        f"({result.shards_damaged} found damaged and redone); "
        f"{result.videos_converted} videos in {result.seconds:.1f} s = {rate:.1f} videos/s",
        f"retried {result.retried} video(s) whose source changed, {result.retried_ok} now ok",
    ]
    return lines + holes_lines(result) + failed_lines(result.rows, FAILED_SHOWN)


def holes_lines(result: ConvertResult) -> list[str]:
    """A warning when the shard files are mostly holes (pages far larger than the videos, as
    for a small split of small videos): sparse on this disk, but a copy to storage that is not
    sparse (an OBS bucket, many network filesystems) stores them whole. Names the --page-mb that
    fits these videos."""
    sizes = [sample_bytes(r.num_frames, r.bytes) for r in result.rows if r.ok]
    if not sizes or result.apparent_bytes <= HOLES_WARNING * max(result.real_bytes, 1):
        return []
    fitting = PageRange(MB, max(MB, result.page_size - MB), MB)
    page, _ = choose_page(sizes, result.videos_per_shard or len(sizes), fitting)
    if page >= result.page_size:
        return []
    return [f"holes: the shard files are {result.apparent_bytes / result.real_bytes:.0f}x the bytes they "
            f"allocate ({result.page_size / MB:g} MiB pages for videos of {statistics.fmean(sizes) / 1e3:.0f} "
            f"KB): sparse here, but whole in a copy or a bucket; --page-mb {page // MB} fits "
            f"these videos (reconvert with it and --replace)"]


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
    p.add_argument("--max-fps", type=float, default=None, help="drop frames above this rate")
    p.add_argument("--codec", default=DEFAULT_CODEC,
                   help=f"how frames are stored: {' or '.join(CODECS)} (default {DEFAULT_CODEC}); h264 is "
                        f"one closed-GOP stream per video, ~1/5 of JPEG's bytes for ~1.4x its loader "
                        f"CPU (README: choosing a codec)")
    p.add_argument("--quality", type=int, default=None,
                   help=f"JPEG quality 1..100 (default {DEFAULT_QUALITY}); --codec {JPEG} only")
    p.add_argument("--chroma", default=None, choices=CHROMA_SUBSAMPLINGS,
                   help=f"JPEG chroma subsampling of the stored frames (default {CHROMA_420}: half "
                        f"the bytes of 444); --codec {JPEG} only")
    p.add_argument("--crf", type=int, default=None,
                   help=f"x264 rate factor 0..51, lower is better and larger (default "
                        f"{H264_DEFAULTS.crf}); --codec {H264} only")
    p.add_argument("--gop", type=int, default=None,
                   help=f"a keyframe every this many frames (default {H264_DEFAULTS.gop}): a clip "
                        f"decodes from the keyframe before each segment; --codec {H264} only")
    p.add_argument("--preset", default=None,
                   help=f"x264 preset, {'|'.join(X264_PRESETS)} (default {H264_DEFAULTS.preset}): "
                        f"converter CPU against bytes; --codec {H264} only")
    p.add_argument("--fastdecode", default=None, action=argparse.BooleanOptionalAction,
                   help=f"x264 tune=fastdecode (default {'on' if H264_DEFAULTS.fastdecode else 'off'}): "
                        f"no CABAC or deblocking, faster reads for more bytes; --codec {H264} only")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="parallel shard tasks; with --backend dask and no --scheduler the processes "
                        "of a LocalCluster (a scheduler's cluster runs as many as it has threads)")
    p.add_argument("--videos-per-shard", type=int, default=64,
                   help="videos per shard file (default 64). A shard of up to 32 pages is written "
                        "in one call, filling each page before the next, so a worker holds its "
                        "frames several times over: ~1.6 GB at 64 Kinetics-sized videos")
    p.add_argument("--page-mb", default=AUTO,
                   help="MindRecord page size in MiB, the same for every shard of a split; a video "
                        f"must fit in one. {AUTO} (default): a split with shards done keeps their "
                        f"page, a new one gets the whole MiB from {AUTO_PAGES.floor // MB} to "
                        f"{AUTO_PAGES.ceiling // MB} that leaves the fewest holes in shards of "
                        f"videos like {PROBE_VIDEOS} of its own, encoded first "
                        f"({AUTO_PAGES.floor // MB} if none encodes). A number: from {MIN_PAGE / MB:g} to {MAX_PAGE // MB}, rounded to "
                        f"the nearest multiple of {PAGE_ALIGN} bytes (1 suits small demo videos)")
    p.add_argument("--seed", type=int, default=0, help="shard assignment seed")
    p.add_argument("--backend", default=None,
                   help="where the tasks run: joblib's loky (default), threading, multiprocessing or "
                        "sequential, or dask (the cluster of --scheduler, else a LocalCluster of "
                        "--workers processes)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the tasks on the Dask cluster of this scheduler (tcp://host:8786), "
                        "writing onto storage shared with it or pushing with --upload; implies "
                        f"--backend dask, which otherwise reads ${ENV_SCHEDULER}")
    p.add_argument("--upload", default=None, metavar="OBS_URL",
                   help="push each shard to obs://bucket/prefix as soon as it is done (from the "
                        "worker that wrote it), then the manifest, and labels.txt beside the prefix; "
                        "credentials from OBS_ACCESS_KEY_ID/OBS_SECRET_ACCESS_KEY[/OBS_SECURITY_TOKEN]")
    p.add_argument("--endpoint", default=None,
                   help="OBS endpoint for --upload (default: $OBS_ENDPOINT)")
    p.add_argument("--replace", action="store_true",
                   help="convert anew: remove the split --out holds (its shards and manifest) once "
                        "every other check passed, and with --upload the bucket's shards the new "
                        "split does not have; without it, a split converted from another CSV or "
                        "list, or with other settings, is refused, locally or in the bucket")
    p.add_argument("--decode-threads", type=non_negative_int, default=1,
                   help="PyAV decoder threads per worker (default 1: the least CPU a video when "
                        "the workers fill the cores; 0: FFmpeg decides)")
    return p


def main(args: argparse.Namespace) -> int:
    backend, scheduler = _backend(args.backend, args.scheduler)
    upload = SplitPush.to(args.upload, args.endpoint) if args.upload else None
    settings = Settings(short_side=args.short_side, max_fps=args.max_fps,
                        videos_per_shard=args.videos_per_shard, seed=args.seed,
                        page_size=page_size_of(args.page_mb), **_codec_settings(args))
    result = convert(args.csv, args.videos, args.labels, args.out, settings, workers=args.workers,
                     backend=backend, decode_threads=args.decode_threads, video_list=args.list,
                     scheduler=scheduler, upload=upload, replace=args.replace)
    print("\n".join(summary_lines(result)))
    if not any(r.ok for r in result.rows):
        print(f"error: no video of {args.csv or args.list} converted (reasons above): check --videos "
              f"{args.videos} and the paths tried", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _codec_settings(args: argparse.Namespace) -> dict:
    """The codec's Settings fields; an option of the other codec is refused, not ignored (it
    would be stored without effect, and a resume with another value refused for nothing)."""
    if args.codec not in CODECS:
        raise ValueError(f"--codec must be one of {'|'.join(CODECS)}, got {args.codec!r}")
    mine, other = (JPEG_OPTIONS, H264_OPTIONS) if args.codec == JPEG else (H264_OPTIONS, JPEG_OPTIONS)
    stray = [flag for name, flag in other.items() if getattr(args, name) is not None]
    if stray:
        raise ValueError(f"{stray[0]} applies to --codec {H264 if args.codec == JPEG else JPEG}, "
                         f"not --codec {args.codec}")
    given = {name: getattr(args, name) for name in mine if getattr(args, name) is not None}
    if "chroma" in given:
        given["chroma_subsampling"] = given.pop("chroma")
    return {"codec": args.codec, "quality": DEFAULT_QUALITY, **given}


def _backend(backend: str | None, scheduler: str | None) -> tuple[str, str | None]:
    """``--backend`` and the scheduler address it uses, checked before anything is written:
    ``--scheduler`` implies dask; dask without it reads the address from the environment, and
    starts a LocalCluster when there is none there either."""
    backend = backend or (DASK if scheduler else "loky")
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    if backend != DASK:
        if scheduler:
            raise ValueError(f"--scheduler {scheduler} runs the tasks on a Dask cluster: use it "
                             f"with --backend dask, not --backend {backend}")
        return backend, None
    return backend, scheduler or os.environ.get(ENV_SCHEDULER) or None


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
