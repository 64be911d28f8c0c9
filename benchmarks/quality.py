"""How close stored frames are to what the converter encoded them from: PSNR, for any codec.

The reference of a stored frame is its source frame as the converter has it just before encoding
(``datatools.video``: turned upright and resized, area filter, to the stored size):

- luma: the Y plane ``frame_planes`` gives (limited-range BT.601, what the h264 encoder and the
  JPEG planar route take), compared on the full-range scale JPEG stores, so the two codecs'
  errors are measured alike (the h264 Y plane is expanded as the JPEG route expands its input;
  comparing h264 in limited range would flatter it by 20·log10(255/219) = 1.3 dB);
- RGB: the frame converted to RGB and resized in RGB, against the stored frame decoded to RGB
  through ``datatools.frames`` as the loader decodes it (the 4:2:0 chroma of both codecs costs
  them ~1-2 dB here before any coding loss).

Figures are the mean over frames of each frame's PSNR (dB; 99 for an exact frame).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import simplejpeg

from datatools.frames import stored_frames
from datatools.h264 import GopDecoder
from datatools.manifest import JPEG, Settings
from datatools.schema import pack_frames
from datatools.video import Orientation, encode_video, frame_planes, iter_frames, orientation

__all__ = ["Reference", "psnr", "reference", "source_references", "frame_psnrs", "video_psnrs"]

EXACT = 99.0


@dataclass(frozen=True)
class Reference:
    """One source frame as the converter has it before encoding, at the stored size."""

    luma: np.ndarray        # full-range Y (float64), from the limited-range plane frame_planes gives
    rgb: np.ndarray         # the frame in RGB, resized in RGB (uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images on a 0..255 scale."""
    mse = np.mean((np.asarray(a, np.float64) - b) ** 2)
    return EXACT if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def _full_range(y: np.ndarray) -> np.ndarray:
    """Limited-range luma on JFIF's full-range scale (the converter's expansion, unrounded)."""
    return np.clip((y.astype(np.float64) - 16) * (255 / 219), 0, 255)


def reference(frame: av.VideoFrame, size: tuple[int, int], turn: Orientation = Orientation()) -> Reference:
    """``frame`` turned and resized to ``size`` = (w, h), as the converter would encode it."""
    rgb = turn.apply(frame.to_ndarray(format="rgb24"))
    if (rgb.shape[1], rgb.shape[0]) != size:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return Reference(_full_range(frame_planes(frame, size, turn)[0]), rgb)


def source_references(path: str | Path, size: tuple[int, int], max_fps: float | None = None
                      ) -> Iterator[Reference]:
    """The references of every frame ``datatools.video.encode_video`` keeps from ``path``."""
    turn = None
    for _, frame in iter_frames(path, max_fps, threads=1):
        turn = orientation(frame) if turn is None else turn
        yield reference(frame, size, turn)


def _lumas(codec: str, blob: bytes, offsets: np.ndarray) -> Iterator[np.ndarray]:
    """Each stored frame's luma on the full-range scale, without colour conversion."""
    count = len(offsets) - 1
    if codec == JPEG:
        for i in range(count):
            yield simplejpeg.decode_jpeg(blob[offsets[i]:offsets[i + 1]], colorspace="GRAY")[..., 0]
        return
    for _, picture in GopDecoder().run(blob, offsets, 0, count):   # its own decoder: not the thread's
        plane = picture.planes[0]
        yield _full_range(np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width])


def frame_psnrs(codec: str, frames: list[bytes], references: Iterable[Reference]) -> np.ndarray:
    """(frames, 2): luma and RGB PSNR of each stored frame of ``codec`` against its reference."""
    blob, offsets = pack_frames(frames)
    decoded = stored_frames(codec).decode(blob, offsets, range(len(frames)))
    rows = [(psnr(luma, ref.luma), psnr(image, ref.rgb))
            for ref, luma, (_, _, image) in zip(references, _lumas(codec, blob, offsets), decoded)]
    if len(rows) != len(frames):
        raise RuntimeError(f"{len(frames)} stored frames against {len(rows)} source frames")
    return np.asarray(rows)


def video_psnrs(path: str | Path, settings: Settings) -> tuple[int, np.ndarray]:
    """(stored bytes, per-frame luma and RGB PSNR) of ``path`` converted with ``settings``."""
    video = encode_video(path, settings, threads=1)
    refs = source_references(path, (video.width, video.height), settings.max_fps)
    return sum(map(len, video.frames)), frame_psnrs(settings.codec, video.frames, refs)
