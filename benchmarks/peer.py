"""The peer users pick instead of records: each video re-encoded as a 256p mp4, read with PyAV.

Writing follows MMAction2's resized-video recipe (``tools/data/resize_videos.py``: libx264 at its
default rate factor and preset, a keyframe every 16 frames, no audio), here in-process with
PyAV's own libx264 on one thread, from the frames the converter would store (turned upright and
resized to short side 256 by ``datatools.video.frame_planes``, each side even as 4:2:0 needs), so
the peer and the records hold the same pictures.

Reading follows MMAction2's PyAV decoder: the file's bytes read into memory and opened
(``PyAVInit``), the frame count from the container, the same segments as our loader samples
(``trainer.data.ClipSampler``), and for each segment a seek to its first frame (the keyframe at
or before it) and decoding forward through its last, each wanted frame converted whole to RGB,
scaled to short side 256 where it is not, then one random crop and flip, as ``TrainClips`` does.
One decoder thread, as our loader decodes.
"""
from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction
from itertools import chain
from pathlib import Path

import av
import cv2
import numpy as np

from datatools.video import even_size, frame_planes, iter_frames, orientation, stored_size
from trainer.data import ClipSampler

__all__ = ["PEER_GOP", "write_peer", "peer_from_video", "PeerClips"]

PEER_GOP = 16


def write_peer(planes: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], size: tuple[int, int],
               fps: float, out: str | Path | io.BytesIO) -> int:
    """Y/U/V planes (limited-range BT.601 4:2:0, ``size`` = (w, h), even) as an mp4 of libx264's
    defaults with a keyframe every PEER_GOP frames; the frame count."""
    count = 0
    rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"g": str(PEER_GOP), "threads": "1"}
        for y, u, v in planes:
            frame = av.VideoFrame(*size, "yuv420p")
            for plane, data in zip(frame.planes, (y, u, v)):
                np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:, :data.shape[1]] = data
            frame.pts = count
            count += 1
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return count


def peer_from_video(source: str | Path, out: Path, short_side: int, max_fps: float | None = None) -> int:
    """``source`` as the peer stores it at ``out``: the frames the converter keeps, turned and
    resized as it does (each side even); the frame count."""
    frames = iter_frames(source, max_fps, threads=1)
    info, first = next(frames)
    turn = orientation(first)
    size = even_size(*stored_size(*turn.size(first.width, first.height), short_side))
    pictures = chain([first], (frame for _, frame in frames))
    return write_peer((frame_planes(f, size, turn) for f in pictures), size,
                      min(info.fps, max_fps) if max_fps else info.fps, out)


class PeerClips:
    """One training clip of an mp4's bytes, read as MMAction2's PyAV decoder reads: uint8
    (T·N, crop, crop, 3)."""

    def __init__(self, sampler: ClipSampler, short_side: int, crop: int) -> None:
        self.sampler, self.short_side, self.crop = sampler, short_side, crop

    def __call__(self, data: bytes, rng: np.random.Generator) -> np.ndarray:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            indices = self.sampler.train_indices(stream.frames, rng)
            rate = float(stream.average_rate)
            pictures = {}
            for run in indices:
                wanted, last = set(run.tolist()), int(run.max())
                container.seek(int(run[0] / rate / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    index = round(frame.time * rate)
                    if index in wanted:
                        pictures[index] = self._scaled(frame.to_ndarray(format="rgb24"))
                    if index >= last:
                        break
        height, width = pictures[int(indices.flat[0])].shape[:2]
        top, left = int(rng.integers(0, height - self.crop + 1)), int(rng.integers(0, width - self.crop + 1))
        crops = [pictures[i][top:top + self.crop, left:left + self.crop] for i in indices.ravel().tolist()]
        flip = bool(rng.random() < 0.5)
        return np.stack([c[:, ::-1] if flip else c for c in crops])

    def _scaled(self, image: np.ndarray) -> np.ndarray:
        """A frame at short side ``short_side``, as the loader scales one (linear filter)."""
        height, width = image.shape[:2]
        if min(height, width) == self.short_side:
            return image
        scale = self.short_side / min(height, width)
        return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
