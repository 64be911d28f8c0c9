"""One video -> upright, resized, encoded frames (PyAV threaded decode, cv2 resize of the Y/U/V
planes, then libjpeg-turbo JPEGs or a libx264 stream: ``Settings.codec``).

Every way a source can be unusable ends in ``VideoError`` with a one-line reason whose text before
the first ``:`` is a stable kind (``missing file``, ``empty file``, ``cannot open``, ``truncated``,
``too large``, ...), so the converter can count failures by kind.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import simplejpeg

from datatools.h264 import H264Encoder
from datatools.manifest import CHROMA_420, H264, LARGER_PAGE, Reason, Settings

__all__ = ["VideoError", "EncodedVideo", "StreamInfo", "Orientation", "orientation", "stored_size",
           "even_size", "encodes_from_planes", "frame_planes", "encode_frame", "iter_frames",
           "encode_video", "encode_or_reason", "error_line"]

# Decoded frames may fall this far short of the container's declared count (edit lists, a
# dropped last frame) before the file counts as truncated.
TRUNCATION_TOLERANCE = 2
# Matroska/WebM declare no frame count, only a duration, which also covers the audio stream; the
# decoded time may fall short of it by this share (or TRUNCATION_TOLERANCE frames) before the file
# counts as truncated. Complete test files fall short by 0 s, files cut in half by 55-65%.
DURATION_TOLERANCE = 0.05
# JPEG bytes per stored pixel at 4:2:0 by quality, the low end of what was measured (synthetic
# noisy clips at 320x240 and 455x256; real footage in docs/design.md §8 is 1-1.7x these), so the
# estimate rarely exceeds the real size; a video is refused before decoding only when the
# estimate exceeds the page by EARLY_REFUSAL_MARGIN.
_BPP_QUALITY = (1, 50, 75, 80, 85, 90, 95, 100)
_BYTES_PER_PIXEL = (0.02, 0.055, 0.095, 0.11, 0.145, 0.19, 0.30, 0.70)
EARLY_REFUSAL_MARGIN = 1.5


class VideoError(Exception):
    """A source video that cannot be converted; ``str(exc)`` is the one-line reason."""


@dataclass
class EncodedVideo:
    """Encoded frames (JPEGs or h264 packets, one per frame) plus the source frame rate and the
    source and stored frame sizes."""

    frames: list[bytes]
    fps: float
    src_width: int
    src_height: int
    width: int
    height: int


@dataclass(frozen=True)
class StreamInfo:
    """What the container declares about the video stream, known before decoding."""

    fps: float
    duration: float | None     # seconds: the stream's, else the container's; None if neither says


@dataclass(frozen=True)
class Orientation:
    """How to turn a decoded picture so it shows as its display matrix says (as players show it)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) of a turned ``width`` x ``height`` picture."""
        return (height, width) if self.transpose else (width, height)

    def apply(self, picture: np.ndarray) -> np.ndarray:
        """``picture`` (H, W[, C]) turned; unchanged (no copy) when there is nothing to do."""
        if self.transpose:
            picture = picture.swapaxes(0, 1)
        if self.flip_rows:
            picture = picture[::-1]
        if self.flip_cols:
            picture = picture[:, ::-1]
        return np.ascontiguousarray(picture)


UPRIGHT = Orientation()


def orientation(frame: av.VideoFrame) -> Orientation:
    """The frame's display matrix as a transpose and flips; no matrix or a singular one: as stored.

    FFmpeg's matrix shows source pixel (p, q) = (column, row) at (a*p + c*q, b*p + d*q), up to a
    shift. Reading the matrix itself, not ``frame.rotation``, keeps mirrored videos right: FFmpeg
    reports a horizontal mirror as a 180 degree rotation and a vertical one as none.
    """
    matrix = frame.side_data.get("DISPLAYMATRIX")
    if matrix is None:
        return UPRIGHT
    a, b, _, c, d = np.frombuffer(bytes(matrix), np.int32)[:5].astype(np.int64)
    straight, crossed = abs(a) + abs(d), abs(b) + abs(c)
    if min(straight, crossed) > 0.02 * max(straight, crossed):
        raise VideoError(Reason.text(Reason.UNSUPPORTED_ROTATION,
                                      f"{frame.rotation} degrees is not a quarter turn"))
    if crossed > straight:
        return Orientation(transpose=True, flip_rows=bool(b < 0), flip_cols=bool(c < 0))
    return Orientation(flip_rows=bool(d < 0), flip_cols=bool(a < 0))


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side scaled to ``short_side``; never upscales; 0 keeps the size."""
    short = min(width, height)
    if short_side <= 0 or short <= short_side:
        return width, height
    scale = short_side / short
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size h264 stores for a frame of ``stored_size`` (w, h): 4:2:0 needs even sides, so an
    odd side is resized one pixel shorter (455x256 -> 454x256: the whole picture, its aspect
    changed by 0.2%), never padded or cropped; height/width of a sample are this true size."""
    return max(2, width - width % 2), max(2, height - height % 2)


# JFIF stores full-range BT.601 YCbCr. A limited-range BT.601 4:2:0 frame (most SD h264; FFmpeg
# also assumes BT.601 where a stream does not say) is encoded from its own planes: each plane
# resized, the range expanded by lookup. That skips the YUV -> RGB -> YUV round trip: 2.5x faster
# per frame at 640x360, 40 dB PSNR against the RGB route. Other frames (BT.709, full range,
# other pixel formats, odd sizes) take the RGB route.
_PLANAR_FORMAT = "yuv420p"
_BT601_COLORSPACES = (2, 5, 6)      # AVColorSpace unspecified, BT470BG, SMPTE170M
_LIMITED_RANGES = (0, 1)            # AVColorRange unspecified, MPEG (16..235 / 16..240)
_Y_LUT = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_C_LUT = np.clip(np.round((np.arange(256) - 128) * 255 / 224 + 128), 0, 255).astype(np.uint8)


def encodes_from_planes(frame: av.VideoFrame) -> bool:
    """Whether ``frame`` can skip the RGB round trip (limited-range BT.601 4:2:0, even size)."""
    return (frame.format.name == _PLANAR_FORMAT and frame.colorspace in _BT601_COLORSPACES
            and frame.color_range in _LIMITED_RANGES and frame.width % 2 == 0 and frame.height % 2 == 0)


# Below this share of its size a plane is resized with the area filter (anti-aliased, and what
# the stored frames are defined by); from it up, bilinearly. Within 10% of the stored size the two
# agree to rounding (58.8 dB between them on real 640x272 footage at 602x256, where area in uint8
# is 60.2 dB from area in float), and bilinear costs a third: 0.19 against 0.59 ms a luma plane.
# At 0.85 they would differ by 51 dB and at 0.71 (640x360 -> 455x256) by 46 dB, so area stays.
_BILINEAR_FROM_SCALE = 0.9


def _resize(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (plane.shape[1], plane.shape[0]) == size:
        return plane
    scale = min(size[0] / plane.shape[1], size[1] / plane.shape[0])
    interpolation = cv2.INTER_LINEAR if scale >= _BILINEAR_FROM_SCALE else cv2.INTER_AREA
    return cv2.resize(plane, size, interpolation=interpolation)


@contextlib.contextmanager
def _single_threaded_cv2() -> Iterator[None]:
    """cv2's thread pool only adds CPU to a converter whose workers already fill the cores: its
    area resize took 1.95 ms of CPU a 640x272 frame on 2 threads against 0.86 on one."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _even_luma(plane: np.ndarray) -> np.ndarray:
    """``plane`` as a view into an edge-padded copy of even height and width. simplejpeg's 4:2:0
    plane encoder reads the luma plane to even dimensions, so for an odd stored size (455x256,
    a 16:9 source at short side 256) it read past the array: the JPEG bytes changed from run to
    run, by up to 16 grey levels at the right or bottom edge."""
    height, width = plane.shape
    if height % 2 == 0 and width % 2 == 0:
        return plane
    return np.pad(plane, ((0, height % 2), (0, width % 2)), mode="edge")[:height, :width]


def frame_planes(frame: av.VideoFrame, size: tuple[int, int],
                 turn: Orientation = UPRIGHT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U, V planes (limited-range BT.601 4:2:0) of a decoded frame turned upright and
    resized (area filter) to ``size`` = (w, h) of the turned picture, chroma ``ceil(size / 2)``.
    Any other frame (BT.709, full range, another pixel format, an odd size) is first converted to
    such planes by swscale, in one pass."""
    if not encodes_from_planes(frame):
        frame = frame.reformat(format=_PLANAR_FORMAT, dst_colorspace="ITU601", dst_color_range="MPEG")
    chroma_size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:p.height, :p.width] for p in frame.planes]
    return (_resize(turn.apply(planes[0]), size), _resize(turn.apply(planes[1]), chroma_size),
            _resize(turn.apply(planes[2]), chroma_size))


def encode_frame(frame: av.VideoFrame, size: tuple[int, int], quality: int,
                 turn: Orientation = UPRIGHT, chroma: str = CHROMA_420) -> bytes:
    """Turn a decoded frame upright, resize it (area filter) to ``size`` = (w, h) of the turned
    picture and encode it as JPEG with ``chroma`` subsampling (4:2:0 halves the bytes of 4:4:4,
    docs/design.md §8). A 4:2:0 source encoded at 4:2:0 skips the RGB round trip."""
    if chroma == CHROMA_420 and encodes_from_planes(frame):
        y, u, v = frame_planes(frame, size, turn)
        return simplejpeg.encode_jpeg_yuv_planes(_even_luma(cv2.LUT(y, _Y_LUT)), cv2.LUT(u, _C_LUT),
                                                 cv2.LUT(v, _C_LUT), quality=quality)
    rgb = _resize(turn.apply(frame.to_ndarray(format="rgb24")), size)
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB",
                                  colorsubsampling=chroma)


def iter_frames(path: str | Path, max_fps: float | None = None,
                threads: int = 0) -> Iterator[tuple[StreamInfo, av.VideoFrame]]:
    """Yield (stream info, decoded frame) for every kept frame of the first video stream.

    ``max_fps`` keeps a frame when its timestamp reaches the next slot of a 1/max_fps grid, so a
    variable-frame-rate source keeps at most max_fps frames in any second of its time. ``threads``
    is PyAV's decoder thread count (0 = FFmpeg's choice). Raises VideoError for unusable sources,
    including files cut short: fewer frames than the container declares, less decoded time than
    the declared duration (Matroska/WebM declare no frame count), or a decode error after frames.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(Reason.MISSING)
    if os.path.getsize(path) == 0:
        raise VideoError(Reason.text(Reason.EMPTY, "0 bytes"))
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(Reason.text(Reason.CANNOT_OPEN, _one_line(exc))) from None
    with container:
        if not container.streams.video:
            raise VideoError(Reason.NO_VIDEO_STREAM)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        info = StreamInfo(float(stream.average_rate or stream.guessed_rate or 0),
                          _declared_duration(stream, container))
        period = 1 / info.fps if info.fps else 1.0      # nominal frame duration, seconds
        # Half a timestamp tick: times rounded to the tick (30 fps in milliseconds: 0, 33, 67)
        # still reach their slot.
        slack = float(stream.time_base or 0) / 2
        decoded, last_slot, first, last, last_duration = 0, -1, 0.0, 0.0, period
        try:
            for frame in container.decode(stream):
                last = frame.time if frame.pts is not None else decoded * period
                last_duration = float(frame.duration * frame.time_base) if frame.duration else period
                if decoded == 0:
                    first = last
                decoded += 1
                if max_fps:
                    slot = math.floor((last - first + slack) * max_fps)
                    if slot <= last_slot:
                        continue
                    last_slot = slot
                yield info, frame
        except av.error.FFmpegError as exc:
            if decoded == 0:
                raise VideoError(Reason.text(Reason.NO_FRAMES, _one_line(exc))) from None
            raise VideoError(Reason.text(Reason.TRUNCATED, f"decode error after {decoded} frames: "
                                                        f"{_one_line(exc)}")) from None
        if decoded == 0:
            raise VideoError(Reason.NO_FRAMES)
        if stream.frames and decoded < stream.frames - TRUNCATION_TOLERANCE:
            raise VideoError(Reason.text(Reason.TRUNCATED, f"decoded {decoded} of {stream.frames} frames"))
        span = last + last_duration - first
        if info.duration and info.duration - span > max(TRUNCATION_TOLERANCE * period,
                                                         DURATION_TOLERANCE * info.duration):
            raise VideoError(Reason.text(Reason.TRUNCATED, f"decoded {span:.2f} s of {info.duration:.2f} s"))


class _Jpeg:
    """Frames -> one JPEG each."""

    def __init__(self, settings: Settings, size: tuple[int, int]) -> None:
        self.settings, self.size = settings, size

    def encode(self, frame: av.VideoFrame, turn: Orientation) -> list[bytes]:
        return [encode_frame(frame, self.size, self.settings.quality, turn, self.settings.chroma_subsampling)]

    def finish(self) -> list[bytes]:
        return []


class _H264:
    """Frames -> one h264 stream, a packet per frame (datatools.h264)."""

    def __init__(self, settings: Settings, size: tuple[int, int], fps: float) -> None:
        s = settings
        self.size = size
        self.encoder = H264Encoder(*size, fps, s.crf, s.gop, s.preset, s.fastdecode)

    def encode(self, frame: av.VideoFrame, turn: Orientation) -> list[bytes]:
        return self.encoder.encode(*frame_planes(frame, self.size, turn))

    def finish(self) -> list[bytes]:
        return self.encoder.finish()


@_single_threaded_cv2()
def encode_video(path: str | Path, settings: Settings, threads: int = 1,
                 max_bytes: int | None = None) -> EncodedVideo:
    """Decode, turn upright, resize (never up) and encode every kept frame of ``path`` with the
    ``settings`` of a split (short side, max fps, codec and its options). ``threads`` is the
    decoder's (1: the least CPU a video, as workers parallelize across videos).

    With ``max_bytes`` (the MindRecord page a video must fit in), a video that cannot fit is
    refused without decoding it all: JPEG at the first frame when the estimate is clearly over,
    both codecs as soon as their frames exceed it.
    """
    s = settings
    frames: list[bytes] = []
    total = kept = 0
    info, size, src, turn, encoder = StreamInfo(0.0, None), (0, 0), (0, 0), UPRIGHT, None
    for info, frame in iter_frames(path, s.max_fps, threads):
        if encoder is None:
            turn = orientation(frame)
            src = turn.size(frame.width, frame.height)
            size = stored_size(*src, s.short_side)
            if s.codec == H264:
                size = even_size(*size)
                encoder = _H264(s, size, min(info.fps, s.max_fps) if s.max_fps else info.fps)
            else:
                encoder = _Jpeg(s, size)
                estimate = _estimated_bytes(info, size, s.quality, s.max_fps)
                if max_bytes is not None and estimate > EARLY_REFUSAL_MARGIN * max_bytes:
                    raise VideoError(Reason.text(Reason.TOO_LARGE, f"an estimated {estimate:.0f} bytes "
                                                 f"exceed the page size {max_bytes}; {LARGER_PAGE}"))
        kept += 1
        for data in encoder.encode(frame, turn):
            frames.append(data)
            total += len(data)
        if max_bytes is not None and total > max_bytes:
            raise VideoError(Reason.text(Reason.TOO_LARGE, f"{total} bytes after {len(frames)} frames "
                                         f"already exceed the page size {max_bytes}; {LARGER_PAGE}"))
    if encoder is not None:
        frames += encoder.finish()
    if len(frames) != kept:
        raise RuntimeError(f"{path}: {kept} frames encoded to {len(frames)} {s.codec} frames")
    return EncodedVideo(frames, info.fps, src[0], src[1], size[0], size[1])


def encode_or_reason(path: str | Path, settings: Settings, threads: int = 1,
                     max_bytes: int | None = None) -> EncodedVideo | str:
    """``encode_video``'s result, or why the video failed as one manifest reason. A bad video
    can make the decoder or cv2 raise more than VideoError (a cv2.error, a MemoryError, a PyAV
    error outside its FFmpeg classes): that is the video's failure (``Reason.ENCODE_ERROR``),
    not the run's. KeyboardInterrupt and SystemExit still stop the run."""
    try:
        return encode_video(path, settings, threads, max_bytes)
    except VideoError as exc:
        return str(exc)
    except Exception as exc:        # noqa: BLE001 - any fault of one video is that video's row
        return Reason.text(Reason.ENCODE_ERROR, error_line(exc))


def error_line(exc: BaseException) -> str:
    """``module.Class: message`` on one line (``cv2.error: ...``, ``MemoryError: ...``)."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{name}: {' '.join(str(exc).split())}"


def _declared_duration(stream: av.video.stream.VideoStream, container: av.container.InputContainer
                       ) -> float | None:
    """Seconds the stream declares, else the container (all Matroska/WebM declare)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _estimated_bytes(info: StreamInfo, size: tuple[int, int], quality: int,
                     max_fps: float | None) -> float:
    """JPEG bytes of the kept frames from the declared duration and rate (0 if either is unknown)."""
    rate = min(info.fps, max_fps) if max_fps else info.fps
    pixels = (info.duration or 0.0) * rate * size[0] * size[1]
    return pixels * float(np.interp(quality, _BPP_QUALITY, _BYTES_PER_PIXEL))


def _one_line(exc: av.error.FFmpegError) -> str:
    """FFmpeg's message without errno and path (the manifest row names the source already)."""
    return " ".join(str(exc.strerror or exc).split())
