"""Converter vs the reference approach vs the decode+encode limit, on the same videos in one run.

- reference: the model zoo's video2pkl.py approach, per video ``ffmpeg -i v.mp4 -q 0 f/%06d.jpg``
  (source size), then its JPEG bytes pickled with protocol 2 into one file per video, as that
  script wrote them (``benchmarks/footage.py``: ~1.5x the JPEG bytes);
- ours: ``datatools.convert.convert`` (short side 256, JPEG q90 4:2:0, MindRecord shards,
  verification and manifest included), one worker;
- limit: PyAV decode + resize + JPEG encode in memory (``datatools.video.encode_video``), nothing
  written: what ours would cost with free I/O and bookkeeping.

The videos are those of ``--videos DIR`` (every video file below it, any layout) or, by default,
synthetic but textured ones (a camera pan over multi-scale noise with a moving object and sensor
noise, h264 crf 20) at a few resolutions. Either way they are grouped by source resolution, one
table row each. Every approach runs with one worker; times are medians over ``--repeats``.

    .venv/bin/python -m benchmarks.convert --videos ~/my_clips [--repeats 3]
    .venv/bin/python -m benchmarks.convert [--resolutions 340x256,640x360] [--videos-per-res 4] [--frames 90]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.footage import dump_zoo_pickle, find_videos, write_video_list
from datatools.cli import parse_size, positive_int, run_cli
from datatools.convert import convert
from datatools.manifest import Settings
from datatools.synth import write_mp4
from datatools.video import encode_video

DEFAULT_RESOLUTIONS = "340x256,640x360,1280x720"


def textured_video(width: int, height: int, num_frames: int, seed: int) -> np.ndarray:
    """A pan over multi-scale colour noise with a moving disc and per-frame sensor noise."""
    rng = np.random.default_rng(seed)
    big_w, big_h = width + 2 * num_frames, height + num_frames
    canvas = np.zeros((big_h, big_w, 3), np.float32)
    for cell, amplitude in ((64, 60.0), (16, 30.0), (4, 15.0)):
        coarse = rng.normal(0, amplitude, (big_h // cell + 2, big_w // cell + 2, 3)).astype(np.float32)
        canvas += cv2.resize(coarse, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
    canvas += rng.uniform(60, 190, 3).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    radius = height // 8
    for i in range(num_frames):
        frame = canvas[i:i + height, 2 * i:2 * i + width].copy()
        cx, cy = int(width * (0.2 + 0.6 * i / num_frames)), int(height * 0.5)
        cv2.circle(frame, (cx, cy), radius, (230.0, 60.0, 40.0), -1)
        frame += rng.normal(0, 3, frame.shape).astype(np.float32)
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def make_videos(root: Path, resolutions: list[tuple[int, int]], per_res: int, frames: int) -> Path:
    """``root/<W>x<H>/v<j>.mp4``: ``per_res`` textured videos per resolution; ``root``."""
    for w, h in resolutions:
        for j in range(per_res):
            write_mp4(root / f"{w}x{h}" / f"v{j}.mp4", textured_video(w, h, frames, seed=w * 1000 + j))
    return root


def by_resolution(videos: list[Path]) -> dict[str, list[Path]]:
    """The videos by ``WxH`` of their first video stream; those PyAV cannot open as video are
    left out, with a line saying so."""
    groups, unreadable = defaultdict(list), []
    for path in videos:
        try:
            with av.open(str(path)) as container:
                codec = container.streams.video[0].codec_context
                groups[f"{codec.width}x{codec.height}"].append(path)
        except (av.error.FFmpegError, IndexError):
            unreadable.append(path.name)
    if unreadable:
        print(f"left out {len(unreadable)} file(s) with no readable video stream, e.g. {unreadable[:3]}")
    return dict(sorted(groups.items(), key=lambda item: _pixels(item[0])))


def _pixels(size: str) -> int:
    w, h = parse_size(size)
    return w * h


def measure(fn, *args) -> tuple[float, float, object]:
    """(wall s, CPU s of this process and its finished children, fn's result)."""
    def cpu() -> float:
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + child.ru_utime + child.ru_stime

    wall, used = time.perf_counter(), cpu()
    result = fn(*args)
    return time.perf_counter() - wall, cpu() - used, result


def run_reference(videos: list[Path], work: Path) -> tuple[int, int]:
    """(JPEG bytes, pickle bytes) of ffmpeg -q 0 frame dumps pickled per video as video2pkl.py did."""
    out = work / "ref"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    jpeg_bytes = pickle_bytes = 0
    for v in videos:
        frames_dir = out / v.stem
        frames_dir.mkdir()
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(v), "-q", "0",
                        str(frames_dir / "%06d.jpg")], check=True)
        jpegs = [p.read_bytes() for p in sorted(frames_dir.glob("*.jpg"))]
        jpeg_bytes += sum(map(len, jpegs))
        pickle_bytes += dump_zoo_pickle(out / f"{v.stem}.pkl", v.stem, 0, jpegs)
        shutil.rmtree(frames_dir)
    return jpeg_bytes, pickle_bytes


def run_ours(listing: Path, labels: Path, root: Path, work: Path, settings: Settings) -> tuple[int, int]:
    """(JPEG bytes, allocated shard bytes) of datatools.convert with one worker (in this process)."""
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    result = convert(None, root, labels, out, settings, workers=1, video_list=str(listing))
    return sum(r.bytes for r in result.rows if r.ok), result.real_bytes


def run_limit(videos: list[Path], settings: Settings) -> tuple[int, None]:
    """(JPEG bytes, no file) of decoding and encoding in memory."""
    return sum(sum(map(len, encode_video(v, settings).frames))
               for v in videos), None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convert", description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=Path, default=None,
                   help="a folder of your own videos (every video file below it); default: synthetic "
                        "videos made by the next three options")
    p.add_argument("--resolutions", default=DEFAULT_RESOLUTIONS,
                   help=f"synthetic: comma-separated WxH list (default {DEFAULT_RESOLUTIONS})")
    p.add_argument("--videos-per-res", type=positive_int, default=4, help="synthetic: videos per resolution")
    p.add_argument("--frames", type=positive_int, default=90, help="synthetic: frames per video")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p


def main(args: argparse.Namespace) -> int:
    resolutions = [parse_size(r) for r in args.resolutions.split(",")]
    settings = Settings(short_side=args.short_side, quality=args.quality, max_fps=None,
                        videos_per_shard=64, seed=0)
    settings.check()
    has_ffmpeg = shutil.which("ffmpeg") is not None
    if not has_ffmpeg:
        print("reference approach SKIPPED: the ffmpeg CLI is not on PATH "
              "(install it, e.g. apt-get install -y ffmpeg, to measure it)")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp = Path(tmp)
        root = args.videos or make_videos(tmp / "synthetic", resolutions, args.videos_per_res, args.frames)
        groups = by_resolution(find_videos(root))
        print(f"{sum(map(len, groups.values()))} videos from {root} in {len(groups)} source resolution(s), "
              f"{args.repeats} repeats (median), 1 worker; ours/limit: short side {args.short_side}, "
              f"q{args.quality} 4:2:0\n")
        print("| source | approach | videos/s (wall) | videos/CPU-s | JPEG KB/video | file KB/video |")
        print("|---|---|---|---|---|---|")
        results = {}
        for size, videos in groups.items():
            listing, labels = write_video_list(root, {v: size for v in videos}, tmp / "lists" / size)
            runs = {"reference": (run_reference, videos, tmp / "work"),
                    "ours": (run_ours, listing, labels, root, tmp / "work", settings),
                    "limit": (run_limit, videos, settings)}
            stats = _interleaved_medians({name: run for name, run in runs.items()
                                          if has_ffmpeg or name != "reference"}, args.repeats)
            for name, (wall, cpu, (jpeg, file)) in stats.items():
                n = len(videos)
                on_disk = "- (in memory)" if file is None else f"{file / n / 1e3:.0f}"
                print(f"| {size} | {name} | {n / wall:.2f} | {n / cpu:.2f} | {jpeg / n / 1e3:.0f} "
                      f"| {on_disk} |")
            results[size] = stats
        _print_ratios(results)
    return 0


def _interleaved_medians(runs: dict[str, tuple], repeats: int) -> dict[str, tuple]:
    """Per approach, median wall and CPU seconds of ``repeats`` runs, and the bytes its first run
    reported. Each repeat runs every approach once, back to back, so the machine's load moves
    them alike."""
    measured = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (fn, *fn_args) in runs.items():
            measured[name].append(measure(fn, *fn_args))
    return {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[0][2])
            for name, rs in measured.items()}


def _print_ratios(results: dict[str, dict]) -> None:
    print("\n| source | ours/reference videos per CPU-s | ours/reference JPEG bytes | "
          "ours/reference file bytes | ours/limit CPU time |")
    print("|---|---|---|---|---|")
    for size, stats in results.items():
        (_, ours_cpu, (ours_jpeg, ours_file)), ref = stats["ours"], stats.get("reference")
        vs_ref = (f"{ref[1] / ours_cpu:.2f}x | {ours_jpeg / ref[2][0]:.3f} | {ours_file / ref[2][1]:.3f}"
                  if ref else "skipped | skipped | skipped")
        print(f"| {size} | {vs_ref} | {ours_cpu / stats['limit'][1]:.2f} |")


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
