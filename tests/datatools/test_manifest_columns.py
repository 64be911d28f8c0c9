"""The manifest readers the trainer calls on every dataset it builds read only the columns they
need and filter in Arrow (a Kinetics-700 manifest is ~650k rows, benchmarks/README.md, scale),
with the results the row-by-row readers gave."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from datatools.manifest import (JPEG, MANIFEST_NAME, STATUS_OK, ManifestRow, Settings, ShardFiles,
                                ok_shard_paths, read_input, read_manifest, read_settings, source_sizes,
                                write_manifest)
from datatools.schema import SchemaVersionError, labels_sha256, split_labels_problem

SETTINGS = Settings(64, 90, None, 4, 0, codec=JPEG)


def _rows() -> list[ManifestRow]:
    """Ok and failed rows over shards 0..4 out of order; shard 3 has only failures, shard 4 one ok."""
    rows = []
    for i in range(40):
        shard = [2, 0, 3, 1, 4][i % 5]
        ok = shard != 3 and (shard != 4 or i == 4)
        rows.append(ManifestRow(f"v{i:03d}", i % 3, f"c{i % 3}", f"/src/v{i}.mp4", shard,
                                status=STATUS_OK if ok else "failed", reason="" if ok else "missing file",
                                src_height=240 + i, src_width=320 + 2 * i))
    rows.append(ManifestRow("pre", -1, "x", "", -1, reason="unknown label"))
    return rows


@pytest.fixture
def split(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("c0 0\nc1 1\nc2 2\n")
    rows = _rows()
    write_manifest(rows, tmp_path, SETTINGS, {}, csv="k.csv", labels=str(labels),
                   labels_sha256=labels_sha256(labels), input_sha256="ab" * 32)
    for shard in {r.shard for r in rows if r.ok}:
        ShardFiles.of(tmp_path, shard).record.write_bytes(b"")
    return tmp_path, rows, labels


def test_ok_shard_paths_and_source_sizes_are_what_the_rows_say(split):
    folder, rows, _ = split
    assert ok_shard_paths(folder) == [str(ShardFiles.of(folder, s).record) for s in (0, 1, 2, 4)]
    expected = {r.video_id: (r.src_height, r.src_width) for r in rows if r.ok}
    sizes = source_sizes(read_manifest(folder))
    assert sizes == expected and list(sizes) == list(expected)
    assert source_sizes(read_manifest(folder, ["video_id", "status", "src_height", "src_width"])) == expected


def test_the_metadata_alone_is_read_and_still_checked(split, tmp_path):
    folder, rows, labels = split
    table = read_manifest(folder, [])
    assert table.num_columns == 0 and table.num_rows == len(rows)
    assert read_settings(table) == SETTINGS
    assert read_input(folder).sha256 == "ab" * 32
    assert split_labels_problem(folder, labels) is None
    other = tmp_path / "other.txt"
    other.write_text("c0 0\n")
    assert "another label file" in split_labels_problem(folder, other)
    path = folder / MANIFEST_NAME
    old = pq.read_table(path)
    meta = {**old.schema.metadata, b"stnet_records.schema_version": b"1"}
    pq.write_table(old.replace_schema_metadata(meta), path)
    with pytest.raises(SchemaVersionError):
        read_manifest(folder, [])
    assert json.loads(meta[b"stnet_records.settings"])["csv"] == "k.csv"
