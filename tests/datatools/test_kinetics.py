"""The Kinetics CSV: a bad time is one line naming the file, line and value; a label or
youtube_id that would lead outside --videos is a failed row, never read."""
from __future__ import annotations

import pytest

from datatools.kinetics import read_csv
from datatools.manifest import NO_SHARD
from datatools.plan import plan_shards
from tests.datatools import bad_videos
from tests.datatools.test_convert import SETTINGS

HEADER = "label,youtube_id,time_start,time_end,split\n"


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e400"])
def test_a_time_that_is_no_finite_number_is_one_line_naming_file_line_and_value(tmp_path, value):
    csv = tmp_path / "train.csv"
    csv.write_text(f"{HEADER}walk,a,0,10,train\nwalk,b,{value},10,train\n")
    with pytest.raises(ValueError) as caught:
        read_csv(csv)
    assert str(caught.value) == (f"{csv}:3: time must be a whole number of seconds >= 0, "
                                 f"got {value!r}")


@pytest.mark.parametrize("label, youtube_id", [("/abs", "x"), ("walk", "../../x"), ("..", "x"),
                                               ("walk", "/x")])
def test_a_row_leading_outside_the_videos_is_a_failed_row_and_never_read(tmp_path, label, youtube_id):
    videos = tmp_path / "data" / "videos"
    # The file the row would reach, were it joined into a path.
    for target in (videos / label / f"{youtube_id}_000000_000010.mp4",
                   videos / f"{youtube_id}_000000_000010.mp4"):
        if not target.resolve().is_relative_to(videos):
            bad_videos.good(target.resolve(), num_frames=2)
    (tmp_path / "train.csv").write_text(f"{HEADER}{label},{youtube_id},0,10,train\n")
    entries = read_csv(tmp_path / "train.csv")
    tasks, pre_failed = plan_shards(entries, {label: 0}, videos, tmp_path / "out", SETTINGS, "")
    assert [v for t in tasks for v in t.videos] == []
    ((_, row),) = pre_failed
    assert row.shard == NO_SHARD and row.source == ""
    assert row.reason == (f"outside --videos: '{label}/{youtube_id}_000000_000010' at CSV line 2")
