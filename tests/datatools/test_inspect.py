"""datatools.inspect: verification passes on good records, finds every damaged video and shard."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from mindspore.mindrecord import FileReader

from datatools import schema
from datatools.cli import run_cli
from datatools.inspect import build_parser, contact_sheet, inspect_split, main, pick_videos, row_label
from datatools.manifest import MANIFEST_NAME, ManifestRow, ShardFiles, read_rows


def test_inspect_verifies_tiny_records_and_draws_a_sheet(tiny_records, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    assert run_cli(build_parser(), main, [str(tiny_records.split("train")), "--decode",
                                          "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "videos: 16 ok, 0 failed, in 4 shards" in out
    stats = [p.stat() for p in tiny_records.split("train").glob("shard-*.mindrecord*")]   # records and .db
    apparent, allocated = sum(st.st_size for st in stats), sum(st.st_blocks * 512 for st in stats)
    payload = sum(row.bytes for row in read_rows(tiny_records.split("train")))
    assert len(stats) == 8 and payload < allocated < apparent        # 32 MiB pages, a few videos each
    assert f"shard files: {apparent / 1e6:.2f} MB apparent, {allocated / 1e6:.2f} MB allocated " \
           f"(apparent/allocated {apparent / allocated:.3f}), {payload / 1e6:.2f} MB payload" in out
    assert "verified: every shard matches the manifest (ids, labels, checksums, digests, " \
           "every JPEG decodes, label file)" in out
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 20_000
    assert contact_sheet(tiny_records.split("val"), tmp_path / "v.png", num_videos=2, num_frames=3).is_file()


def test_sheet_videos_go_round_robin_over_classes(tiny_records):
    rows = sorted(read_rows(tiny_records.split("train")), key=lambda r: r.label)   # one class first
    picked = pick_videos(rows, 4)
    assert sorted(r.label for r in picked) == [0, 1, 2, 3]
    assert [r.label for r in pick_videos(rows[:7] + rows[-2:], 6)] == [0, 1, 3, 0, 1, 3]
    # 160x120 sources stored at short side 64
    assert row_label(picked[0], {0: "walk"}) == f"walk\n{picked[0].video_id}\n85x64"


def test_inspect_reports_missing_and_unlisted_videos(tiny_records, tmp_path, capsys):
    split = tmp_path / "train"
    shutil.copytree(tiny_records.split("train"), split)
    table = pq.read_table(split / MANIFEST_NAME)
    dropped = table.slice(1)                          # first video no longer listed
    pq.write_table(dropped.replace_schema_metadata(table.schema.metadata), split / MANIFEST_NAME)
    first_row = table.slice(0, 1).to_pylist()[0]
    last_shard = max(table.column("shard").to_pylist())
    ShardFiles.of(split, last_shard).record.unlink()
    report = inspect_split(split)
    assert len(report.problems) == 2
    assert any(f"unexpected ['{first_row['video_id']}']" in m for m in report.problems)
    name = ShardFiles.of(split, last_shard).record.name
    assert any(m.startswith(f"{name}: missing") for m in report.problems)
    assert run_cli(build_parser(), main, [str(split)]) == 1
    assert "FAILED: 2 problem(s)" in capsys.readouterr().out


@pytest.fixture
def split(tiny_records, tmp_path):
    """A private copy of tiny_records' train split to damage (sparse, as the records are)."""
    subprocess.run(["cp", "-r", "--sparse=always", str(tiny_records.split("train")), str(tmp_path)],
                   check=True)
    return tmp_path / "train"


def _frames(row: ManifestRow, split) -> tuple[bytes, np.ndarray]:
    """The stored blob and offsets of one video, read before any damage."""
    reader = FileReader(str(ShardFiles.of(split, row.shard).record), num_consumer=1)
    try:
        item = next(i for i in reader.get_next() if str(i[schema.VIDEO_ID]) == row.video_id)
    finally:
        reader.close()
    return bytes(item[schema.FRAMES]), item[schema.OFFSETS]


def _flip(path, offset: int, mask: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def _inspect(split, capsys, *flags: str) -> tuple[int, list[str]]:
    code = run_cli(build_parser(), main, [str(split), *flags])
    return code, capsys.readouterr().out.splitlines()


def test_a_flipped_label_is_reported_by_video_id(split, capsys):
    row = read_rows(split)[5]
    record = ShardFiles.of(split, row.shard).record
    data = record.read_bytes()
    at = data.rindex(b"\xa5label", 0, data.index(row.video_id.encode())) + len(b"\xa5label")
    assert data[at] == row.label          # a msgpack positive fixint: the value itself
    _flip(record, at, 0x02)
    code, lines = _inspect(split, capsys)
    assert code == 1
    assert f"BAD {record.name}: {row.video_id}: label {row.label ^ 2} in the shard, {row.label} in " \
           f"the manifest; checksum mismatch" in lines
    assert f"BAD {record.name}: sha256 differs from the manifest's" in lines
    assert lines[-1] == "FAILED: 2 problem(s) in 1 shard(s)"


def test_a_flipped_byte_in_a_jpeg_payload_is_a_checksum_mismatch(split, capsys):
    row = read_rows(split)[2]
    blob, offsets = _frames(row, split)
    record = ShardFiles.of(split, row.shard).record
    start = record.read_bytes().index(blob)
    _flip(record, start + int(offsets[3] + offsets[4]) // 2, 0x10)     # inside frame 3's scan data
    code, lines = _inspect(split, capsys)
    assert code == 1 and f"BAD {record.name}: {row.video_id}: checksum mismatch" in lines


def test_a_flipped_byte_in_a_jpeg_header_is_found_by_decoding(split, capsys):
    row = read_rows(split)[9]
    blob, offsets = _frames(row, split)
    record = ShardFiles.of(split, row.shard).record
    start = record.read_bytes().index(blob)
    _flip(record, start + int(offsets[7]) + 1, 0x01)                   # SOI ff d8 -> ff d9
    code, lines = _inspect(split, capsys, "--decode")
    assert code == 1
    assert f"BAD {record.name}: {row.video_id}: checksum mismatch; JPEG frame 7 does not decode" in lines


def test_a_flipped_byte_in_a_shard_header_is_one_line_and_the_other_shards_are_checked(split, capsys):
    record = ShardFiles.of(split, 1).record
    _flip(record, record.read_bytes().index(b'"row_group_ids"') + 5, 0x01)   # a key MindRecord asserts on
    code, lines = _inspect(split, capsys)
    assert code == 1
    bad = [line for line in lines if line.startswith("BAD ")]
    assert bad == [f"BAD {record.name}: unreadable (the MindRecord reader aborted: SIGABRT)"]
    assert "videos: 16 ok, 0 failed, in 4 shards" in lines
