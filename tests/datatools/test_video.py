"""datatools.video on real media: every bad source is a one-line VideoError; sizes and fps cap."""
from __future__ import annotations

import av
import numpy as np
import pytest
import simplejpeg

from datatools.video import VideoError, encodes_from_planes, encode_frame, encode_video, stored_size
from tests.datatools import bad_videos


@pytest.mark.parametrize("make, reason", [
    (lambda p: p, "missing file"),
    (bad_videos.zero_bytes, "empty file: 0 bytes"),
    (bad_videos.random_bytes, "cannot open: Invalid data found when processing input"),
    (lambda p: bad_videos.truncated(p, faststart=False), "cannot open: "),
    (lambda p: bad_videos.truncated(p, faststart=True), "truncated: decoded "),
    (bad_videos.audio_only, "no video stream"),
    (bad_videos.no_frames, "no frames decoded"),
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
    assert len(video.jpegs) == 10 and video.fps == 25
    first = simplejpeg.decode_jpeg(video.jpegs[0], colorspace="RGB")
    assert first.shape == (60, 80, 3)
    small = bad_videos.good(tmp_path / "small.mp4", num_frames=3, width=64, height=48)
    assert simplejpeg.decode_jpeg(encode_video(small, 112, 90).jpegs[0]).shape == (48, 64, 3)


def test_max_fps_drops_frames_evenly(tmp_path):
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=25)   # 1 s at 25 fps
    assert len(encode_video(path, 0, 90, max_fps=10).jpegs) == 10
    assert len(encode_video(path, 0, 90, max_fps=30).jpegs) == 25   # cap above the source rate


def test_quality_changes_bytes(tmp_path):
    path = bad_videos.good(tmp_path / "v.mp4", num_frames=4, width=160, height=120)
    low, high = (sum(map(len, encode_video(path, 0, q).jpegs)) for q in (50, 95))
    assert low < high
    decoded = simplejpeg.decode_jpeg(encode_video(path, 0, 95).jpegs[0])
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
