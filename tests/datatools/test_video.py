"""datatools.video on real media: every bad source is a one-line VideoError; sizes and fps cap."""
from __future__ import annotations

import re

import av
import numpy as np
import pytest
import simplejpeg

from datatools import video
from datatools.manifest import JPEG, Settings
from datatools.synth import SynthSpec, render_video
from datatools.video import (EncodedVideo, VideoError, encodes_from_planes, encode_frame, iter_frames,
                             stored_size)
from tests.datatools import bad_videos


def encode_video(path, short_side: int, quality: int, max_fps: float | None = None, threads: int = 0,
                 max_bytes: int | None = None) -> EncodedVideo:
    """datatools.video.encode_video with JPEG settings of these values."""
    return video.encode_video(path, Settings(short_side, quality, max_fps, videos_per_shard=1, seed=0, codec=JPEG),
                              threads, max_bytes)


@pytest.mark.parametrize("make, reason", [
    (lambda p: p, "missing file"),
    (bad_videos.zero_bytes, "empty file: 0 bytes"),
    (bad_videos.random_bytes, "cannot open: Invalid data found when processing input"),
    (lambda p: bad_videos.truncated(p, faststart=False), "cannot open: "),
    (lambda p: bad_videos.truncated(p, faststart=True), "truncated: decoded "),
    (bad_videos.audio_only, "no video stream"),
    (bad_videos.no_frames, "no frames decoded"),
    (lambda p: bad_videos.clip(p, np.zeros((2, 48, 64, 3), np.uint8), rotation=45),
     "unsupported rotation: 45 degrees"),
])
def test_bad_sources_raise_one_line_reasons(tmp_path, make, reason):
    path = make(tmp_path / "v.mp4")
    with pytest.raises(VideoError) as info:
        encode_video(path, short_side=112, quality=90)
    assert str(info.value).startswith(reason)
    assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("src, short_side, expected", [
    ((340, 256), 256, (340, 256)),     # already at the target
    ((1280, 720), 256, (455, 256)),    # landscape down
    ((720, 1280), 256, (256, 455)),    # portrait down
    ((176, 144), 256, (176, 144)),     # below the target: never upscaled
    ((1280, 720), 0, (1280, 720)),     # 0 keeps the source size
])
def test_stored_size_keeps_aspect_and_never_upscales(src, short_side, expected):
    assert stored_size(*src, short_side) == expected


def test_frames_decode_to_stored_size_and_match_the_source(tmp_path):
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=10, width=160, height=120)
    video = encode_video(path, short_side=60, quality=95)
    assert (video.src_width, video.src_height, video.width, video.height) == (160, 120, 80, 60)
    assert len(video.frames) == 10 and video.fps == 25
    first = simplejpeg.decode_jpeg(video.frames[0], colorspace="RGB")
    assert first.shape == (60, 80, 3)
    small = bad_videos.good(tmp_path / "small.mp4", num_frames=3, width=64, height=48)
    assert simplejpeg.decode_jpeg(encode_video(small, 112, 90).frames[0]).shape == (48, 64, 3)


def test_max_fps_drops_frames_evenly(tmp_path):
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=25)   # 1 s at 25 fps
    assert len(encode_video(path, 0, 90, max_fps=10).frames) == 10
    assert len(encode_video(path, 0, 90, max_fps=30).frames) == 25   # cap above the source rate


def test_quality_changes_bytes(tmp_path):
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=4, width=160, height=120)
    low, high = (sum(map(len, encode_video(path, 0, q).frames)) for q in (50, 95))
    assert low < high
    decoded = simplejpeg.decode_jpeg(encode_video(path, 0, 95).frames[0])
    assert decoded.dtype == np.uint8


@pytest.mark.parametrize("size", [(160, 120), (85, 64)])   # kept, and resized to odd width
def test_planar_route_matches_the_rgb_route(tmp_path, size):
    """4:2:0 BT.601 frames are encoded from their planes; the picture must equal the RGB route's."""
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=2, width=160, height=120)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    rgb_frame = frame.reformat(format="rgb24")
    assert encodes_from_planes(frame) and not encodes_from_planes(rgb_frame)
    planar = simplejpeg.decode_jpeg(encode_frame(frame, size, 95), colorspace="RGB").astype(float)
    via_rgb = simplejpeg.decode_jpeg(encode_frame(rgb_frame, size, 95), colorspace="RGB").astype(float)
    assert planar.shape == via_rgb.shape == (size[1], size[0], 3)
    psnr = 10 * np.log10(255 ** 2 / np.mean((planar - via_rgb) ** 2))
    assert psnr > 35, psnr
    assert np.abs(planar.mean(axis=(0, 1)) - via_rgb.mean(axis=(0, 1))).max() < 3


@pytest.mark.parametrize("size", [(85, 64), (86, 63), (85, 63)])
def test_planar_route_is_repeatable_at_odd_sizes(tmp_path, size):
    """The same frame encodes to the same bytes whatever memory lies after its planes (the
    plane encoder reads the luma plane to even dimensions)."""
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=2, width=160, height=120)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    encoded = set()
    for junk in range(0, 256, 17):   # freed blocks of other contents for the next planes to reuse
        scratch = [np.full(size[0] * size[1] + 64 * k, junk, np.uint8) for k in range(8)]
        del scratch
        encoded.add(encode_frame(frame, size, 90))
    assert len(encoded) == 1


def _clip_frames(num_frames: int = 48, width: int = 64, height: int = 48) -> np.ndarray:
    return render_video(1, np.random.default_rng(2), SynthSpec(num_frames, width, height))


@pytest.mark.parametrize("suffix, codec, threads, reason", [
    (".mp4", "libx264", 0, r"truncated: decoded \d+ of 48 frames$"),       # mp4 declares a count
    (".mp4", "libx264", 1, r"truncated: decode error after \d+ frames: "),  # the cut packet fails
    (".mkv", "libx264", 0, r"truncated: decoded 0\.\d\d s of 1\.92 s$"),    # only a duration
    (".webm", "libvpx-vp9", 0, r"truncated: decoded 0\.\d\d s of 1\.92 s$"),
])
def test_truncated_files_are_refused_in_every_container(tmp_path, suffix, codec, threads, reason):
    """Half of each file cut off (an interrupted download) is refused; the whole file keeps every frame."""
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder for the {suffix} case")
    path = bad_videos.clip(tmp_path / f"v{suffix}", _clip_frames(48, 160, 120), codec)
    assert len(encode_video(path, 0, 90, threads=threads).frames) == 48
    with pytest.raises(VideoError) as info:
        encode_video(bad_videos.cut(path), 0, 90, threads=threads)
    assert re.match(reason, str(info.value)), str(info.value)


def _marked(width: int, height: int) -> np.ndarray:
    """Dark frames with a bright block in the top-left corner: any turn or mirror moves it."""
    frames = np.full((4, height, width, 3), 30, np.uint8)
    frames[:, :height // 4, :width // 4] = 230
    return frames


@pytest.mark.parametrize("rotation, hflip, turn, pix_fmt", [
    (-90, False, lambda u: np.rot90(u, 1, axes=(1, 2)), "yuv420p"),   # phone portrait: shown turned clockwise
    (90, False, lambda u: np.rot90(u, -1, axes=(1, 2)), "yuv420p"),
    (180, False, lambda u: u[:, ::-1, ::-1], "yuv420p"),
    (0, True, lambda u: u[:, :, ::-1], "yuv420p"),                    # mirrored (FFmpeg reads it as 180)
    (180, True, lambda u: u[:, ::-1], "yuv420p"),                     # upside down mirror (reads as 0)
    (-90, False, lambda u: np.rot90(u, 1, axes=(1, 2)), "yuv444p"),   # the RGB route
])
def test_rotated_video_is_stored_upright(tmp_path, rotation, hflip, turn, pix_fmt):
    """The display matrix says how players show the picture; frames are stored that way up."""
    upright = _marked(64, 48)
    stored = np.ascontiguousarray(turn(upright))        # what the camera wrote
    path = bad_videos.clip(tmp_path / "v.mp4", stored, rotation=rotation, hflip=hflip, pix_fmt=pix_fmt)
    result = encode_video(path, short_side=24, quality=95)
    assert (result.src_width, result.src_height, result.width, result.height) == (64, 48, 32, 24)
    picture = simplejpeg.decode_jpeg(result.frames[0], colorspace="GRAY")[..., 0].astype(float)
    assert picture.shape == (24, 32)
    corners = [picture[:6, :8], picture[:6, -8:], picture[-6:, :8], picture[-6:, -8:]]
    assert corners[0].mean() > 150 and max(c.mean() for c in corners[1:]) < 80, [c.mean() for c in corners]


def test_max_fps_keeps_frames_by_time(tmp_path):
    """A burst of 60 fps then 10 fps: the cap thins the burst to 20 fps and keeps the slow part."""
    times = [k / 60 for k in range(30)] + [0.5 + k / 10 for k in range(10)]
    path = bad_videos.clip(tmp_path / "vfr.mp4", _clip_frames(40), times=times)
    kept = [frame.time for _, frame in iter_frames(path, max_fps=20)]
    assert len(kept) == 20 and kept[-10:] == pytest.approx(times[-10:])
    assert min(np.diff(kept)) == pytest.approx(0.05)
    # 30 fps in Matroska's millisecond timestamps (0, 33, 67, ...) sits on a 30 fps cap: keep all.
    mkv = bad_videos.clip(tmp_path / "v.mkv", _clip_frames(30), times=np.arange(30) / 30)
    assert len(list(iter_frames(mkv, max_fps=30))) == 30


def test_too_large_is_refused_before_decoding_everything(tmp_path, monkeypatch):
    """A video that cannot fit in a page is refused from its duration, or as soon as it overflows."""
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=64, width=160, height=120)
    total = sum(map(len, encode_video(path, 0, 90).frames))
    assert len(encode_video(path, 0, 90, max_bytes=total).frames) == 64
    encoded = []
    real_encode = video.encode_frame
    monkeypatch.setattr(video, "encode_frame", lambda *a, **k: encoded.append(1) or real_encode(*a, **k))
    with pytest.raises(VideoError) as info:
        encode_video(path, 0, 90, max_bytes=total // 4)
    assert str(info.value).startswith("too large: an estimated "), str(info.value)
    assert "--page-mb" in str(info.value) and encoded == []     # refused before the first encode
    encoded.clear()
    with pytest.raises(VideoError) as info:
        encode_video(path, 0, 90, max_bytes=total * 3 // 4)   # under the estimate's margin
    assert str(info.value).startswith("too large: ") and "frames already exceed" in str(info.value)
    assert len(encoded) < 64
