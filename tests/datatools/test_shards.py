"""Shard assignment, header sizing and the shared tiny_records set as the trainer reads it."""
from __future__ import annotations

from collections import Counter

import pytest
import simplejpeg

from datatools import schema
from datatools.convert import plan_shards
from datatools.kinetics import read_csv
from datatools.manifest import DEFAULT_PAGE, STATUS_OK, read_rows
from datatools.plan import assign_shards
from datatools.shards import header_size
from tests.datatools.test_convert import read_split


def test_assignment_is_deterministic_and_depends_on_the_seed():
    labels = [i % 7 for i in range(200)]
    first = assign_shards(labels, 16, seed=3)
    assert first == assign_shards(list(labels), 16, seed=3)
    assert first != assign_shards(labels, 16, seed=4)
    assert sorted(Counter(first).values()) == [15] * 8 + [16] * 5   # 13 shards, balanced


def test_assignment_spreads_every_class_over_the_shards():
    labels = sorted(i % 5 for i in range(100))          # CSV sorted by class, as Kinetics is
    shards = assign_shards(labels, 10, seed=0)
    for shard in range(10):
        per_class = Counter(l for l, s in zip(labels, shards) if s == shard)
        assert sorted(per_class.values()) == [2] * 5


def test_assignment_rejects_a_bad_shard_size():
    with pytest.raises(ValueError, match="videos_per_shard must be >= 1, got 0"):
        assign_shards([0, 1], 0, seed=0)


@pytest.mark.parametrize("videos_per_shard", [1, 64, 5000])
def test_header_holds_a_page_per_video(videos_per_shard):
    header = header_size(DEFAULT_PAGE, videos_per_shard)
    assert header & (header - 1) == 0 and 1 << 14 <= header <= 1 << 27
    assert header >= min((videos_per_shard + 2) * 512, 1 << 27)


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


def test_shard_plan_of_tiny_records_is_reproducible(tiny_records):
    rows = read_rows(tiny_records.split("train"))
    names = schema.read_labels(tiny_records.labels)
    tasks, pre_failed = plan_shards(read_csv(tiny_records.train_csv), {n: i for i, n in enumerate(names)},
                                    tiny_records.source / "videos", "unused", tiny_records.settings)
    planned = {v.video_id: t.index for t in tasks for v in t.videos}
    assert pre_failed == [] and planned == {r.video_id: r.shard for r in rows}
    assert len(tasks) == 4 and all(len({v.label for v in t.videos}) >= 3 for t in tasks)
