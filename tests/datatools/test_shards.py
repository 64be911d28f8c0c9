"""Shard assignment, header sizing and the shared tiny_records set as the trainer reads it."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import simplejpeg
from mindspore.mindrecord import FileReader, FileWriter

from datatools import schema
from datatools.convert import plan_shards
from datatools.kinetics import read_csv
from datatools.manifest import MIN_PAGE, STATUS_OK, read_rows
from datatools.plan import assign_shards
from datatools.shards import MIN_HEADER, header_size
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
