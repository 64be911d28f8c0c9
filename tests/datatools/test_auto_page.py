"""``--page-mb auto``: the page chooser on sizes alone, then converts that choose, keep and read back
their page on real MindRecord files."""
from __future__ import annotations

import logging
import math
import statistics

import pytest

from datatools import plan, schema
from datatools.cli import run_cli
from datatools.convert import build_parser, convert, main
from datatools.manifest import (AUTO_PAGE, DEFAULT_PAGE, JPEG, MB, MIN_PAGE, STATUS_OK, Settings,
                                read_manifest, read_rows, read_settings)
from datatools.pages import AUTO_PAGES, PageRange, choose_page, layout_ratio, pack_pages, sample_bytes
from tests.datatools import bad_videos
from tests.datatools.test_convert import read_split

SYNTHETIC = 5_490_000       # bytes of a sample of benchmarks/shards.py's synthetic videos
FLOOR = AUTO_PAGES.floor


def test_uniform_videos_get_a_page_with_few_holes_where_the_floor_leaves_more():
    page, expected = choose_page([SYNTHETIC] * 4, 64)
    shard = [SYNTHETIC] * 64
    assert layout_ratio(shard, FLOOR) > 1.05 >= layout_ratio(shard, page)
    assert page % MB == 0 and FLOOR < page <= AUTO_PAGES.ceiling and expected <= 1.05


def test_a_page_the_probe_fills_to_the_byte_is_passed_over_for_one_with_room():
    """Eight probe videos fill 42 MiB exactly; a split's videos a little larger would take a ninth
    page a shard (1.13), so the chooser takes 43 MiB, which holds eight up to 2.4% larger."""
    assert choose_page([42 * MB // 8 - 1024] * 4, 64)[0] == 43 * MB


def test_small_videos_get_the_floor_and_never_less():
    """64 videos of 100 KB leave most of a 32 MiB page empty, 8 MiB would do better: the floor holds."""
    shard = [100_000] * 64
    assert choose_page([100_000] * 4, 64)[0] == FLOOR
    assert layout_ratio(shard, 8 * MB) < layout_ratio(shard, FLOOR)


def test_a_video_larger_than_the_floor_gets_a_page_that_holds_it():
    page, _ = choose_page([40 * MB, 5 * MB, 6 * MB, 5 * MB], 64)
    assert 40 * MB < page <= AUTO_PAGES.ceiling
    assert choose_page([200 * MB, 5 * MB], 64)[0] == AUTO_PAGES.ceiling


def test_a_small_split_of_very_different_videos_gets_a_true_ratio():
    """Two probe videos 200x apart: the spread passes 1 and a linear scale of 1 - spread made
    sizes negative, so the log line said "expected apparent/allocated -105.530"."""
    for sizes in ([1000, 200_000], [30_000, 800_000, 5000]):
        page, ratio = choose_page(sizes, len(sizes))
        # apparent bytes are at least the allocated ones, and no more than the shard's pages
        assert 1 <= ratio <= layout_ratio([min(sizes)] * len(sizes), page), (sizes, page, ratio)


def test_a_sample_that_fills_a_page_of_no_whole_packing_units_is_packed_alone():
    # 65,540 bytes: units of 8 bytes, 8,192 of them hold only 65,536
    assert pack_pages([100, 65_539, 200], 65_540) == [[1], [0, 2]]


def _split(tmp_path, count: int, make=bad_videos.good):
    """``count`` videos of one class (24 frames at 96x72: ~57 KB stored) with its CSV and labels."""
    lines = ["label,youtube_id,time_start,time_end,split"]
    for i in range(count):
        make(tmp_path / "videos" / "walk" / f"v{i}_000000_000010.mp4", num_frames=24, width=96, height=72,
             seed=i)
        lines.append(f"walk,v{i},0,10,train")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "labels.txt").write_text("walk 0\n")
    return tmp_path / "train.csv", tmp_path / "videos", tmp_path / "labels.txt"


SMALL_PAGES = PageRange(MIN_PAGE, MB, 4096)       # so that videos of tens of KB have a choice
AUTO_SETTINGS = Settings(codec=JPEG, short_side=0, quality=90, max_fps=None, videos_per_shard=4, seed=0,
                         page_size=AUTO_PAGE)


def _one_page_for_the_shard(sizes: list[int], pages: PageRange) -> int:
    """The page ``choose_page`` must pick for a shard of exactly the probe videos of ``sizes``,
    worked out from its documented rule rather than by calling it: the least page of ``pages``
    that holds the whole shard with the margin for a shard's sizes (twice the standard error of
    the probe's mean and of the shard's, at least 2%). A smaller page takes a second page for
    the shard (apparent/allocated near 2), a page per video leaves a tail per video, and a larger
    page only adds to the one tail."""
    cv = statistics.stdev(sizes) / statistics.fmean(sizes)
    spread = max(0.02, 2 * cv * math.sqrt(2 / len(sizes)))
    need = sum(sizes) * (1 + spread)
    return pages.floor + math.ceil((need - pages.floor) / pages.step) * pages.step


def test_auto_stores_the_chosen_page_and_a_rerun_keeps_it_without_probing(tmp_path, monkeypatch, caplog):
    split = _split(tmp_path, 4)
    with caplog.at_level(logging.INFO, logger="datatools.plan"):
        result = convert(*split, tmp_path / "out", AUTO_SETTINGS, auto_pages=SMALL_PAGES)
    rows = read_rows(tmp_path / "out")
    assert [r.status for r in rows] == [STATUS_OK] * 4
    page = _one_page_for_the_shard([sample_bytes(r.num_frames, r.bytes) for r in rows], SMALL_PAGES)
    assert page != SMALL_PAGES.floor           # the videos are larger: a choice was made
    assert read_settings(read_manifest(tmp_path / "out")).page_size == page
    assert f"page {page / MB:g} MiB (auto): expected apparent/allocated" in caplog.text
    assert len(read_split(tmp_path / "out")) == 4 and result.shards_done == 1

    def no_probe(*args, **kwargs):
        raise AssertionError("a resume must not probe")

    monkeypatch.setattr(plan, "encode_or_reason", no_probe)
    again = convert(*split, tmp_path / "out", AUTO_SETTINGS, auto_pages=PageRange(MB, 2 * MB, MB))
    assert (again.shards_kept, again.shards_done) == (1, 0)
    assert read_settings(read_manifest(tmp_path / "out")).page_size == page


def test_auto_falls_back_to_the_floor_when_no_probe_video_encodes(tmp_path, caplog):
    split = _split(tmp_path, 2, make=lambda path, **kwargs: bad_videos.random_bytes(path))
    with caplog.at_level(logging.INFO, logger="datatools.plan"):
        result = convert(*split, tmp_path / "out", AUTO_SETTINGS)
    assert not any(r.ok for r in result.rows)
    assert read_settings(read_manifest(tmp_path / "out")).page_size == DEFAULT_PAGE == FLOOR
    assert "page 32 MiB (auto, the least it chooses): no probe video encoded (2 tried)" in caplog.text


def test_a_page_that_is_no_power_of_two_converts_and_reads_back(tmp_path):
    """``--page-mb 0.15`` is 157,286.4 bytes, stored as 157,288 (the nearest multiple of 4): two
    videos a page, two pages a shard of three, every video read back by MindDataset."""
    csv_path, videos, labels = _split(tmp_path, 6)
    argv = ["--csv", csv_path, "--videos", videos, "--labels", labels, "--out", tmp_path / "out",
            "--short-side", "0", "--videos-per-shard", "3", "--page-mb", "0.15"]
    assert run_cli(build_parser(), main, list(map(str, argv))) == 0
    assert read_settings(read_manifest(tmp_path / "out")).page_size == 157_288
    rows = read_rows(tmp_path / "out")
    assert [r.status for r in rows] == [STATUS_OK] * 6 and {r.shard for r in rows} == {0, 1}
    assert sorted(str(s[schema.VIDEO_ID]) for s in read_split(tmp_path / "out")) == \
        sorted(r.video_id for r in rows)


@pytest.mark.parametrize("value, error", [
    *[(v, f"auto or a number of MiB, got '{v}'") for v in ("abc", "nan", "inf")],
    ("0", "auto or from 0.03125 to 256 in multiples of 4 bytes, got 0")])      # not auto
def test_a_bad_page_is_one_error_line(tmp_path, capsys, value, error):
    argv = ["--csv", tmp_path / "none.csv", "--videos", tmp_path, "--labels", tmp_path / "labels.txt",
            "--out", tmp_path / "out", "--page-mb", value]
    assert run_cli(build_parser(), main, list(map(str, argv))) == 2
    assert capsys.readouterr().err == f"error: --page-mb must be {error}\n"
