"""Stored frames back to RGB pixels, one interface for every codec of ``Settings.codec``.

The loader (``trainer.data``), ``datatools.inspect`` (its every-frame check and contact sheet)
and ``trainer.predict`` read a sample's ``frames`` blob and ``offsets`` only through
``StoredFrames``, taken from the split's stored settings (``stored_frames``), so a reader never
guesses the codec. ``decode`` yields the frames asked for, in ascending order, each only as far
as ``region`` (the part of the frame a clip crops): JPEG decodes whole frames and slices them;
h264 decodes each run of needed frames from its keyframe and converts to RGB only the region,
cropping the Y/U/V planes first (cv2's I420 conversion takes each pixel's chroma from its own
2x2 block, so converting a crop equals cropping the converted frame, bit for bit).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import av
import cv2
import numpy as np
import simplejpeg

from datatools.h264 import GopDecoder, is_keyframe, keyframe_before, stream_size
from datatools.manifest import H264, JPEG, Settings
from datatools.schema import frame_bytes

__all__ = ["Region", "FrameError", "StoredFrames", "JpegFrames", "H264Frames", "stored_frames",
           "codec_of"]

Region = tuple[int, int, int, int]     # (top, left, height, width) in stored pixels
Blob = bytes | memoryview


class FrameError(ValueError):
    """A stored frame that does not decode; ``str(exc)`` is the one-line reason."""


class StoredFrames(Protocol):
    """How one codec's stored frames become pixels."""

    codec: str
    checked: str        # what ``problems`` verifies, as datatools.inspect reports it

    def size(self, blob: Blob, offsets: np.ndarray, index: int) -> tuple[int, int]:
        """(height, width) of frame ``index`` without decoding it."""

    def decode(self, blob: Blob, offsets: np.ndarray, indices: Sequence[int],
               region: Region | None = None, accurate: bool = False
               ) -> Iterator[tuple[int, tuple[int, int], np.ndarray]]:
        """(index, (height, width) of the whole frame, RGB pixels of ``region`` or of the whole
        frame) for each of the ascending ``indices``. A yielded array is only valid until the
        next one (buffers are reused). ``accurate``: JPEG's slow exact DCT and upsampling."""

    def problems(self, blob: Blob, offsets: np.ndarray, height: int, width: int) -> list[str]:
        """Every frame decoded, as inspect --decode checks it: one line per kind of problem."""


class JpegFrames:
    """One JPEG per frame (simplejpeg: libjpeg-turbo)."""

    codec = JPEG
    checked = "every JPEG decodes"

    def __init__(self) -> None:
        self._local = threading.local()

    def size(self, blob: Blob, offsets: np.ndarray, index: int) -> tuple[int, int]:
        try:
            return tuple(simplejpeg.decode_jpeg_header(frame_bytes(blob, offsets, index))[:2])
        except ValueError as exc:   # what simplejpeg raises for a corrupt JPEG
            raise FrameError(f"frame {index} does not decode ({exc})") from None

    def decode(self, blob: Blob, offsets: np.ndarray, indices: Sequence[int],
               region: Region | None = None, accurate: bool = False
               ) -> Iterator[tuple[int, tuple[int, int], np.ndarray]]:
        for index in indices:
            data = frame_bytes(blob, offsets, index)
            try:
                height, width = simplejpeg.decode_jpeg_header(data)[:2]
                image = simplejpeg.decode_jpeg(data, fastdct=not accurate, fastupsample=not accurate,
                                               buffer=self._buffer(height * width * 3))
            except ValueError as exc:
                raise FrameError(f"frame {index} does not decode ({exc})") from None
            yield index, (height, width), _crop(image, region)

    def _buffer(self, size: int) -> np.ndarray:
        """This thread's decode buffer (map workers are threads sharing one decoder): reused,
        instead of a fresh quarter-megabyte array per frame."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.size < size:
            buffer = self._local.buffer = np.empty(size, np.uint8)
        return buffer

    def problems(self, blob: Blob, offsets: np.ndarray, height: int, width: int) -> list[str]:
        """The first frame that does not decode and the first of another size, with counts."""
        broken, resized = [], []
        for i in range(len(offsets) - 1):
            try:
                shape = simplejpeg.decode_jpeg(bytes(frame_bytes(blob, offsets, i))).shape
            except ValueError:
                broken.append(i)
                continue
            if shape[:2] != (height, width):
                resized.append((i, shape))
        found = []
        if broken:
            found.append(f"JPEG frame {broken[0]} does not decode" + _more(broken))
        if resized:
            i, shape = resized[0]
            found.append(f"JPEG frame {i} is {shape[1]}x{shape[0]}, the sample says {width}x{height}"
                         + _more(resized))
        return found


class H264Frames:
    """One h264 stream per video (``datatools.h264``): runs decoded from their keyframes."""

    codec = H264
    checked = "every h264 GOP decodes on its own"

    def size(self, blob: Blob, offsets: np.ndarray, index: int) -> tuple[int, int]:
        try:
            key = keyframe_before(blob, offsets, index)
            return stream_size(frame_bytes(blob, offsets, key))
        except ValueError as exc:
            raise FrameError(f"frame {index} does not decode ({exc})") from None

    def decode(self, blob: Blob, offsets: np.ndarray, indices: Sequence[int],
               region: Region | None = None, accurate: bool = False
               ) -> Iterator[tuple[int, tuple[int, int], np.ndarray]]:
        wanted, decoder = set(indices), GopDecoder.for_thread()
        try:
            for start, stop in self.runs(blob, offsets, indices):
                for index, picture in decoder.run(blob, offsets, start, stop):
                    if index in wanted:
                        yield index, (picture.height, picture.width), i420_rgb(picture, region)
        except ValueError as exc:
            raise FrameError(str(exc)) from None

    @staticmethod
    def runs(blob: Blob, offsets: np.ndarray, indices: Sequence[int]) -> list[tuple[int, int]]:
        """(start, stop) packet runs that decode the ascending ``indices``: a run starts at the
        keyframe at or before its first frame, and goes on through a later frame when its
        keyframe is not past the run's end (continuing costs no more than restarting)."""
        runs: list[list[int]] = []
        for index in indices:
            if runs and runs[-1][1] > index:
                continue
            key = keyframe_before(blob, offsets, index)
            if runs and key <= runs[-1][1]:
                runs[-1][1] = index + 1
            else:
                runs.append([key, index + 1])
        return [(start, stop) for start, stop in runs]

    def problems(self, blob: Blob, offsets: np.ndarray, height: int, width: int) -> list[str]:
        """Each GOP decoded on its own: any that does not decode to its frame count, and any
        picture of another size than the sample says."""
        count = len(offsets) - 1
        keys = [i for i in range(count) if is_keyframe(frame_bytes(blob, offsets, i)[:5])]
        if not keys or keys[0] != 0:
            return ["h264 frame 0 is not a keyframe"]
        broken, resized, decoder = [], [], GopDecoder.for_thread()
        for start, stop in zip(keys, keys[1:] + [count]):
            try:
                for index, picture in decoder.run(blob, offsets, start, stop):
                    if (picture.height, picture.width) != (height, width):
                        resized.append((index, picture.width, picture.height))
            except ValueError as exc:
                broken.append(str(exc))
        found = [broken[0] + _more(broken, "GOPs")] if broken else []
        if resized:
            i, w, h = resized[0]
            found.append(f"h264 frame {i} is {w}x{h}, the sample says {width}x{height}" + _more(resized))
        return found


def i420_rgb(picture: av.VideoFrame, region: Region | None = None) -> np.ndarray:
    """RGB (BT.601, limited range: cv2's I420 conversion) of ``region`` of a yuv420p picture.
    The planes are cropped to the region's 2x2-aligned bounds before converting."""
    top, left, height, width = region or (0, 0, picture.height, picture.width)
    y0, x0 = top & ~1, left & ~1
    y1, x1 = min(top + height + 1 & ~1, picture.height), min(left + width + 1 & ~1, picture.width)
    h, w = y1 - y0, x1 - x0
    packed = np.empty(h * w * 3 // 2, np.uint8)
    luma, chroma = h * w, (h // 2) * (w // 2)
    packed[:luma].reshape(h, w)[...] = _plane(picture, 0)[y0:y1, x0:x1]
    for i, at in ((1, luma), (2, luma + chroma)):
        packed[at:at + chroma].reshape(h // 2, w // 2)[...] = _plane(picture, i)[y0 // 2:y1 // 2, x0 // 2:x1 // 2]
    rgb = cv2.cvtColor(packed.reshape(h * 3 // 2, w), cv2.COLOR_YUV2RGB_I420)
    return rgb[top - y0:top - y0 + height, left - x0:left - x0 + width]


def _plane(picture: av.VideoFrame, index: int) -> np.ndarray:
    plane = picture.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width]


def _crop(image: np.ndarray, region: Region | None) -> np.ndarray:
    if region is None:
        return image
    top, left, height, width = region
    return image[top:top + height, left:left + width]


def _more(items: list, what: str = "frames") -> str:
    return f" ({len(items)} {what} in all)" if len(items) > 1 else ""


_READERS: dict[str, StoredFrames] = {JPEG: JpegFrames(), H264: H264Frames()}


def codec_of(settings: Settings | None) -> str:
    """The codec of a split's stored settings; a manifest without settings is JPEG."""
    return settings.codec if settings is not None else JPEG


def stored_frames(codec: str) -> StoredFrames:
    """The reader of ``codec``'s frames (shared: per-thread state lives inside)."""
    try:
        return _READERS[codec]
    except KeyError:
        raise ValueError(f"unknown stored codec {codec!r}: this code reads {'|'.join(_READERS)}") from None
