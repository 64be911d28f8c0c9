"""Real broken media files, one per bad input the converter must survive."""
from __future__ import annotations

from pathlib import Path

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
