"""benchmarks.codecs on a folder of footage: a video that makes cv2 (or the decoder, or the
allocator) raise is skipped with its reason, and the others are still measured."""
from __future__ import annotations

import cv2

from benchmarks import codecs
from tests.datatools import bad_videos
from tests.datatools.test_convert import _failing_resize


def test_a_video_that_makes_cv2_raise_is_skipped_and_the_next_measured(tmp_path, monkeypatch, capsys):
    for name in ("a", "b"):      # taller than the stored 256: both are resized
        bad_videos.good(tmp_path / f"{name}.mp4", num_frames=16, width=320, height=288)
    _failing_resize(monkeypatch, cv2.error("OpenCV(4.10) resize.cpp:4152: error: (-215:Assertion failed)\n"
                                           "  !ssize.empty() in function 'resize'\n"), times=1)
    args = codecs.build_parser().parse_args(["--videos", str(tmp_path), "--repeats", "1", "--clips", "1"])
    assert codecs.main(args) == 0
    out = capsys.readouterr().out.split("== ")
    assert out[1].startswith("a.mp4") and "skipped: cv2.error: OpenCV(4.10) resize.cpp:4152: error: " \
                                          "(-215:Assertion failed) !ssize.empty() in function 'resize'" in out[1]
    assert out[2].startswith("b.mp4") and "h264 crf18 gop8 " in out[2], out[2]
