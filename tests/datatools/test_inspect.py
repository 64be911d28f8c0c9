"""datatools.inspect: verification passes on good records, catches manifest/shard mismatches."""
from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from datatools.cli import run_cli
from datatools.inspect import build_parser, contact_sheet, inspect_split, main
from datatools.manifest import MANIFEST_NAME, ShardFiles


def test_inspect_verifies_tiny_records_and_draws_a_sheet(tiny_records, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    assert run_cli(build_parser(), main, [str(tiny_records.split("train")), "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "videos: 16 ok, 0 failed, in 4 shards" in out
    assert "verified: every shard matches the manifest" in out
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 20_000
    assert contact_sheet(tiny_records.split("val"), tmp_path / "v.png", num_videos=2, num_frames=3).is_file()


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
    assert len(report.mismatches) == 2
    assert any(f"unexpected ['{first_row['video_id']}']" in m for m in report.mismatches)
    name = ShardFiles.of(split, last_shard).record.name
    assert any(m.startswith(f"{name}: missing") for m in report.mismatches)
    assert run_cli(build_parser(), main, [str(split)]) == 1
    assert "FAILED: 2 shard(s) differ from the manifest" in capsys.readouterr().out
