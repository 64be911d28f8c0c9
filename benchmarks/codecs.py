"""The JPEG/h264 trade-off grid on your footage: bytes, quality, encoder and loader CPU per form.

    python -m benchmarks.codecs --videos ~/clips [--repeats 5] [--clips 30]

``benchmarks.convert`` and ``benchmarks.loader`` compare the converter's two codecs at their
settings (converter CPU, loader CPU against each codec's decode limit, the mp4 peer); this one
walks the settings. For each video, decoded once, turned upright and resized to short side 256
(``datatools.video``, as the converter does), a row per stored form: JPEG q90 from the planes (the
converter's route for 4:2:0 BT.601 sources) and from RGB (its route for other sources), and h264
at a grid of crf, GOP and fastdecode (``H264_GRID``, preset veryfast):

- bytes per frame, and how many times fewer than JPEG q90;
- PSNR (dB, the mean over frames) of the decoded frames against the resized frames before
  encoding, luma and RGB (``benchmarks/quality.py``: both codecs on the same full-range scale);
- encoder CPU per frame (from the resized frames; decoding the source is the same for all);
- loader CPU per training clip (T=7 segments × N=5 frames, 224 crop, short side 256:
  ``trainer.data.TrainClips`` with its checksum, sampling and crop/flip), the forms interleaved
  over ``--repeats`` and the median taken, and its ratio to JPEG's.

A last row is the peer (``benchmarks/peer.py``): the same resized frames as a 256p mp4 (libx264
defaults, a keyframe every 16 frames, as MMAction2's resized videos), read as MMAction2's PyAV
decoder reads it; its quality is not measured (``nan``).

Everything runs in this process on one thread; pin it to a core (``taskset -c 1``) on a loaded
machine. The h264 loader decodes each segment's run from its keyframe: ~(gop−1)/2 + N frames.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.footage import find_videos
from benchmarks.peer import PeerClips, write_peer
from benchmarks.quality import frame_psnrs, reference
from datatools.cli import positive_int, run_cli
from datatools.h264 import H264Encoder
from datatools.manifest import H264, JPEG
from datatools.schema import pack_frames, sample_checksum
from datatools.video import (VideoError, encode_frame, error_line, even_size, frame_planes, iter_frames,
                             orientation, stored_size)
from trainer.data import ClipDecoder, ClipSampler, TrainClips
from trainer.heap import keep_large_buffers

# (crf, gop, fastdecode): the default first, then the trade-offs worth seeing.
H264_GRID = ((18, 8, True), (18, 8, False), (18, 4, True), (18, 16, True), (23, 8, True),
             (23, 16, True), (23, 16, False))
SHORT_SIDE, QUALITY, SEGMENTS, FRAMES, CROP = 256, 90, 7, 5, 224
# What a bad video makes the decoder, cv2 or the allocator raise (as datatools.video's
# encode_or_reason counts them): that video is skipped with its reason, the others measured.
BAD_VIDEO_ERRORS = (VideoError, av.error.FFmpegError, cv2.error, MemoryError)
PEER = "peer: 256p mp4, seek/segment"


def _cpu(fn):
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def measure(path: Path, repeats: int, clips: int) -> list[tuple]:
    """Rows (form, KB/frame, x fewer bytes, PSNR Y, PSNR RGB, encode ms/frame, ms/clip, x JPEG)."""
    decoded = list(iter_frames(path, threads=1))
    fps, frames = decoded[0][0].fps, [frame for _, frame in decoded]
    turn = orientation(frames[0])
    size = stored_size(*turn.size(frames[0].width, frames[0].height), SHORT_SIDE)
    forms: dict[str, tuple[str, list[bytes], np.ndarray, float]] = {}
    references = [reference(f, size, turn) for f in frames]
    for route in ("planes", "rgb"):
        inputs = frames if route == "planes" else [
            av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24") for f in frames]
        seconds, jpegs = _cpu(lambda: [encode_frame(f, size, QUALITY, turn) for f in inputs])
        forms[f"jpeg q{QUALITY} ({route})"] = (JPEG, jpegs, frame_psnrs(JPEG, jpegs, references).mean(0),
                                               seconds / len(frames))
    even = even_size(*size)
    planes = [frame_planes(f, even, turn) for f in frames]
    references = references if even == size else [reference(f, even, turn) for f in frames]
    for crf, gop, fastdecode in H264_GRID:
        encoder = H264Encoder(*even, fps, crf, gop, "veryfast", fastdecode)
        seconds, packets = _cpu(lambda: [p for y in planes for p in encoder.encode(*y)] + encoder.finish())
        forms[f"h264 crf{crf} gop{gop}{'' if fastdecode else ' no-fastdecode'}"] = (
            H264, packets, frame_psnrs(H264, packets, references).mean(0), seconds / len(frames))
    sampler = ClipSampler(SEGMENTS, FRAMES)
    readers = {name: _record_reader(codec, data, sampler) for name, (codec, data, *_) in forms.items()}
    buffer = io.BytesIO()
    write_peer(planes, even, fps, buffer)
    mp4 = buffer.getvalue()
    peer = PeerClips(sampler, SHORT_SIDE, CROP)
    readers[PEER] = lambda epoch: peer(mp4, np.random.default_rng([0, epoch]))
    loader = _loader_cpu(readers, repeats, clips)
    jpeg_bytes = sum(map(len, forms[f"jpeg q{QUALITY} (planes)"][1]))
    jpeg_clip = loader[f"jpeg q{QUALITY} (planes)"]
    rows = [(name, sum(map(len, data)) / len(data) / 1e3, jpeg_bytes / sum(map(len, data)), psnr[0], psnr[1],
             encode * 1e3, loader[name], loader[name] / jpeg_clip)
            for name, (_, data, psnr, encode) in forms.items()]
    return rows + [(PEER, len(mp4) / len(frames) / 1e3, jpeg_bytes / len(mp4), float("nan"), float("nan"),
                    float("nan"), loader[PEER], loader[PEER] / jpeg_clip)]


def _record_reader(codec: str, data: list[bytes], sampler: ClipSampler):
    """epoch -> one training clip from a stored sample of ``data``, as the loader's map op makes it."""
    blob, offsets = pack_frames(data)
    row = (np.frombuffer(blob, "S1"), offsets, np.int32(len(data)), np.int32(0), np.array("v"),
           np.int64(sample_checksum("v", 0, offsets, blob)))
    decoder = ClipDecoder(SHORT_SIDE, CROP, codec=codec)
    return lambda epoch: TrainClips(sampler, decoder, 0, epoch)(*row)


def _loader_cpu(readers: dict, repeats: int, clips: int) -> dict[str, float]:
    """Median CPU ms per training clip of each reader, interleaved in every repeat."""
    times: dict[str, list[float]] = {name: [] for name in readers}
    for repeat in range(repeats + 1):           # the first pass warms up
        for name, read in readers.items():
            seconds, _ = _cpu(lambda: [read(epoch) for epoch in range(clips)])
            if repeat:
                times[name].append(seconds / clips * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.codecs", description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, type=Path, help="folder of videos (any layout)")
    p.add_argument("--repeats", type=positive_int, default=5, help="loader repeats (median)")
    p.add_argument("--clips", type=positive_int, default=30, help="training clips per repeat")
    return p


def main(args: argparse.Namespace) -> int:
    keep_large_buffers()    # as the loader runs: no page faults on fresh clip buffers
    for path in find_videos(args.videos):
        print(f"== {path.name}")
        try:
            rows = measure(path, args.repeats, args.clips)
        except BAD_VIDEO_ERRORS as exc:
            print(f"  skipped: {exc if isinstance(exc, VideoError) else error_line(exc)}")
            continue
        print(f"  {'form':28s} {'KB/frame':>8s} {'x fewer':>7s} {'PSNR Y':>6s} {'RGB':>6s} "
              f"{'enc ms/f':>8s} {'ms/clip':>7s} {'x jpeg':>6s}")
        for name, kb, fewer, psnr_y, psnr_rgb, encode, clip, ratio in rows:
            print(f"  {name:28s} {kb:8.1f} {fewer:7.1f} {psnr_y:6.1f} {psnr_rgb:6.1f} {encode:8.2f} "
                  f"{clip:7.1f} {ratio:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
