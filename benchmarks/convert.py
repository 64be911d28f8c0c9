"""Converter, JPEG and h264, vs the reference approach vs the decode+encode limit, on the same videos.

- reference: the model zoo's video2pkl.py approach, per video ``ffmpeg -i v.mp4 -q 0 f/%06d.jpg``
  (source size), then its JPEG bytes pickled with protocol 2 into one file per video, as that
  script wrote them (``benchmarks/footage.py``: ~1.5x the JPEG bytes);
- ours jpeg / ours h264: ``datatools.convert.convert`` (short side 256; JPEG q90 4:2:0, or h264
  at the converter's x264 settings: crf 18, GOP 8, veryfast, fastdecode; MindRecord shards,
  verification and manifest included), one worker, one decoder thread;
- limit jpeg / limit h264: PyAV decode + resize + encode in memory (``datatools.video.encode_video``,
  one decoder thread), nothing written: what ours would cost with free I/O and bookkeeping.

Per approach: videos per wall second, CPU seconds per video (this process and its children),
stored bytes per frame, and the PSNR of the stored frames against the same resized frames before
encoding (luma and RGB, ``benchmarks/quality.py``; measured after the timed runs, not for the
reference, which stores source-size frames). Ratios are medians of each repeat's ratio (the
approaches run back to back in every repeat, so the machine's load moves them alike).

The videos are those of ``--videos DIR`` (every video file below it, any layout) or, by default,
synthetic but textured ones (a camera pan over multi-scale noise with a moving object and sensor
noise, h264 crf 20) at a few resolutions. Either way they are grouped by source resolution, one
table row each.

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

from dataclasses import dataclass

import av
import cv2
import numpy as np

from benchmarks.footage import bench_settings, dump_zoo_pickle, find_videos, write_video_list
from benchmarks.quality import video_psnrs
from datatools.cli import parse_size, positive_int, run_cli
from datatools.convert import convert
from datatools.manifest import H264, JPEG, Settings
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


@dataclass(frozen=True)
class Output:
    """What one run of an approach stored, over its videos."""

    frames: int
    stored: int             # frame bytes: JPEGs or h264 streams
    file: int | None        # bytes of its files as allocated on disk; None: nothing written


def measure(fn, *args) -> tuple[float, float, Output]:
    """(wall s, CPU s of this process and its finished children, fn's result)."""
    def cpu() -> float:
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + child.ru_utime + child.ru_stime

    wall, used = time.perf_counter(), cpu()
    result = fn(*args)
    return time.perf_counter() - wall, cpu() - used, result


def run_reference(videos: list[Path], work: Path) -> Output:
    """ffmpeg -q 0 frame dumps pickled per video as video2pkl.py did (files: the pickles)."""
    out = work / "ref"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    frames = jpeg_bytes = pickle_bytes = 0
    for v in videos:
        frames_dir = out / v.stem
        frames_dir.mkdir()
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(v), "-q", "0",
                        str(frames_dir / "%06d.jpg")], check=True)
        jpegs = [p.read_bytes() for p in sorted(frames_dir.glob("*.jpg"))]
        frames += len(jpegs)
        jpeg_bytes += sum(map(len, jpegs))
        pickle_bytes += dump_zoo_pickle(out / f"{v.stem}.pkl", v.stem, 0, jpegs)
        shutil.rmtree(frames_dir)
    return Output(frames, jpeg_bytes, pickle_bytes)


def run_ours(listing: Path, labels: Path, root: Path, work: Path, settings: Settings) -> Output:
    """datatools.convert with one worker (in this process); files: the shards as allocated."""
    out = work / f"ours-{settings.codec}"
    shutil.rmtree(out, ignore_errors=True)
    result = convert(None, root, labels, out, settings, workers=1, video_list=str(listing))
    ok = [r for r in result.rows if r.ok]
    return Output(sum(r.num_frames for r in ok), sum(r.bytes for r in ok), result.real_bytes)


def run_limit(videos: list[Path], settings: Settings) -> Output:
    """Decoding and encoding in memory, no file."""
    encoded = [encode_video(v, settings, threads=1).frames for v in videos]
    return Output(sum(map(len, encoded)), sum(sum(map(len, frames)) for frames in encoded), None)


def _resolutions(text: str) -> list[tuple[int, int]]:
    """argparse type: comma-separated WxH sizes."""
    return [parse_size(size) for size in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convert", description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=Path, default=None,
                   help="a folder of your own videos (every video file below it); default: synthetic "
                        "videos made by the next three options")
    p.add_argument("--resolutions", type=_resolutions, default=DEFAULT_RESOLUTIONS,
                   help=f"synthetic: comma-separated WxH list (default {DEFAULT_RESOLUTIONS})")
    p.add_argument("--videos-per-res", type=positive_int, default=4, help="synthetic: videos per resolution")
    p.add_argument("--frames", type=positive_int, default=90, help="synthetic: frames per video")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the jpeg rows")
    p.add_argument("--crf", type=int, default=None, help="x264 rate factor of the h264 rows (default: the "
                                                         "converter's)")
    p.add_argument("--gop", type=int, default=None, help="h264 keyframe interval (default: the converter's)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p


def main(args: argparse.Namespace) -> int:
    if args.videos is not None:
        find_videos(args.videos)        # a clear error before any work
    x264 = {k: v for k, v in (("crf", args.crf), ("gop", args.gop)) if v is not None}
    codecs = {JPEG: bench_settings(JPEG, short_side=args.short_side, quality=args.quality),
              H264: bench_settings(H264, short_side=args.short_side, **x264)}
    h264 = codecs[H264]
    has_ffmpeg = shutil.which("ffmpeg") is not None
    if not has_ffmpeg:
        print("reference approach SKIPPED: the ffmpeg CLI is not on PATH "
              "(install it, e.g. apt-get install -y ffmpeg, to measure it)")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp = Path(tmp)
        root = args.videos or make_videos(tmp / "synthetic", args.resolutions, args.videos_per_res, args.frames)
        groups = by_resolution(find_videos(root))
        print(f"{sum(map(len, groups.values()))} videos from {root} in {len(groups)} source resolution(s), "
              f"{args.repeats} repeats (medians), 1 worker, 1 decoder thread; ours/limit: short side "
              f"{args.short_side}, JPEG q{args.quality} 4:2:0 or h264 crf {h264.crf} GOP {h264.gop} "
              f"{h264.preset}{' fastdecode' if h264.fastdecode else ''}\n")
        print("| source | approach | videos/s (wall) | CPU s/video | KB/frame | PSNR Y dB | PSNR RGB dB "
              "| frames KB/video | file KB/video |")
        print("|---|---|---|---|---|---|---|---|---|")
        results = {}
        for size, videos in groups.items():
            listing, labels = write_video_list(root, {v: size for v in videos}, tmp / "lists" / size)
            runs = {"reference": (run_reference, videos, tmp / "work")}
            for codec, settings in codecs.items():
                runs[f"ours {codec}"] = (run_ours, listing, labels, root, tmp / "work", settings)
                runs[f"limit {codec}"] = (run_limit, videos, settings)
            measured = _interleaved({name: run for name, run in runs.items()
                                     if has_ffmpeg or name != "reference"}, args.repeats)
            quality = {codec: np.concatenate([video_psnrs(v, settings)[1] for v in videos]).mean(axis=0)
                       for codec, settings in codecs.items()}
            n = len(videos)
            for name, repeats in measured.items():
                wall, cpu = (statistics.median(r[i] for r in repeats) for i in (0, 1))
                out = repeats[0][2]
                psnr = quality.get(name.split()[-1]) if name != "reference" else None
                psnr_text = "- | -" if psnr is None else f"{psnr[0]:.1f} | {psnr[1]:.1f}"
                on_disk = "- (in memory)" if out.file is None else f"{out.file / n / 1e3:.0f}"
                print(f"| {size} | {name} | {n / wall:.2f} | {cpu / n:.3f} | {out.stored / out.frames / 1e3:.1f} "
                      f"| {psnr_text} | {out.stored / n / 1e3:.0f} | {on_disk} |", flush=True)
            results[size] = (measured, quality)
        _print_ratios(results)
    return 0


def _interleaved(runs: dict[str, tuple], repeats: int) -> dict[str, list[tuple[float, float, Output]]]:
    """Per approach, the (wall s, CPU s, output) of each of ``repeats`` rounds; each round runs
    every approach once, back to back, so the machine's load moves them alike."""
    measured = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (fn, *fn_args) in runs.items():
            measured[name].append(measure(fn, *fn_args))
    return measured


def _cpu_ratio(measured: dict, a: str, b: str) -> float:
    """Median over rounds of a's CPU time over b's in the same round."""
    return statistics.median(x[1] / y[1] for x, y in zip(measured[a], measured[b]))


def _print_ratios(results: dict[str, tuple[dict, dict]]) -> None:
    print("\n| source | ours/reference videos per CPU-s | ours/reference JPEG bytes | "
          "ours/reference file bytes | ours/limit CPU time |")
    print("|---|---|---|---|---|")
    for size, (measured, _) in results.items():
        ours, ref = measured["ours jpeg"][0][2], measured.get("reference")
        vs_ref = (f"{_cpu_ratio(measured, 'reference', 'ours jpeg'):.2f}x | {ours.stored / ref[0][2].stored:.3f} "
                  f"| {ours.file / ref[0][2].file:.3f}" if ref else "skipped | skipped | skipped")
        print(f"| {size} | {vs_ref} | {_cpu_ratio(measured, 'ours jpeg', 'limit jpeg'):.2f} |")
    print("\n| source | h264/JPEG converter CPU | h264/JPEG frame bytes | h264/JPEG file bytes | "
          "h264 ours/limit CPU time | h264 ours/reference videos per CPU-s | h264−JPEG PSNR Y, RGB (dB) |")
    print("|---|---|---|---|---|---|---|")
    for size, (measured, quality) in results.items():
        jpeg, h264 = measured["ours jpeg"][0][2], measured["ours h264"][0][2]
        vs_ref = f"{_cpu_ratio(measured, 'reference', 'ours h264'):.2f}x" if "reference" in measured else "skipped"
        delta = quality[H264] - quality[JPEG]
        print(f"| {size} | {_cpu_ratio(measured, 'ours h264', 'ours jpeg'):.2f} | {h264.stored / jpeg.stored:.3f} "
              f"| {h264.file / jpeg.file:.3f} | {_cpu_ratio(measured, 'ours h264', 'limit h264'):.2f} | {vs_ref} "
              f"| {delta[0]:+.1f}, {delta[1]:+.1f} |")


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
