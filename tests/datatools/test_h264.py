"""The stored h264 stream on real encodes of synthetic videos: closed GOPs, random access equal to a
sequential decode, a playable Annex-B file, even stored sizes, damage found, resume refused."""
from __future__ import annotations

import argparse
import io
import json
import platform
from dataclasses import replace

import av
import numpy as np
import pytest

from datatools.convert import build_parser, convert, main
from datatools.frames import FrameError, H264Frames, i420_rgb, stored_frames
from datatools.h264 import X264_AVX2_CAP, GopDecoder, H264Encoder, has_avx512, is_keyframe, stream_size
from datatools.inspect import inspect_split
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import H264, Settings, ShardFiles
from datatools.schema import frame_bytes, pack_frames
from datatools.synth import SynthSpec, make_dataset, render_video, write_mp4
from datatools.video import encode_video

GOP = 4
H264_SETTINGS = Settings(0, 90, None, videos_per_shard=4, seed=0, page_size=1 << 20, codec=H264, gop=GOP)


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> tuple[bytes, np.ndarray]:
    """One synthetic video (noise, a moving blob) as a stored h264 blob + offsets: 22 frames,
    GOPs of 4 (the last one short)."""
    path = tmp_path_factory.mktemp("h264") / "v.mp4"
    write_mp4(path, render_video(0, np.random.default_rng(3), SynthSpec(22, 96, 64)))
    encoded = encode_video(path, H264_SETTINGS)
    assert (len(encoded.frames), encoded.width, encoded.height) == (22, 96, 64)
    return pack_frames(encoded.frames)


def _sequential(blob: bytes) -> list[av.VideoFrame]:
    """The whole blob decoded from start to end as a raw .h264 file, by FFmpeg's own demuxer."""
    with av.open(io.BytesIO(blob), format="h264") as container:
        return list(container.decode(video=0))


def _yuv(picture: av.VideoFrame) -> np.ndarray:
    return picture.to_ndarray(format="yuv420p")


def test_every_gop_starts_with_sps_and_decodes_on_its_own(stream):
    blob, offsets = stream
    keys = [i for i in range(len(offsets) - 1) if is_keyframe(frame_bytes(blob, offsets, i))]
    assert keys == list(range(0, 22, GOP))
    sequential = [_yuv(p) for p in _sequential(blob)]
    assert len(sequential) == 22
    decoder = GopDecoder()
    for start in reversed(keys):    # backwards: no GOP leans on the one decoded before it
        stop = min(start + GOP, 22)
        got = [(i, _yuv(p)) for i, p in decoder.run(blob, offsets, start, stop)]
        assert [i for i, _ in got] == list(range(start, stop))
        for i, yuv in got:
            np.testing.assert_array_equal(yuv, sequential[i])


def test_random_access_frames_equal_a_sequential_decode_bit_for_bit(stream):
    blob, offsets = stream
    sequential = _sequential(blob)
    frames = stored_frames(H264)
    for indices in ([0], [21], [3, 5, 6, 13, 14, 20], [7, 8, 9, 10, 11, 12], list(range(22))):
        got = list(frames.decode(blob, offsets, indices))
        assert [i for i, _, _ in got] == indices
        for index, size, rgb in got:
            assert size == (64, 96) and rgb.shape == (64, 96, 3)
            np.testing.assert_array_equal(rgb, i420_rgb(sequential[index]))
    # a region (odd top and left) is the same pixels as the converted frame, cropped
    for index, size, rgb in frames.decode(blob, offsets, [9, 17], region=(5, 7, 31, 41)):
        np.testing.assert_array_equal(rgb, i420_rgb(sequential[index])[5:36, 7:48])


def test_runs_start_at_the_keyframe_before_and_continue_forward(stream):
    blob, offsets = stream
    assert H264Frames.runs(blob, offsets, [5, 6, 9, 13, 19]) == [(4, 7), (8, 10), (12, 14), (16, 20)]
    assert H264Frames.runs(blob, offsets, [0, 3, 4, 7]) == [(0, 8)]


def test_the_stored_blob_is_a_playable_h264_file(stream, tmp_path):
    blob, offsets = stream
    path = tmp_path / "v.h264"
    path.write_bytes(blob)
    with av.open(str(path), format="h264") as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) == 22 and (pictures[0].height, pictures[0].width) == (64, 96)
    assert [i for i, p in enumerate(pictures) if p.key_frame] == list(range(0, 22, GOP))
    assert stream_size(frame_bytes(blob, offsets, 0)) == (64, 96)


def test_x264_is_capped_at_avx2_on_an_avx512_cpu(tmp_path):
    """Uncapped on this AVX-512 machine, x264 gave another stream for 0.2-3% of 1,000-5,000
    encodes of the same frames of a demo validation video, depending on the heap around its
    buffers (none of 15,000 capped): the reason a rebuilt shard no longer matched its uploaded
    copy and predict's scores moved 1e-4 from eval's. The variation would not reproduce inside
    a test process, so the cap itself is checked: read from the CPU's flags, given to x264."""
    flags = "flags\t\t: fpu sse2 avx2 {}\n"
    with_avx512, without = tmp_path / "with", tmp_path / "without"
    with_avx512.write_text(flags.format("avx512f avx512bw"))
    without.write_text(flags.format("avx512_bf16"))     # a flag that is not avx512f itself
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert (has_avx512(with_avx512), has_avx512(without), has_avx512(tmp_path / "none")) == (x86, False, False)
    params = H264Encoder(84, 64, 25.0, 18, 8, "veryfast", True)._ctx.options["x264-params"]
    assert params.endswith(f":{X264_AVX2_CAP}") == has_avx512(), params


def test_odd_sizes_are_stored_one_pixel_shorter(tmp_path):
    """4:2:0 needs even sides: 160x120 at short side 63 is 84x63 for JPEG, 84x62 for h264, and
    height/width are the decoded size."""
    path = tmp_path / "v.mp4"
    write_mp4(path, render_video(1, np.random.default_rng(0), SynthSpec(6, 160, 120)))
    encoded = encode_video(path, replace(H264_SETTINGS, short_side=63))
    assert (encoded.width, encoded.height) == (84, 62)
    blob, offsets = pack_frames(encoded.frames)
    assert stream_size(frame_bytes(blob, offsets, 0)) == (62, 84)
    assert {size for _, size, _ in stored_frames(H264).decode(blob, offsets, range(6))} == {(62, 84)}
    jpeg = encode_video(path, replace(H264_SETTINGS, short_side=63, codec="jpeg"))
    assert (jpeg.width, jpeg.height) == (84, 63)


def _damaged(blob: bytes, offsets: np.ndarray, how: str) -> tuple[bytes, np.ndarray]:
    """Frame 9's packet cut in half, or bytes in the middle of its slice overwritten."""
    packets = [bytes(frame_bytes(blob, offsets, i)) for i in range(len(offsets) - 1)]
    packet = packets[9]
    if how == "truncated":
        packets[9] = packet[:len(packet) // 2]
    else:
        middle = len(packet) // 2
        packets[9] = packet[:middle] + bytes(8) + packet[middle + 8:]
    return pack_frames(packets)


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_stream_does_not_decode_and_names_its_gop(stream, how):
    blob, offsets = _damaged(*stream, how)
    frames = stored_frames(H264)
    with pytest.raises(FrameError, match=r"^h264 frames 8\.\.9 do not decode \(Invalid data"):
        list(frames.decode(blob, offsets, [9]))
    assert [i for i, _, _ in frames.decode(blob, offsets, [3, 13])] == [3, 13]   # other GOPs still read
    assert frames.problems(blob, offsets, 64, 96) == ["h264 frames 8..11 do not decode "
                                                       "(Invalid data found when processing input)"]
    assert frames.problems(*stream, 64, 96) == []
    assert frames.problems(*stream, 64, 94) == ["h264 frame 0 is 96x64, the sample says 94x64 (22 frames in all)"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """Four synthetic videos, their CSV and labels."""
    root = tmp_path_factory.mktemp("h264set")
    train_csv, _ = make_dataset(root, 2, 2, 1, seed=1, spec=SynthSpec(12, 96, 64))
    labels = root / "labels.txt"
    write_labels(class_names(e.label for e in read_csv(train_csv)), labels)
    return root, train_csv, labels


def test_inspect_finds_a_stream_damaged_on_disk(tiny_set, tmp_path):
    root, csv, labels = tiny_set
    out = tmp_path / "train"
    result = convert(csv, root / "videos", labels, out, H264_SETTINGS)
    assert all(row.ok for row in result.rows) and len(result.rows) == 4
    report = inspect_split(out, decode=True)
    assert not report.problems and "every h264 GOP decodes on its own" in report.checked
    record = ShardFiles.of(out, 0).record
    data = bytearray(record.read_bytes())
    at = data.find(b"\x00\x00\x00\x01\x41")        # the first P-frame slice of the first video
    data[at + 40:at + 48] = bytes(8)
    with open(record, "r+b") as f:                 # in place: the shard stays sparse
        f.seek(at + 40)
        f.write(bytes(data[at + 40:at + 48]))
    problems = inspect_split(out, decode=True).problems
    assert problems[0].startswith(f"{record.name}: ") and problems[0].endswith(
        ": checksum mismatch; h264 frames 0..3 do not decode (Invalid data found when processing input)")
    assert problems[1:] == [f"{record.name}: sha256 differs from the manifest's"]


def test_an_h264_resume_with_other_settings_is_refused(tiny_set, tmp_path):
    root, csv, labels = tiny_set
    out = tmp_path / "train"
    convert(csv, root / "videos", labels, out, H264_SETTINGS)
    for change in ({"gop": 8}, {"crf": 23}, {"fastdecode": False}, {"preset": "fast"}, {"codec": "jpeg"}):
        with pytest.raises(ValueError, match="holds shards converted with other settings"):
            convert(csv, root / "videos", labels, out, replace(H264_SETTINGS, **change))
    assert convert(csv, root / "videos", labels, out, H264_SETTINGS).shards_kept == 1


@pytest.mark.parametrize("flags, message", [
    (["--codec", "jpeg", "--crf", "20"], "--crf applies to --codec h264, not --codec jpeg"),
    (["--codec", "h264", "--quality", "80"], "--quality applies to --codec jpeg, not --codec h264"),
    (["--codec", "h265"], "--codec must be one of jpeg|h264, got 'h265'"),
    (["--codec", "h264", "--gop", "0"], "--gop must be >= 1, got 0"),
    (["--codec", "h264", "--crf", "52"], "--crf must be in 0..51, got 52"),
    (["--codec", "h264", "--preset", "quick"], "--preset must be one of ultrafast|"),
])
def test_codec_options_are_checked_with_one_line(tiny_set, tmp_path, flags, message):
    root, csv, labels = tiny_set
    args: argparse.Namespace = build_parser().parse_args(
        ["--csv", str(csv), "--videos", str(root / "videos"), "--labels", str(labels),
         "--out", str(tmp_path / "out"), *flags])
    with pytest.raises(ValueError, match="^" + message.replace("|", r"\|")):
        main(args)
    assert not (tmp_path / "out").exists()


def test_records_of_the_previous_schema_still_read(tmp_path):
    """Schema v3 adds the codec to the settings; a v2 split is JPEG as before and still reads."""
    import pyarrow.parquet as pq

    from datatools.manifest import (META_SCHEMA_VERSION, META_SETTINGS, read_manifest, read_settings,
                                    write_manifest)
    from datatools.schema import SchemaVersionError

    path = write_manifest([], tmp_path, Settings(256, 90, None, 64, 0), {})
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    settings = json.loads(meta[META_SETTINGS])
    for field in ("codec", "crf", "gop", "preset", "fastdecode"):     # as v2 wrote them: without
        del settings[field]
    for version, readable in ((b"2", True), (b"1", False)):
        meta.update({META_SCHEMA_VERSION: version, META_SETTINGS: json.dumps(settings).encode()})
        pq.write_table(table.replace_schema_metadata(meta), path)
        if readable:
            assert read_settings(read_manifest(tmp_path)).codec == "jpeg"
        else:
            with pytest.raises(SchemaVersionError, match="records schema v1, this code reads v2 or v3"):
                read_manifest(tmp_path)


@pytest.mark.parametrize("rotation, turn, pix_fmt", [
    (-90, lambda u: np.rot90(u, 1, axes=(1, 2)), "yuv420p"),    # planes turned
    (180, lambda u: u[:, ::-1, ::-1], "yuv420p"),
    (-90, lambda u: np.rot90(u, 1, axes=(1, 2)), "yuv444p"),    # swscale to 4:2:0 planes first
])
def test_h264_frames_are_stored_upright(tmp_path, rotation, turn, pix_fmt):
    """As for JPEG (test_video.py): the display matrix's turn is applied to each plane."""
    from tests.datatools import bad_videos
    from tests.datatools.test_video import _marked

    stored = np.ascontiguousarray(turn(_marked(64, 48)))
    path = bad_videos.clip(tmp_path / "v.mp4", stored, rotation=rotation, pix_fmt=pix_fmt)
    result = encode_video(path, replace(H264_SETTINGS, short_side=24))
    assert (result.src_width, result.src_height, result.width, result.height) == (64, 48, 32, 24)
    blob, offsets = pack_frames(result.frames)
    _, size, picture = next(stored_frames(H264).decode(blob, offsets, [0]))
    assert size == (24, 32)
    grey = picture.mean(axis=2)
    corners = [grey[:6, :8], grey[:6, -8:], grey[-6:, :8], grey[-6:, -8:]]
    assert corners[0].mean() > 150 and max(c.mean() for c in corners[1:]) < 80, [c.mean() for c in corners]
