"""JPEG against h264 stored frames on your footage: bytes, quality, converter and loader CPU.

    python -m benchmarks.codecs --videos ~/clips [--repeats 5] [--clips 30]

For each video, decoded once and resized to short side 256 (``datatools.video.frame_planes``, as
the converter does), a row per stored form: JPEG q90 from the planes (the converter's route for
4:2:0 BT.601 sources) and from RGB (its route for other sources), and h264 at a grid of
``--crf``/``--gop``/``--fastdecode`` (preset veryfast, the default):

- bytes per frame, and how many times fewer than JPEG q90;
- PSNR (dB, the mean over frames) of the decoded frames against the resized frames before
  encoding: of the luma plane (Y, the codecs' own domain), and of RGB against the frame resized
  in RGB (what the RGB route encodes; the YUV routes lose ~1-2 dB there to the colour
  conversion and chroma upsampling alone);
- encoder CPU per frame (from the resized planes; decoding the source is the same for all);
- loader CPU per training clip (T=7 segments × N=5 frames, 224 crop, short side 256:
  ``trainer.data.TrainClips`` with its checksum, sampling and crop/flip), the forms interleaved
  over ``--repeats`` and the median taken, and its ratio to JPEG's.

A last row is the peer users pick instead: the same resized frames as a 256p mp4 (libx264 at its
default rate factor and preset, a keyframe every 16 frames, as MMAction2's resized-video recipe),
read the way MMAction2's PyAV decoder reads in its efficient mode: open the file, and for each
segment seek to its first frame and decode forward through its last, converting whole frames to
RGB, then crop and flip.

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
import simplejpeg

from benchmarks.footage import find_videos
from datatools.cli import positive_int, run_cli
from datatools.frames import i420_rgb
from datatools.h264 import H264Encoder
from datatools.manifest import H264, JPEG
from datatools.schema import pack_frames, sample_checksum
from datatools.video import encode_frame, even_size, frame_planes, stored_size
from trainer.data import ClipDecoder, ClipSampler, TrainClips
from trainer.heap import keep_large_buffers

# (crf, gop, fastdecode): the default first, then the trade-offs worth seeing.
H264_GRID = ((18, 8, True), (18, 8, False), (18, 4, True), (18, 16, True), (23, 8, True),
             (23, 16, True), (23, 16, False))
SHORT_SIDE, QUALITY, SEGMENTS, FRAMES, CROP = 256, 90, 7, 5, 224


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def _cpu(fn):
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def _jpeg_luma(jpeg: bytes) -> np.ndarray:
    """The Y plane libjpeg decodes (PIL's draft YCbCr: no colour conversion)."""
    import io

    from PIL import Image
    image = Image.open(io.BytesIO(jpeg))
    image.draft("YCbCr", image.size)
    return np.asarray(image)[..., 0]


def _full_range_luma(y: np.ndarray) -> np.ndarray:
    """Limited-range luma as JFIF stores it (the converter's expansion)."""
    return np.clip(np.round((y.astype(np.float64) - 16) * 255 / 219), 0, 255)


def measure(path: Path, repeats: int, clips: int) -> list[tuple]:
    """Rows (form, KB/frame, x fewer bytes, PSNR Y, PSNR RGB, encode ms/frame, ms/clip, x JPEG)."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    src = (frames[0].width, frames[0].height)
    forms: dict[str, tuple[str, list[bytes], float, float, float]] = {}
    for route, size in (("planes", stored_size(*src, SHORT_SIDE)), ("rgb", stored_size(*src, SHORT_SIDE))):
        inputs = frames if route == "planes" else [
            av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24") for f in frames]
        seconds, jpegs = _cpu(lambda: [encode_frame(f, size, QUALITY) for f in inputs])
        reference = [cv2.resize(f.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA) for f in frames]
        planes = [frame_planes(f, size) for f in frames]
        forms[f"jpeg q{QUALITY} ({route})"] = (
            JPEG, jpegs, np.mean([_psnr(_jpeg_luma(j), _full_range_luma(p[0])) for j, p in zip(jpegs, planes)]),
            np.mean([_psnr(simplejpeg.decode_jpeg(j), r) for j, r in zip(jpegs, reference)]),
            seconds / len(frames))
    size = even_size(*stored_size(*src, SHORT_SIDE))
    planes = [frame_planes(f, size) for f in frames]
    reference = [cv2.resize(f.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA) for f in frames]
    for crf, gop, fastdecode in H264_GRID:
        encoder = H264Encoder(*size, 25.0, crf, gop, "veryfast", fastdecode)
        seconds, packets = _cpu(lambda: [p for y in planes for p in encoder.encode(*y)] + encoder.finish())
        decoder = av.CodecContext.create("h264", "r")
        pictures = [pic for p in packets for pic in decoder.decode(av.Packet(p))] + list(decoder.decode(None))
        forms[f"h264 crf{crf} gop{gop}{'' if fastdecode else ' no-fastdecode'}"] = (
            H264, packets,
            np.mean([_psnr(pic.to_ndarray(format="yuv420p")[:size[1]], p[0]) for pic, p in zip(pictures, planes)]),
            np.mean([_psnr(i420_rgb(pic), r) for pic, r in zip(pictures, reference)]),
            seconds / len(frames))
    sampler = ClipSampler(SEGMENTS, FRAMES)
    readers = {name: _record_reader(codec, data, sampler) for name, (codec, data, *_) in forms.items()}
    mp4 = _peer_mp4(planes, size)
    readers[PEER] = _peer_reader(mp4, len(frames), sampler)
    loader = _loader_cpu(readers, repeats, clips)
    jpeg_bytes = sum(map(len, forms[f"jpeg q{QUALITY} (planes)"][1]))
    jpeg_clip = loader[f"jpeg q{QUALITY} (planes)"]
    rows = [(name, sum(map(len, data)) / len(data) / 1e3, jpeg_bytes / sum(map(len, data)), psnr_y, psnr_rgb,
             encode * 1e3, loader[name], loader[name] / jpeg_clip)
            for name, (_, data, psnr_y, psnr_rgb, encode) in forms.items()]
    return rows + [(PEER, len(mp4) / len(frames) / 1e3, jpeg_bytes / len(mp4), float("nan"), float("nan"),
                    float("nan"), loader[PEER], loader[PEER] / jpeg_clip)]


PEER = "peer: 256p mp4, seek/segment"


def _record_reader(codec: str, data: list[bytes], sampler: ClipSampler):
    """epoch -> one training clip from a stored sample of ``data``, as the loader's map op makes it."""
    blob, offsets = pack_frames(data)
    row = (np.frombuffer(blob, "S1"), offsets, np.int32(len(data)), np.int32(0), np.array("v"),
           np.int64(sample_checksum("v", 0, offsets, blob)))
    decoder = ClipDecoder(SHORT_SIDE, CROP, codec=codec)
    return lambda epoch: TrainClips(sampler, decoder, 0, epoch)(*row)


def _peer_mp4(planes: list[tuple], size: tuple[int, int]) -> bytes:
    """The resized frames as MMAction2's resized videos store them: libx264 defaults, GOP 16."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"g": "16", "threads": "1"}
        for index, (y, u, v) in enumerate(planes):
            frame = av.VideoFrame(*size, "yuv420p")
            for plane, data in zip(frame.planes, (y, u, v)):
                np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:, :data.shape[1]] = data
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _peer_reader(mp4: bytes, count: int, sampler: ClipSampler):
    """epoch -> one training clip read from the mp4 as MMAction2's PyAV decoder does: open, then
    per segment seek to its first frame and decode forward, whole frames to RGB, crop, flip."""
    def clip(epoch: int) -> np.ndarray:
        rng = np.random.default_rng([0, epoch])
        indices = sampler.train_indices(count, rng)
        with av.open(io.BytesIO(mp4)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            rate = float(stream.average_rate)
            pictures = {}
            for run in indices:
                wanted = set(run.tolist())
                container.seek(int(run[0] / rate / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    index = round(frame.time * rate)
                    if index in wanted:
                        pictures[index] = _short_side(frame.to_ndarray(format="rgb24"))
                    if index >= run.max():
                        break
        height, width = pictures[int(indices.flat[0])].shape[:2]
        top, left = int(rng.integers(0, height - CROP + 1)), int(rng.integers(0, width - CROP + 1))
        flip = bool(rng.random() < 0.5)
        crops = [pictures[i][top:top + CROP, left:left + CROP] for i in indices.ravel().tolist()]
        return np.stack([c[:, ::-1] if flip else c for c in crops])
    return clip


def _short_side(image: np.ndarray) -> np.ndarray:
    """A frame scaled to short side SHORT_SIDE as the loader scales one (sources below it)."""
    height, width = image.shape[:2]
    if min(height, width) == SHORT_SIDE:
        return image
    scale = SHORT_SIDE / min(height, width)
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)


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
        rows = measure(path, args.repeats, args.clips)
        print(f"== {path.name}")
        print(f"  {'form':28s} {'KB/frame':>8s} {'x fewer':>7s} {'PSNR Y':>6s} {'RGB':>6s} "
              f"{'enc ms/f':>8s} {'ms/clip':>7s} {'x jpeg':>6s}")
        for name, kb, fewer, psnr_y, psnr_rgb, encode, clip, ratio in rows:
            print(f"  {name:28s} {kb:8.1f} {fewer:7.1f} {psnr_y:6.1f} {psnr_rgb:6.1f} {encode:8.2f} "
                  f"{clip:7.1f} {ratio:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
