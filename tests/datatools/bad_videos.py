"""Real broken media files, one per bad input the converter must survive."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from datatools.synth import SynthSpec, render_video, write_mp4


def good(path: Path, num_frames: int = 12, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    frames = render_video(0, np.random.default_rng(seed), SynthSpec(num_frames, width, height))
    write_mp4(path, frames)
    return path


def zero_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def random_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


def truncated(path: Path, faststart: bool) -> Path:
    """A good h264 mp4 cut short. Without faststart the index (moov) is at the end and is lost,
    so the file cannot be opened; with it the index survives and frames are missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = render_video(1, np.random.default_rng(2), SynthSpec(60, 64, 48))
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    return path


def audio_only(path: Path) -> Path:
    """An mp4 with one AAC stream and no video stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def no_frames(path: Path) -> Path:
    """A video stream whose only packet decodes to nothing: a video shorter than one frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        real = stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), "rgb24"))
        real += stream.encode()
        junk = av.Packet(bytes(len(bytes(real[0]))))
        junk.stream, junk.pts, junk.dts, junk.time_base = stream, 0, 0, real[0].time_base
        container.mux(junk)
    return path


CLIP_TIME_BASE = Fraction(1, 600)   # holds 10, 25, 30 and 60 fps timestamps exactly


def clip(path: Path, frames: np.ndarray, codec: str = "libx264", times: Sequence[float] | None = None,
         rotation: float = 0, hflip: bool = False, pix_fmt: str = "yuv420p") -> Path:
    """RGB frames (F, H, W, 3) encoded into the container ``path``'s suffix names, at 25 fps or at
    ``times`` (seconds), with a display matrix when ``rotation`` (counter-clockwise) or ``hflip``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    times = np.arange(len(frames)) / 25 if times is None else times
    options = {"movflags": "faststart"} if path.suffix == ".mp4" else {}   # index first, as served
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.time_base = CLIP_TIME_BASE
        if codec == "libx264":   # repeatable bytes, as datatools.synth.write_mp4
            stream.options = {"threads": "1", "x264-params": "no-mbtree=1"}
        elif codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for frame, t in zip(frames, times):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = round(t / CLIP_TIME_BASE), CLIP_TIME_BASE
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def cut(path: Path, fraction: float = 0.5) -> Path:
    """Keep the first ``fraction`` of the file's bytes, as an interrupted download does."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path
