"""The stored h264 stream: written by libx264 from PyAV's own wheel, read by FFmpeg's h264 decoder.

A video's frames are one Annex-B byte stream of closed GOPs: yuv420p, no B-frames, and every
``gop`` frames an IDR whose packet starts with its SPS and PPS. x264 emits one packet per frame,
in display order, so ``offsets[i]:offsets[i+1]`` is frame i as it is for JPEG; any GOP decodes on
its own (a reader starts at the keyframe at or before the first frame it needs: no container, no
seek), and the concatenated packets are themselves a playable ``.h264`` file.
"""
from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from fractions import Fraction

import av
import numpy as np

__all__ = ["H264Encoder", "X264_AVX2_CAP", "has_avx512", "is_keyframe", "keyframe_before", "stream_size",
           "GopDecoder"]

# Closed GOPs of exactly ``gop`` frames whatever the content (no scene-cut keyframes, so the
# random-access cost is known), no B-frames (a packet per frame, in order, and no decoder delay),
# SPS/PPS repeated at every IDR (each GOP stands alone).
X264_PARAMS = "keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:open-gop=0"
# On a CPU with AVX-512, x264's AVX-512 kernels made about 1 encode in 450 of the same frames
# differ (11 of 5,000 encodes of one 84x64 clip gave 4 other streams; 0 of 10,000 with AVX2),
# so a converted or predicted video was not the same bytes twice (a shard rebuilt on resume
# no longer matched its uploaded copy; predict's scores moved by 1e-4 from eval's). Capped at
# AVX2, the stream is the one the AVX-512 run gives when it agrees with itself, at the same
# speed (0.91-0.93 s of CPU a 256p clip of 132 frames either way).
X264_AVX2_CAP = "asm=AVX2"
START_CODE = b"\x00\x00\x01"
NAL_SPS = 7
# h264 profiles whose SPS carries chroma format and bit depth (ITU-T H.264 7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class H264Encoder:
    """libx264 on one thread (repeatable bytes: the same frames give the same stream)."""

    def __init__(self, width: int, height: int, fps: float, crf: int, gop: int, preset: str,
                 fastdecode: bool) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"h264 4:2:0 needs an even frame size, got {width}x{height}")
        self.width, self.height = width, height
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        ctx.framerate, ctx.time_base = rate, 1 / rate
        ctx.thread_count = 1
        params = X264_PARAMS.format(gop=gop) + (f":{X264_AVX2_CAP}" if has_avx512() else "")
        options = {"crf": str(crf), "preset": preset, "x264-params": params}
        if fastdecode:
            options["tune"] = "fastdecode"
        ctx.options = options
        self._ctx, self._count = ctx, 0

    def encode(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> list[bytes]:
        """Packets x264 has ready after taking this frame's planes (BT.601, limited range)."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for plane, data in zip(frame.planes, (y, u, v)):
            np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:, :data.shape[1]] = data
        frame.pts = self._count
        self._count += 1
        return [bytes(p) for p in self._ctx.encode(frame)]

    def finish(self) -> list[bytes]:
        """The packets still in x264's lookahead."""
        return [bytes(p) for p in self._ctx.encode(None)]


@cache
def has_avx512(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this x86-64 CPU runs AVX-512 (where x264 must be capped at AVX2: X264_AVX2_CAP).
    Elsewhere (another architecture, no /proc) the cap is not given: x264 only parses x86 names
    there, and an x86 CPU without AVX-512 never runs those kernels."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "avx512f" in line.split() for line in text.splitlines())


def _first_nal(packet: bytes | memoryview) -> memoryview:
    """The packet's first NAL unit (header byte first), without its start code."""
    data = memoryview(packet)
    head = bytes(data[:8])
    start = head.find(START_CODE)
    if start < 0:
        raise ValueError("the packet does not start with an Annex-B start code")
    nal = data[start + len(START_CODE):]
    end = bytes(nal[:256]).find(START_CODE)      # an SPS is a few dozen bytes
    return nal if end < 0 else nal[:end]


def is_keyframe(packet: bytes | memoryview) -> bool:
    """Whether ``packet`` opens a GOP: it starts with an SPS (x264 repeats it at every IDR)."""
    head = bytes(memoryview(packet)[:5])
    start = head.find(START_CODE)
    return start >= 0 and start + 3 < len(head) and head[start + 3] & 0x1F == NAL_SPS


def keyframe_before(blob: bytes | memoryview, offsets: np.ndarray, index: int) -> int:
    """The keyframe at or before frame ``index``; ValueError if frame 0 is not one."""
    data = memoryview(blob)
    for i in range(index, -1, -1):
        if is_keyframe(data[int(offsets[i]):int(offsets[i] + 5)]):
            return i
    raise ValueError(f"no keyframe at or before frame {index}")


class _Bits:
    """An RBSP read bit by bit: fixed-width and Exp-Golomb fields."""

    def __init__(self, nal: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(nal.replace(b"\x00\x00\x03", b"\x00\x00"), np.uint8))
        self.pos = 0

    def u(self, width: int) -> int:
        if self.pos + width > len(self.bits):
            raise ValueError("the SPS ends early")
        value = 0
        for bit in self.bits[self.pos:self.pos + width]:
            value = value << 1 | int(bit)
        self.pos += width
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("a malformed Exp-Golomb field in the SPS")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


def stream_size(keyframe: bytes | memoryview) -> tuple[int, int]:
    """(height, width) of the pictures of a GOP, from the SPS its keyframe packet starts with
    (ITU-T H.264 7.3.2.1.1): a clip's crop box is drawn before any frame is decoded, as the JPEG
    path reads a frame's size from its header. ValueError for a packet without a usable SPS."""
    nal = bytes(_first_nal(keyframe))
    if not nal or nal[0] & 0x1F != NAL_SPS:
        raise ValueError("the keyframe does not start with an SPS")
    bits = _Bits(nal[1:])
    profile = bits.u(8)
    bits.u(16)                  # constraint flags, level
    bits.ue()                   # seq_parameter_set_id
    chroma = 1
    if profile in _HIGH_PROFILES:
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)           # separate_colour_plane_flag
        bits.ue(), bits.ue(), bits.u(1)     # bit depths, qpprime_y_zero_transform_bypass
        if bits.u(1):
            raise ValueError("an SPS with scaling matrices (not written by this converter)")
    bits.ue()                   # log2_max_frame_num_minus4
    order = bits.ue()
    if order == 0:
        bits.ue()
    elif order == 1:
        bits.u(1), bits.se(), bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue(), bits.u(1)        # max_num_ref_frames, gaps_in_frame_num_allowed
    mbs_wide, map_units_high = bits.ue() + 1, bits.ue() + 1
    frames_only = bits.u(1)
    if not frames_only:
        bits.u(1)
    bits.u(1)                   # direct_8x8_inference
    left, right, top, bottom = [bits.ue() for _ in range(4)] if bits.u(1) else [0] * 4
    unit_x, unit_y = {0: (1, 1), 1: (2, 2), 2: (2, 1)}.get(chroma, (1, 1))
    unit_y *= 2 - frames_only
    return ((2 - frames_only) * map_units_high * 16 - unit_y * (top + bottom),
            mbs_wide * 16 - unit_x * (left + right))


class GopDecoder:
    """FFmpeg's h264 decoder fed packets straight from a blob, one per thread, reused.

    ``err_detect=explode`` makes a damaged packet an error instead of a concealed picture, so a
    stream that does not decode is found, as a JPEG that does not decode is.
    """

    _local = threading.local()

    @classmethod
    def for_thread(cls) -> "GopDecoder":
        decoder = getattr(cls._local, "decoder", None)
        if decoder is None:
            decoder = cls._local.decoder = cls()
        return decoder

    def __init__(self) -> None:
        self._ctx = self._open()

    @staticmethod
    def _open() -> av.CodecContext:
        ctx = av.CodecContext.create("h264", "r")
        ctx.thread_count = 1
        ctx.options = {"err_detect": "explode"}
        return ctx

    def run(self, blob: bytes | memoryview, offsets: np.ndarray, start: int,
            stop: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, picture) of frames ``start..stop-1``, ``start`` a keyframe. Raises ValueError
        naming the run when a packet does not decode or the run decodes to another frame count."""
        data, index, finished = memoryview(blob), start, False
        try:
            for i in range(start, stop):
                for picture in self._ctx.decode(av.Packet(bytes(data[int(offsets[i]):int(offsets[i + 1])]))):
                    yield index, picture
                    index += 1
            for picture in self._ctx.decode(None):
                yield index, picture
                index += 1
            finished = True
        except av.error.FFmpegError as exc:
            raise ValueError(f"h264 frames {start}..{stop - 1} do not decode "
                             f"({' '.join(str(exc.strerror or exc).split())})") from None
        finally:
            if finished:
                self._ctx.flush_buffers()
            else:           # failed or abandoned mid-stream: the next run starts afresh
                self._ctx = self._open()
        if index != stop:
            raise ValueError(f"h264 frames {start}..{stop - 1} decode to {index - start} frames, "
                             f"not {stop - start}")
