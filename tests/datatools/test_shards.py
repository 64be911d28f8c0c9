"""Shard assignment, page layout and header sizing, and the shared tiny_records set as the trainer
reads it."""
from __future__ import annotations

import math
from collections import Counter

import mindspore.dataset as ds
import numpy as np
import pytest
import simplejpeg
from mindspore.mindrecord import FileReader, FileWriter

from datatools import schema, shards
from datatools.convert import plan_shards
from datatools.kinetics import read_csv
from datatools.manifest import (JPEG, MB, MIN_PAGE, STATUS_OK, DoneMarker, FileDigest, Settings, ShardFiles,
                                read_rows)
from datatools.pages import MIN_HEADER, ONE_CALL_PAGES, header_size, pack_pages, sample_bytes, write_calls
from datatools.plan import ShardTask, VideoTask, assign_shards
from datatools.video import EncodedVideo
from tests.datatools.test_convert import read_split

# A skewed class list: one big class, a few mid-sized ones, a singleton, as Kinetics' tail is.
SKEWED = [0] * 61 + [1] * 23 + [2] * 9 + [3] * 1 + [4] * 17


def _mix(labels: list[int], shards: list[int]) -> Counter:
    """Videos per (shard, class)."""
    return Counter(zip(shards, labels))


def test_every_shard_holds_each_class_within_one_of_its_ideal_share():
    labels = sorted(SKEWED)                                  # CSV sorted by class, as Kinetics is
    shards = assign_shards(labels, 8, seed=0)
    num_shards = max(shards) + 1
    assert num_shards == -(-len(labels) // 8) == 14
    mix = _mix(labels, shards)
    for cls, n in Counter(labels).items():
        for shard in range(num_shards):
            assert abs(mix[shard, cls] - n / num_shards) < 1, (shard, cls, mix[shard, cls])
    sizes = Counter(shards).values()
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= 8


def test_the_seed_changes_which_videos_but_not_how_many_per_shard_and_class():
    labels = [SKEWED[i * 37 % len(SKEWED)] for i in range(len(SKEWED))]   # CSV in no class order
    first, second = assign_shards(labels, 8, seed=3), assign_shards(labels, 8, seed=4)
    assert first != second
    assert _mix(labels, first) == _mix(labels, second)


def test_assignment_rejects_a_bad_shard_size():
    with pytest.raises(ValueError, match="videos_per_shard must be >= 1, got 0"):
        assign_shards([0, 1], 0, seed=0)


def _write_one_page_videos(path, count: int, header: int) -> list[str]:
    """``count`` samples that each fill a page of the smallest size: the most pages a shard of
    ``count`` videos can take."""
    writer = FileWriter(str(path), shard_num=1, overwrite=True)
    writer.set_page_size(MIN_PAGE)
    writer.set_header_size(header)
    writer.add_schema(schema.RECORD_SCHEMA, "one page per video")
    rng, samples = np.random.default_rng(0), []
    for i in range(count):
        blob = rng.bytes(MIN_PAGE // 2 + 1)
        offsets = np.array([0, len(blob)], np.int64)
        samples.append({schema.VIDEO_ID: f"v{i}", schema.LABEL: 0, schema.NUM_FRAMES: 1,
                        schema.HEIGHT: 1, schema.WIDTH: 1, schema.OFFSETS: offsets, schema.FRAMES: blob,
                        schema.CHECKSUM: schema.sample_checksum(f"v{i}", 0, offsets, blob)})
    writer.write_raw_data(samples)
    writer.commit()
    return [s[schema.VIDEO_ID] for s in samples]


def test_header_size_holds_a_page_per_video_where_the_minimum_header_does_not(tmp_path):
    count = 300    # enough pages that the header outgrows MIN_HEADER
    header = header_size(MIN_PAGE, count)
    written = _write_one_page_videos(tmp_path / "big.mindrecord", count, header)
    reader = FileReader(str(tmp_path / "big.mindrecord"), num_consumer=1, columns=[schema.VIDEO_ID])
    try:
        assert sorted(str(item[schema.VIDEO_ID]) for item in reader.get_next()) == sorted(written)
    finally:
        reader.close()
    assert header > MIN_HEADER
    with pytest.raises(RuntimeError):
        _write_one_page_videos(tmp_path / "small.mindrecord", count, MIN_HEADER)


def _pages_taken(sizes: list[int], page: int) -> int:
    """Blob pages MindRecord's writer fills with samples of ``sizes`` in this order: whole samples,
    a new page for one that does not fit the last."""
    pages, used = 0, page
    for size in sizes:
        if used + size > page:
            pages, used = pages + 1, 0
        used += size
    return pages


def test_packed_pages_are_full_where_the_plan_order_leaves_them_part_empty():
    sizes, page = [60, 60, 45, 40, 40, 35, 20], 100
    assert _pages_taken(sizes, page) == 4
    pages = pack_pages(sizes, page)
    assert sorted(i for p in pages for i in p) == list(range(len(sizes)))
    assert [sum(sizes[i] for i in p) for p in pages] == [100, 100, 100]
    assert all(p == sorted(p) for p in pages)               # a page keeps the given order
    assert _pages_taken([sizes[i] for p in pages for i in p], page) == 3


def test_packing_refuses_a_sample_larger_than_a_page():
    with pytest.raises(ValueError, match="a sample of 101 bytes does not fit a page of 100"):
        pack_pages([50, 101], 100)


def test_a_shard_is_one_write_call_unless_it_takes_more_than_one_call_pages():
    assert write_calls([50] * 8, 100) == [list(range(8))]
    assert write_calls([60] * (ONE_CALL_PAGES + 1), 100) == [[i] for i in range(ONE_CALL_PAGES + 1)]


def _convert_stub_shard(tmp_path, monkeypatch, frame_sizes: list[list[int]], page: int) -> ShardFiles:
    """convert_shard over videos whose encoder returns random "JPEGs" of ``frame_sizes`` (one list
    per video): the real spool, write, read-back verification, digests and marker, no decoding."""
    sources = {f"v{i:03d}.mp4": sizes for i, sizes in enumerate(frame_sizes)}

    def encode(source, *args, **kwargs) -> EncodedVideo:
        rng = np.random.default_rng(int(source[1:4]))
        return EncodedVideo([rng.bytes(n) for n in sources[source]], 25.0, 340, 256, 340, 256)

    monkeypatch.setattr(shards, "encode_or_reason", encode)
    settings = Settings(codec=JPEG, short_side=256, quality=90, max_fps=None, videos_per_shard=len(sources), seed=0,
                        page_size=page)
    videos = tuple(VideoTask(i, name[:4], 0, "walk", name) for i, name in enumerate(sources))
    rows = shards.convert_shard(ShardTask(0, str(tmp_path), videos, settings, labels_sha256=""))
    assert [row.status for _, row in rows] == [STATUS_OK] * len(videos)
    files = ShardFiles.of(tmp_path, 0)
    dataset = ds.MindDataset([str(files.record)], columns_list=[schema.VIDEO_ID], shuffle=False)
    assert sorted(str(r[schema.VIDEO_ID]) for r in dataset.create_dict_iterator(output_numpy=True)) == \
        sorted(v.video_id for v in videos)
    assert DoneMarker.read(files.done).files == {p.name: FileDigest.of(p) for p in (files.record, files.db)}
    return files


SCALED_PAGE = 4 * MB


def _synthetic_like(rng: np.random.Generator) -> list[list[int]]:
    """benchmarks/shards.py's full case (64 synthetic videos of 300 frames at 340x256, q90: 18.29
    KB a frame, video sizes within 0.6%; 32 MiB pages) scaled down 8 times: 4 MiB pages, 37
    frames of 18.54 KB, so as many videos per page and pages per shard."""
    return [[round(18_540 * scale)] * 37 for scale in rng.normal(1, 0.006, 64)]


def _kinetics_like(rng: np.random.Generator) -> list[list[int]]:
    """The same scaling of Kinetics-like videos: 250-300 frames of 15-25 KB, by video."""
    return [[round(size)] * n for n, size in zip(rng.integers(31, 38, 64), rng.uniform(15e3, 25e3, 64))]


@pytest.mark.parametrize("videos", [_synthetic_like, _kinetics_like])
def test_a_shard_is_its_header_the_fewest_pages_it_fits_in_and_the_raw_page(videos, tmp_path,
                                                                           monkeypatch):
    """Nothing but the last blob page's tail is a hole: every other page is full (the packing) and
    the raw page (~100 bytes a video) comes last, not in a page-sized slot mid-file (one call)."""
    frame_sizes = videos(np.random.default_rng(1))
    files = _convert_stub_shard(tmp_path, monkeypatch, frame_sizes, SCALED_PAGE)
    fewest = math.ceil(sum(sample_bytes(len(f), sum(f)) for f in frame_sizes) / SCALED_PAGE)
    count = len(frame_sizes)
    raw = files.record.stat().st_size - header_size(SCALED_PAGE, count) - fewest * SCALED_PAGE
    assert 0 < raw < 200 * count


def test_a_shard_too_big_for_one_call_is_written_a_page_a_call_and_reads_back(tmp_path, monkeypatch):
    calls = []
    write = FileWriter.write_raw_data
    monkeypatch.setattr(FileWriter, "write_raw_data",
                        lambda self, data: calls.append(len(data)) or write(self, data))
    _convert_stub_shard(tmp_path, monkeypatch, [[1500] * 3] * 5 * (ONE_CALL_PAGES + 1), MIN_PAGE)
    assert len(calls) > ONE_CALL_PAGES and max(calls) == 5          # a page of 5 videos a call


def test_tiny_records_match_the_csv_and_stored_sizes(tiny_records):
    assert schema.read_labels(tiny_records.labels) == sorted(
        {e.label for e in read_csv(tiny_records.train_csv)})
    for split, csv_path in (("train", tiny_records.train_csv), ("val", tiny_records.val_csv)):
        rows = read_rows(tiny_records.split(split))
        assert [r.video_id for r in rows] == [e.video_id for e in read_csv(csv_path)]
        assert {r.status for r in rows} == {STATUS_OK}
        samples = read_split(tiny_records.split(split))
        assert sorted(str(s[schema.VIDEO_ID]) for s in samples) == sorted(r.video_id for r in rows)
        for s in samples:
            blob, offsets = s[schema.FRAMES].tobytes(), s[schema.OFFSETS]
            assert int(s[schema.NUM_FRAMES]) == tiny_records.num_frames
            last = simplejpeg.decode_jpeg(bytes(schema.frame_bytes(blob, offsets, len(offsets) - 2)))
            assert last.shape == (int(s[schema.HEIGHT]), int(s[schema.WIDTH]), 3) == (64, 85, 3)


def test_the_plan_does_not_depend_on_which_videos_exist(tiny_records, tmp_path):
    """A resumed run must plan the same shards after videos appeared or vanished."""
    names = schema.read_labels(tiny_records.labels)
    entries = read_csv(tiny_records.train_csv)
    videos = tmp_path / "videos"           # the same tree with half the files missing
    for i, source in enumerate(sorted((tiny_records.source / "videos").rglob("*.mp4"))):
        if i % 2:
            target = videos / source.relative_to(tiny_records.source / "videos")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    plans = [plan_shards(entries, {n: i for i, n in enumerate(names)}, root, "unused",
                         tiny_records.settings, labels_sha256="")[0]
             for root in (tiny_records.source / "videos", videos)]
    assert [[v.video_id for v in t.videos] for t in plans[0]] == \
        [[v.video_id for v in t.videos] for t in plans[1]]
    assert sum(not v.source for t in plans[1] for v in t.videos) == len(entries) // 2
    stored = {r.video_id: r.shard for r in read_rows(tiny_records.split("train"))}
    assert {v.video_id: t.index for t in plans[1] for v in t.videos} == stored


def test_one_file_digest_serves_shards_and_obs(tmp_path):
    """Markers and manifests store size and sha256; OBS transfers need the MD5 as well: one
    class, the MD5 read only when asked, stored nowhere, and no part of a kept shard's identity."""
    import hashlib
    import json

    from datatools import obs
    path = tmp_path / "f.bin"
    path.write_bytes(b"stnet" * 1000)
    for_obs, for_shard = FileDigest.of(path, md5=True), FileDigest.of(path)
    assert for_obs.md5 == hashlib.md5(path.read_bytes()).hexdigest() and for_shard.md5 == ""
    assert for_obs == for_shard and for_obs.stored() == {"size": 5000, "sha256": for_shard.sha256}
    assert obs.ObjectStat(5000, for_obs.md5, None, False).holds(for_obs)
    files = ShardFiles.of(tmp_path, 0)
    DoneMarker(Settings(1, 90, None, 1, 0), "", (), {"f.bin": for_obs}, {}).write(files)
    assert json.loads(files.done.read_text())["files"] == {"f.bin": for_shard.stored()}
