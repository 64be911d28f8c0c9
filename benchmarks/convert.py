"""Converter vs the reference approach vs the decode+encode limit, on the same videos in one run.

- reference: the model zoo's video2pkl.py approach, per video ``ffmpeg -i v.mp4 -q 0 f/%06d.jpg``
  (source size) then the JPEG bytes pickled into one file per video;
- ours: ``datatools.convert.convert`` (short side 256, JPEG q90 4:2:0, MindRecord shards,
  verification and manifest included), one worker;
- limit: PyAV decode + resize + JPEG encode in memory (``datatools.video.encode_video``), nothing
  written: what ours would cost with free I/O and bookkeeping.

No real Kinetics is available here, so the videos are synthetic but textured (a camera pan over
multi-scale noise with a moving object and sensor noise, h264 crf 20), at a few resolutions.
Every approach runs with one worker; times are medians over ``--repeats``.

    .venv/bin/python -m benchmarks.convert [--videos-per-res 4] [--frames 90] [--repeats 3]
"""
from __future__ import annotations

import argparse
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from datatools.cli import parse_size, positive_int, run_cli
from datatools.convert import convert
from datatools.labels import write_labels
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


def make_videos(root: Path, resolutions: list[tuple[int, int]], per_res: int, frames: int) -> dict:
    """``root/videos/res<W>x<H>/<id>_000000_000010.mp4`` and one CSV per resolution."""
    csvs = {}
    for w, h in resolutions:
        label = f"res{w}x{h}"
        lines = ["label,youtube_id,time_start,time_end,split"]
        for j in range(per_res):
            ytid = f"b{w}x{h}v{j}"
            write_mp4(root / "videos" / label / f"{ytid}_000000_000010.mp4",
                      textured_video(w, h, frames, seed=w * 1000 + j))
            lines.append(f"{label},{ytid},0,10,train")
        csvs[(w, h)] = root / f"{label}.csv"
        csvs[(w, h)].write_text("\n".join(lines) + "\n")
    write_labels([f"res{w}x{h}" for w, h in resolutions], root / "labels.txt")
    return csvs


def videos_of(csv_path: Path, root: Path) -> list[Path]:
    label = csv_path.stem
    return sorted((root / "videos" / label).glob("*.mp4"))


def measure(fn, *args) -> tuple[float, float, object]:
    """(wall s, CPU s of this process and its finished children, fn's result)."""
    def cpu() -> float:
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + child.ru_utime + child.ru_stime

    wall, used = time.perf_counter(), cpu()
    result = fn(*args)
    return time.perf_counter() - wall, cpu() - used, result


def run_reference(videos: list[Path], work: Path) -> int:
    """Pickle bytes for ffmpeg -q 0 frame dumps pickled per video."""
    out = work / "ref"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for v in videos:
        frames_dir = out / v.stem
        frames_dir.mkdir()
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(v), "-q:v", "0",
                        str(frames_dir / "%06d.jpg")], check=True)
        jpegs = [p.read_bytes() for p in sorted(frames_dir.glob("*.jpg"))]
        with open(out / f"{v.stem}.pkl", "wb") as f:
            pickle.dump((v.stem, 0, jpegs), f, protocol=pickle.HIGHEST_PROTOCOL)
        shutil.rmtree(frames_dir)
    return sum(p.stat().st_blocks * 512 for p in out.glob("*.pkl"))


def run_ours(csv_path: Path, root: Path, work: Path, settings: Settings) -> int:
    """Allocated shard bytes for datatools.convert with one worker (in this process)."""
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    return convert(csv_path, root / "videos", root / "labels.txt", out, settings, workers=1).real_bytes


def run_limit(videos: list[Path], settings: Settings) -> int:
    return sum(sum(map(len, encode_video(v, settings.short_side, settings.quality).jpegs))
               for v in videos)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convert", description=__doc__.split("\n")[0])
    p.add_argument("--resolutions", default=DEFAULT_RESOLUTIONS,
                   help=f"comma-separated WxH list (default {DEFAULT_RESOLUTIONS})")
    p.add_argument("--videos-per-res", type=positive_int, default=4)
    p.add_argument("--frames", type=positive_int, default=90, help="frames per video")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p


def main(args: argparse.Namespace) -> int:
    resolutions = [parse_size(r) for r in args.resolutions.split(",")]
    has_ffmpeg = shutil.which("ffmpeg") is not None
    if not has_ffmpeg:
        print("reference approach SKIPPED: the ffmpeg CLI is not on PATH "
              "(install it, e.g. apt-get install -y ffmpeg, to measure it)")
    settings = Settings(short_side=args.short_side, quality=args.quality, max_fps=None,
                        videos_per_shard=64, seed=0)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        root = Path(tmp)
        csvs = make_videos(root, resolutions, args.videos_per_res, args.frames)
        print(f"{args.videos_per_res} videos x {args.frames} frames per resolution, "
              f"{args.repeats} repeats (median), 1 worker; ours/limit: short side "
              f"{args.short_side}, q{args.quality} 4:2:0\n")
        print("| source | approach | videos/s (wall) | videos/CPU-s | KB/video on disk |")
        print("|---|---|---|---|---|")
        ratios = []
        for (w, h), csv_path in csvs.items():
            videos = videos_of(csv_path, root)
            runs = {"ours": (run_ours, csv_path, root, root / "work", settings),
                    "limit": (run_limit, videos, settings)}
            if has_ffmpeg:
                runs["reference"] = (run_reference, videos, root / "work")
            stats = {}
            for name, (fn, *fn_args) in runs.items():
                repeats = [measure(fn, *fn_args) for _ in range(args.repeats)]
                stats[name] = (statistics.median(r[0] for r in repeats),
                               statistics.median(r[1] for r in repeats), repeats[0][2])
            n = len(videos)
            for name in ("reference", "ours", "limit"):
                if name in stats:
                    wall, cpu, size = stats[name]
                    kb = "- (in memory)" if name == "limit" else f"{size / n / 1e3:.0f}"
                    print(f"| {w}x{h} | {name} | {n / wall:.2f} | {n / cpu:.2f} | {kb} |")
            ratios.append(((w, h), stats))
        print("\n| source | ours/reference videos per CPU-s | ours/reference bytes | "
              "ours/limit CPU time |")
        print("|---|---|---|---|")
        for (w, h), stats in ratios:
            ours_cpu, ref = stats["ours"][1], stats.get("reference")
            speed = f"{ref[1] / ours_cpu:.2f}x" if ref else "skipped"
            size = f"{stats['ours'][2] / ref[2]:.3f}" if ref else "skipped"
            print(f"| {w}x{h} | {speed} | {size} | {ours_cpu / stats['limit'][1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
