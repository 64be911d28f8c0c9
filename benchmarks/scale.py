"""Kinetics-700 at scale on one machine: planning, manifest, MindDataset start-up, eval padding.

Simulates a Kinetics-700 train split (``--rows``, default 650,000 CSV rows, 700 classes, 64
videos a shard: ~10k shards) and a val split (``--val-videos``, default 20,003) at several sizes
(``--fractions``, default 1/16, 1/4 and 1 of both), and times the project's own code on them,
each step in a fresh process (forked from a server that imported the project once) so that its
peak memory is its own:

- plan: what ``datatools.convert.convert`` does before it converts anything: the label file,
  the CSV (``datatools.lists.read_entries``), ``InputId`` hashing, ``datatools.plan.plan_shards``
  (which looks for every video's file), the done markers and ``_resume`` on an empty output;
  then the manifest as the converter writes it (``write_manifest``), its bytes on disk.
- manifest: reading it back, as ``datatools.inspect`` (``rows_of``) and the trainer do
  (``ok_shard_paths``, ``source_sizes``, the label check, the settings).
- dataset: one rank of ``--ranks`` (default 8) building the trainer's training pipeline
  (``trainer.data.records`` and ``create_dataset``) and its first batch, in a process of its
  own, as ranks are; the descriptors it holds. Where this host's hard open-file limit is below
  what ``datatools.openfiles`` asks for, the trainer refuses (that is reported) and MindDataset
  is timed directly with the same arguments.
- eval: one rank's evaluation records (``records(training=False)``: the count over every shard
  and the padded samples) read to their end, against the same MindDataset without padding.

What is simulated: the videos are empty files (``--missing`` of them absent, failed rows); the
shards are real MindRecord files of the project's schema holding tiny samples (2 JPEG frames
of 16x16, as many per shard as the plan puts there), written once per sample count and copied
under each shard's name (the name MindRecord stores inside is patched, same length), so sample
ids repeat across shards while the manifest's are unique. The converter's decode, encode and
verification are not run.

    python -m benchmarks.scale                 # ~5-7 min here
    python -m benchmarks.scale --quick         # a small size, ~15 s
"""
from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from datatools.cli import non_negative_int, positive_int, run_cli

CLASSES = 700
FULL_ROWS = 650_000
VAL_VIDEOS = 20_003          # not a multiple of 8: eval pads
VIDEOS_PER_SHARD = 64
FRAME_SIDE = 16              # tiny samples: 2 JPEG frames of 16x16
PAGE = 1 << 15               # MindRecord's least page: tiny shards
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
QUICK = {"rows": 6_500, "val_videos": 1_003, "fractions": "1/4,1", "measure_ranks": "0"}
LINEAR_SLACK = 1.15          # a growth exponent above this is reported as faster than linear
SMALL_SECONDS = 0.1          # ... unless the time at the largest size is below this
PROGRESS_SECONDS = 15        # a line at least this often while a step runs
# The forked step processes import these once, in their server.
PRELOAD = ["datatools.convert", "trainer.data"]


def _fractions(text: str) -> list[Fraction]:
    try:
        values = sorted({Fraction(part.strip()) for part in text.split(",") if part.strip()})
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected fractions like 1/16,1/4,1, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return values


def _ranks(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rank numbers like 0,7, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected rank numbers >= 0 like 0,7, got {text!r}")
    return values


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=positive_int, default=None,
                   help=f"train CSV rows at full size (default {FULL_ROWS:,}; --quick {QUICK['rows']:,})")
    p.add_argument("--val-videos", type=positive_int, default=None,
                   help=f"val videos at full size (default {VAL_VIDEOS:,}; --quick {QUICK['val_videos']:,})")
    p.add_argument("--fractions", type=_fractions, default=None,
                   help="sizes measured, as fractions of the full size (default 1/16,1/4,1; "
                        f"--quick {QUICK['fractions']})")
    p.add_argument("--videos-per-shard", type=positive_int, default=VIDEOS_PER_SHARD,
                   help=f"as datatools.convert's (default {VIDEOS_PER_SHARD})")
    p.add_argument("--ranks", type=positive_int, default=8, help="ranks the splits are read by")
    p.add_argument("--measure-ranks", type=_ranks, default=None,
                   help="which ranks' start-up is measured, each in its own process (default "
                        f"0 and the last; --quick {QUICK['measure_ranks']})")
    p.add_argument("--missing", type=_share, default=0.05,
                   help="share of the CSV's videos without a file (failed rows; default 0.05)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="repeats of the manifest reads (medians; the other steps run once)")
    p.add_argument("--quick", action="store_true", help="a small size, ~15 s")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    return p


def main(args: argparse.Namespace) -> int:
    quick = QUICK if args.quick else {}
    rows = args.rows or quick.get("rows", FULL_ROWS)
    val = args.val_videos or quick.get("val_videos", VAL_VIDEOS)
    fractions = args.fractions or _fractions(quick.get("fractions", "1/16,1/4,1"))
    measured = args.measure_ranks or (_ranks(quick["measure_ranks"]) if quick else
                                      sorted({0, args.ranks - 1}))
    if max(measured) >= args.ranks:
        raise ValueError(f"--measure-ranks must be below --ranks {args.ranks}, got {measured}")
    sizes = [(max(1, round(rows * f)), max(1, round(val * f))) for f in fractions]
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GLOG_v", "3")        # MindSpore's own warnings, before any step forks
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="scale-", dir=args.work)
    try:
        bench = Bench(Path(tmp), args.videos_per_shard, args.missing, args.ranks, args.repeats)
        results = bench.run(sizes, measured)
    finally:
        if args.keep:
            print(f"scratch kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_summary(results, sizes, fractions, args.ranks, measured, time.perf_counter() - start)
    return 0


# ----------------------------------------------------------------------------- measuring


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Peak:
    """Peak resident memory above the resident memory at ``__init__`` (MB), from the kernel's
    high-water mark, reset at the start (``/proc/self/clear_refs``)."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.base = _status_kb("VmRSS")

    def mb(self) -> float:
        return (_status_kb("VmHWM") - self.base) / 1024


def _timed(work):
    start = time.perf_counter()
    out = work()
    return time.perf_counter() - start, out


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class DescriptorPeak:
    """The most descriptors this process held at once meanwhile (polled every few ms)."""

    def __init__(self) -> None:
        self.most, self._stop = _open_descriptors(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.most = max(self.most, _open_descriptors())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.most, _open_descriptors())


def _in_child(fn, *args):
    """``fn(*args)`` in a fresh process forked from the preloaded server; a line every
    PROGRESS_SECONDS while it runs."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(fn, *args)
        while True:
            try:
                return future.result(timeout=PROGRESS_SECONDS)
            except TimeoutError:
                print(f"{time.strftime('%H:%M:%S')}   ... {fn.__name__} running for "
                      f"{time.perf_counter() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------------- the inputs


def label_names() -> list[str]:
    return [f"class {i:03d}" for i in range(CLASSES)]


def write_inputs(work: Path, rows: int, val: int, missing: float) -> tuple[Path, Path, Path, Path]:
    """labels.txt, the train and val CSVs (Kinetics columns, classes shuffled) and the video
    tree: an empty file per video but ``missing`` of them. Rows of a smaller size are the CSV's
    first rows, so one tree serves every size."""
    from datatools.labels import write_labels
    from datatools.progress import Progress
    import logging

    names = label_names()
    labels = write_labels(names, work / "labels.txt")
    videos = work / "videos"
    rng = np.random.default_rng(0)
    csvs = []
    for split, count in (("train", rows), ("val", val)):
        path = work / f"{split}.csv"
        classes = rng.integers(0, CLASSES, count)
        absent = rng.random(count) < missing
        with open(path, "w", newline="") as f, Progress(count, "videos", logger=logging.getLogger("scale"),
                                                        desc=f"{split} CSV and video files") as bar:
            out = csv.writer(f)
            out.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for name in names:
                (videos / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                ytid = f"{split[0]}{i:010d}"
                out.writerow([names[classes[i]], ytid, 10, 20, split])
                if not absent[i]:
                    os.close(os.open(videos / names[classes[i]] / f"{ytid}_000010_000020.mp4",
                                     os.O_CREAT | os.O_WRONLY, 0o644))
                if i % 10_000 == 9_999:
                    bar.update(10_000)
            bar.update(count % 10_000)
        csvs.append(path)
    return labels, csvs[0], csvs[1], videos


def head_csv(path: Path, rows: int, out: Path) -> Path:
    """The first ``rows`` rows of a CSV (and its header)."""
    with open(path) as src, open(out, "w") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)
    return out


def settings(videos_per_shard: int):
    from datatools.manifest import JPEG, Settings
    return Settings(FRAME_SIDE, 90, None, videos_per_shard, 0, page_size=PAGE, codec=JPEG)


def tiny_sample(video_id: str, label: int) -> dict:
    """A sample of the project's schema: 2 JPEG frames of 16x16 and their checksum."""
    import simplejpeg
    from datatools import schema
    frame = simplejpeg.encode_jpeg(np.full((FRAME_SIDE, FRAME_SIDE, 3), 128, np.uint8), quality=90)
    blob, offsets = schema.pack_frames([frame, frame])
    return {schema.VIDEO_ID: video_id, schema.LABEL: label, schema.NUM_FRAMES: 2,
            schema.HEIGHT: FRAME_SIDE, schema.WIDTH: FRAME_SIDE, schema.OFFSETS: offsets,
            schema.CHECKSUM: schema.sample_checksum(video_id, label, offsets, blob), schema.FRAMES: blob}


class Shards:
    """Shard files of any sample count: a real MindRecord file is written per count, as
    ``datatools.shards`` writes a shard (page, header size, schema; no verification), then
    copied under each shard's name with the name stored inside patched."""

    def __init__(self, folder: Path, videos_per_shard: int) -> None:
        self.folder, self.videos_per_shard = folder, videos_per_shard
        self.templates: dict[int, tuple[bytes, bytes]] = {}

    def template(self, count: int) -> tuple[bytes, bytes]:
        if count not in self.templates:
            from mindspore.mindrecord import FileWriter
            from datatools import schema
            from datatools.manifest import ShardFiles
            from datatools.pages import header_size
            files = ShardFiles.of(self.folder, 0)
            self.folder.mkdir(parents=True, exist_ok=True)
            writer = FileWriter(str(files.record), shard_num=1, overwrite=True)
            writer.set_page_size(PAGE)
            writer.set_header_size(header_size(PAGE, self.videos_per_shard))
            writer.add_schema(schema.RECORD_SCHEMA, "stnet video clips")
            writer.write_raw_data([tiny_sample(f"t{count}_{i:05d}", i % CLASSES) for i in range(count)])
            writer.commit()
            self.templates[count] = (files.record.read_bytes(), files.db.read_bytes())
            files.record.unlink()
            files.db.unlink()
        return self.templates[count]

    def write(self, split_dir: Path, counts: dict[int, int], desc: str) -> None:
        """Shard ``index`` holding ``count`` samples for each item of ``counts``."""
        from datatools.manifest import ShardFiles
        from datatools.progress import Progress
        import logging

        stored = ShardFiles.of(self.folder, 0).record.name.encode()
        with Progress(len(counts), "shards", logger=logging.getLogger("scale"), desc=desc) as bar:
            for index, count in counts.items():
                files = ShardFiles.of(split_dir, index)
                name = files.record.name.encode()
                record, db = self.template(count)
                files.record.write_bytes(record.replace(stored, name, 1))
                files.db.write_bytes(db.replace(stored, name, 1))
                bar.update()


# ----------------------------------------------------------------------------- the steps


def plan_step(csv_path: str, labels_path: str, videos: str, split_dir: str, videos_per_shard: int) -> dict:
    """What datatools.convert.convert does before converting, timed piece by piece, then the
    manifest of the simulated conversion written as it writes it. Returns the times, the peak
    memory and the ok samples per shard."""
    from datatools import schema
    from datatools.convert import _resume, _write_manifest
    from datatools.lists import read_entries
    from datatools.manifest import (STATUS_OK, DoneMarker, FileDigest, InputId, ManifestRow, Reason,
                                    ShardFiles)
    from datatools.plan import plan_shards, settle_page

    s = settings(videos_per_shard)
    out = Path(split_dir)
    peak = Peak()
    times = {}
    t0 = time.perf_counter()
    times["labels"], (names, sha) = _timed(lambda: (schema.read_labels(labels_path),
                                                    schema.labels_sha256(labels_path)))
    times["read CSV"], entries = _timed(lambda: read_entries(Path(csv_path), None))
    times["InputId"], given = _timed(lambda: InputId.of(csv_path, ((e.video_id, e.label) for e in entries)))
    times["plan_shards"], (tasks, pre_failed) = _timed(lambda: plan_shards(
        entries, {n: i for i, n in enumerate(names)}, videos, out, s, sha, 1, given))

    def before_converting():
        """The done markers (none yet), the page, the shards kept and to do (convert's order)."""
        markers = [DoneMarker.read(ShardFiles.of(t.out_dir, t.index).done) for t in tasks]
        settled, _ = settle_page(tasks, s, markers)
        return _resume(settled, markers, Path(labels_path), 2)

    times["markers + resume"], _ = _timed(before_converting)
    times["plan total"] = time.perf_counter() - t0
    plan_peak = peak.mb()
    blob = tiny_sample("x", 0)[schema.FRAMES]

    def rows():
        """The rows a conversion of the tiny samples gives, in CSV order as convert orders them."""
        pairs = list(pre_failed)
        for task in tasks:
            for v in task.videos:
                if v.source:
                    pairs.append((v.order, ManifestRow(v.video_id, v.label, v.label_name, v.source, task.index,
                                                       status=STATUS_OK, num_frames=2, fps=30.0,
                                                       src_width=340, src_height=256, width=FRAME_SIDE,
                                                       height=FRAME_SIDE, bytes=len(blob))))
                else:
                    pairs.append((v.order, v.row(task.index, Reason.text(Reason.MISSING, f"tried {v.tried}"))))
        return [row for _, row in sorted(pairs, key=lambda pair: pair[0])]

    out.mkdir(parents=True, exist_ok=True)
    manifest_rows = rows()
    counts = {t.index: sum(1 for v in t.videos if v.source) for t in tasks}
    # Each shard's digests, as its done marker would hold them (the manifest stores them all).
    markers = [SimpleNamespace(files={path.name: FileDigest(1 << 18, f"{t.index:064x}")
                                      for files in [ShardFiles.of(out, t.index)] for path in (files.record, files.db)})
               for t in tasks if counts[t.index]]
    times["manifest write"], _ = _timed(lambda: _write_manifest(manifest_rows, out, s, markers, csv=csv_path,
                                                                 labels=labels_path, labels_sha256=sha,
                                                                 input_sha256=given.sha256))
    return {"times": times, "plan peak MB": plan_peak, "peak MB": peak.mb(), "shards": len(tasks),
            "counts": {i: c for i, c in counts.items() if c}, "rows": len(manifest_rows),
            "ok": sum(r.status == STATUS_OK for r in manifest_rows)}


def manifest_step(root: str, repeats: int) -> dict:
    """Reading the manifest back: the whole table and its rows (``datatools.inspect``), and each
    read the trainer makes for every dataset it builds (every epoch, every rank); medians of
    ``repeats``, and the peak memory of the trainer's reads alone and of all."""
    from datatools.manifest import ok_shard_paths, read_manifest, rows_of
    from trainer.data import check_split_labels, clip_decoder

    cfg, zoo = _config(root), _config(root, ("data.resize=zoo",))
    split_dir = str(Path(root) / "train")
    trainer = {
        "trainer: check_split_labels": lambda: check_split_labels(cfg, "train"),
        "trainer: ok_shard_paths": lambda: ok_shard_paths(split_dir),
        "trainer: clip_decoder": lambda: clip_decoder(cfg, "train", FRAME_SIDE),
        "trainer: clip_decoder, data.resize=zoo": lambda: clip_decoder(zoo, "train", FRAME_SIDE),
    }
    whole = {
        "inspect: read_manifest, all columns": lambda: read_manifest(split_dir),
        "inspect: rows_of": lambda: rows_of(read_manifest(split_dir)),
    }
    peak = Peak()
    times = {name: statistics.median(_timed(fn)[0] for _ in range(repeats)) for name, fn in trainer.items()}
    times["trainer: manifest reads per dataset"] = sum(
        times[f"trainer: {k}"] for k in ("check_split_labels", "ok_shard_paths", "clip_decoder"))
    trainer_peak = peak.mb()
    times.update({name: statistics.median(_timed(fn)[0] for _ in range(repeats)) for name, fn in whole.items()})
    return {"times": times, "trainer peak MB": trainer_peak, "peak MB": peak.mb()}


def _config(root: str, rank_overrides: tuple[str, ...] = ()):
    from trainer.config import load_config
    return load_config(DEMO, [f"data.root={root}", "data.train_split=train", "data.val_split=val",
                              "data.short_side=0", f"data.crop_size={FRAME_SIDE}",
                              f"test.crop={FRAME_SIDE}", f"model.num_classes={CLASSES}", *rank_overrides])


def dataset_step(root: str, rank: int, ranks: int) -> dict:
    """One rank's training pipeline over the split: records(), create_dataset(), first batch."""
    from datatools.manifest import ok_shard_paths
    from datatools.openfiles import DESCRIPTORS_PER_SHARD, RESERVED_DESCRIPTORS
    from trainer.data import _READ_COLUMNS, create_dataset, records
    import mindspore.dataset as ds

    cfg = _config(root)
    peak, descriptors = Peak(), DescriptorPeak()
    times, note, rows, shards_read = {}, "", 0, len(ok_shard_paths(Path(root) / "train"))
    try:
        times["records()"], data = _timed(lambda: records(cfg, "train", training=True, rank=rank,
                                                          group_size=ranks))
        rows = data.get_dataset_size()
        times["create_dataset()"], data = _timed(lambda: create_dataset(cfg, "train", training=True,
                                                                        rank=rank, group_size=ranks))
    except ValueError as exc:           # datatools.openfiles: the hard limit is too low
        # MindDataset directly, with the trainer's arguments, over the shards the limit allows.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        shards = ok_shard_paths(Path(root) / "train")
        read = shards[:(hard - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_SHARD]
        note = (f"{str(exc).split(': raise')[0]}; MindDataset timed directly over the first "
                f"{len(read):,} of {len(shards):,} shards instead")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        times["MindDataset() direct"], data = _timed(lambda: ds.MindDataset(
            read, columns_list=_READ_COLUMNS, shuffle=True, num_shards=ranks, shard_id=rank))
        shards_read = len(read)
        rows = data.get_dataset_size()
    try:
        times["first batch"], _ = _timed(lambda: next(data.create_tuple_iterator(num_epochs=1,
                                                                                 output_numpy=True)))
    except RuntimeError as exc:
        note += f"; first batch failed: {str(exc).splitlines()[0][:200]}"
    return {"times": times, "peak MB": peak.mb(), "descriptors": descriptors.stop(), "note": note,
            "rows": rows, "shards read": shards_read}


def eval_step(root: str, rank: int, ranks: int) -> dict:
    """One rank's evaluation records read to their end, padded; then the same rows unpadded."""
    from datatools.manifest import ok_shard_paths
    from datatools.schema import NUM_FRAMES
    from trainer.data import _READ_COLUMNS, records
    import mindspore.dataset as ds

    cfg = _config(root)
    peak = Peak()
    times = {}

    def read(data) -> tuple[int, int]:
        rows = padded = 0
        for row in data.create_dict_iterator(num_epochs=1, output_numpy=True):
            rows += 1
            padded += int(row[NUM_FRAMES]) == 0
        return rows, padded

    times["records() padded"], data = _timed(lambda: records(cfg, "val", training=False, rank=rank,
                                                             group_size=ranks))
    times["read, padded"], (rows, padded) = _timed(lambda: read(data))
    shards = ok_shard_paths(Path(root) / "val")
    times["MindDataset() unpadded"], plain = _timed(lambda: ds.MindDataset(
        shards, columns_list=_READ_COLUMNS, shuffle=False, num_shards=ranks, shard_id=rank))
    times["read, unpadded"], (plain_rows, _) = _timed(lambda: read(plain))
    times["padding cost"] = (times["records() padded"] + times["read, padded"]
                             - times["MindDataset() unpadded"] - times["read, unpadded"])
    return {"times": times, "peak MB": peak.mb(), "rows": rows, "padded": padded, "unpadded rows": plain_rows}


# ----------------------------------------------------------------------------- the run


@dataclass
class SizeResult:
    rows: int
    val: int
    shards: int = 0
    val_shards: int = 0
    manifest_bytes: int = 0
    plan: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    dataset: dict[int, dict] = field(default_factory=dict)      # by rank
    eval: dict[int, dict] = field(default_factory=dict)


class Bench:
    def __init__(self, work: Path, videos_per_shard: int, missing: float, ranks: int, repeats: int) -> None:
        self.work, self.videos_per_shard, self.missing = work, videos_per_shard, missing
        self.ranks, self.repeats = ranks, repeats
        self.shards = Shards(work / "templates", videos_per_shard)

    def run(self, sizes: list[tuple[int, int]], measured: list[int]) -> list[SizeResult]:
        rows, val = sizes[-1]
        print(f"inputs: {rows:,} train rows, {val:,} val videos, {CLASSES} classes, "
              f"{self.missing:.0%} of the videos missing", flush=True)
        labels, train_csv, val_csv, videos = write_inputs(self.work, rows, val, self.missing)
        results = []
        for n, v in sizes:
            r = SizeResult(n, v)
            root = self.work / f"root-{n}"
            root.mkdir()
            os.link(labels, root / labels.name)
            csv_n = head_csv(train_csv, n, self.work / f"train-{n}.csv")
            self._say(f"[{n:,} rows] plan + manifest write")
            r.plan = _in_child(plan_step, str(csv_n), str(root / labels.name), str(videos), str(root / "train"),
                               self.videos_per_shard)
            r.shards = r.plan["shards"]
            r.manifest_bytes = (root / "train" / "manifest.parquet").stat().st_size
            self._say(f"[{n:,} rows] {r.plan['times']['plan total']:.1f} s planning, "
                      f"{r.shards:,} shards, manifest {r.manifest_bytes / 1e6:.1f} MB")
            self.shards.write(root / "train", r.plan.pop("counts"), f"{n:,} rows: shard files")
            val_csv_n = head_csv(val_csv, v, self.work / f"val-{v}.csv")
            val_plan = plan_step(str(val_csv_n), str(root / labels.name), str(videos), str(root / "val"),
                                 self.videos_per_shard)
            r.val_shards = val_plan["shards"]
            self.shards.write(root / "val", val_plan["counts"], f"{v:,} val videos: shard files")
            self._say(f"[{n:,} rows] manifest reads")
            r.manifest = _in_child(manifest_step, str(root), self.repeats)
            for rank in measured:
                self._say(f"[{n:,} rows] train pipeline, rank {rank}/{self.ranks}, {r.shards:,} shards")
                r.dataset[rank] = _in_child(dataset_step, str(root), rank, self.ranks)
                self._say(f"[{v:,} val] eval records, rank {rank}/{self.ranks}, {r.val_shards:,} shards")
                r.eval[rank] = _in_child(eval_step, str(root), rank, self.ranks)
            results.append(r)
            shutil.rmtree(root / "train")       # the disk: the next size writes its own
        return results

    def _say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


# ----------------------------------------------------------------------------- the summary


def _growth(values: list[float], counts: list[int], unit: str = "s") -> str:
    """The exponent k of value ~ count^k between the smallest and the largest size measured
    (not flagged when the largest time is below SMALL_SECONDS: noise and fixed costs)."""
    pairs = [(c, v) for c, v in zip(counts, values) if v is not None and v > 0]
    if len(pairs) < 2 or pairs[0][0] == pairs[-1][0]:
        return "n/a"
    (c0, v0), (c1, v1) = pairs[0], pairs[-1]
    k = math.log(v1 / v0) / math.log(c1 / c0)
    if unit == "s" and v1 < SMALL_SECONDS:
        return f"{k:.2f} (< {SMALL_SECONDS} s)"
    return f"{k:.2f}" + ("" if k <= LINEAR_SLACK else " **faster than linear**")


def _median_over(by_rank: dict[int, dict], key: str):
    values = [d["times"][key] for d in by_rank.values() if key in d["times"]]
    return statistics.median(values) if values else None


def _cell(value, unit: str = "s") -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:.0f}"


def print_summary(results: list[SizeResult], sizes, fractions, ranks: int, measured: list[int],
                  seconds: float) -> None:
    rows = [r.rows for r in results]
    shards = [r.shards for r in results]
    vals = [r.val for r in results]
    head = " | ".join(f"{f} ({r.rows:,} rows, {r.shards:,} shards)" for f, r in zip(fractions, results))
    lines = [f"\n| step | {head} | growth exponent |", "|---|" + "---|" * len(results) + "---|"]

    def row(name: str, values: list, counts: list[int], unit: str = "s") -> None:
        lines.append(f"| {name} | " + " | ".join(_cell(v, unit) for v in values)
                     + f" | {_growth(values, counts, unit)} |")

    for key in ("read CSV", "InputId", "plan_shards", "markers + resume", "plan total"):
        row(f"plan: {key} (s)", [r.plan["times"][key] for r in results], rows)
    row("plan: peak memory (MB)", [r.plan["plan peak MB"] for r in results], rows, "MB")
    row("manifest: write (s)", [r.plan["times"]["manifest write"] for r in results], rows)
    row("manifest: bytes on disk (MB)", [r.manifest_bytes / 1e6 for r in results], rows, "MB")
    for key in r_keys(results, "manifest"):
        row(f"{key} (s)", [r.manifest["times"][key] for r in results], rows)
    row("trainer: manifest reads, peak memory (MB)", [r.manifest["trainer peak MB"] for r in results], rows, "MB")
    row("manifest: all reads, peak memory (MB)", [r.manifest["peak MB"] for r in results], rows, "MB")
    read = [min(d["shards read"] for d in r.dataset.values()) for r in results]
    lines.append("| train rank: shards read | " + " | ".join(f"{n:,}" for n in read) + " | |")
    lines.append("| train rank: its rows | " + " | ".join(
        f"{statistics.median(d['rows'] for d in r.dataset.values()):,.0f}" for r in results) + " | |")
    for key in ("records()", "create_dataset()", "MindDataset() direct", "first batch"):
        values = [_median_over(r.dataset, key) for r in results]
        if any(v is not None for v in values):
            row(f"train rank: {key} (s)", values, read)
    row("train rank: peak memory (MB)", [statistics.median(d["peak MB"] for d in r.dataset.values())
                                         for r in results], read, "MB")
    row("train rank: most descriptors open", [statistics.median(d["descriptors"] for d in r.dataset.values())
                                         for r in results], read, "n")
    lines.append(f"| eval ({', '.join(f'{v:,} videos, {r.val_shards} shards' for v, r in zip(vals, results))}) |"
                 + " |" * len(results) + " |")
    for key in ("records() padded", "read, padded", "MindDataset() unpadded", "read, unpadded", "padding cost"):
        row(f"eval rank: {key} (s)", [_median_over(r.eval, key) for r in results], vals)
    print("\n".join(lines))
    for r in results:
        for rank, d in r.dataset.items():
            if d["note"]:
                print(f"note, {r.rows:,} rows, rank {rank}: {d['note']}")
        print(f"eval at {r.val:,} videos (the ok ones): " + "; ".join(
            f"rank {rank} reads {e['rows']:,} rows, {e['padded']} of them padding ({e['unpadded rows']:,} "
            f"unpadded)" for rank, e in r.eval.items()))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"ranks measured: {', '.join(map(str, measured))} of {ranks} (medians); open files here: "
          f"soft {soft}, hard {hard}; growth exponent k: time ~ size^k between the smallest and the "
          f"largest size (rows for plan and manifest, shards for the train rank, val videos for eval); "
          f"above {LINEAR_SLACK} is flagged")
    print(f"total {seconds / 60:.1f} min")


def r_keys(results: list[SizeResult], step: str) -> list[str]:
    return list(getattr(results[0], step)["times"])


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
