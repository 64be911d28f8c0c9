"""The on-disk contract shared by the converter (writer) and the trainer (reader).

One MindRecord sample holds one video. MindRecord stores numeric arrays but no list of bytes, so
the JPEG frames of a video are concatenated into one blob and located by ``num_frames + 1`` byte
offsets. Everything that names a field, a file or a manifest column lives here, and both sides
import it, so they change together. Bump ``SCHEMA_VERSION`` on any incompatible change.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "SCHEMA_VERSION", "VIDEO_ID", "LABEL", "NUM_FRAMES", "HEIGHT", "WIDTH", "FRAMES", "OFFSETS",
    "RECORD_SCHEMA", "RECORD_COLUMNS", "MANIFEST_NAME", "LABELS_NAME", "STATUS_OK", "STATUS_FAILED",
    "MANIFEST_SCHEMA", "META_SCHEMA_VERSION", "META_SETTINGS", "SchemaVersionError",
    "shard_name", "pack_frames", "frame_bytes", "read_manifest", "manifest_settings", "source_sizes",
    "ok_shard_paths", "read_labels",
]

SCHEMA_VERSION = 1

# MindRecord fields of one sample (one video).
VIDEO_ID = "video_id"
LABEL = "label"
NUM_FRAMES = "num_frames"
HEIGHT = "height"
WIDTH = "width"
FRAMES = "frames"
OFFSETS = "offsets"

RECORD_SCHEMA: dict[str, dict] = {
    VIDEO_ID: {"type": "string"},
    LABEL: {"type": "int32"},
    NUM_FRAMES: {"type": "int32"},
    HEIGHT: {"type": "int32"},
    WIDTH: {"type": "int32"},
    FRAMES: {"type": "bytes"},
    OFFSETS: {"type": "int64", "shape": [-1]},
}
RECORD_COLUMNS: list[str] = list(RECORD_SCHEMA)

# Files of one converted split: records/<split>/shard-NNNNN.mindrecord (+ .db) and the manifest;
# the label file sits one level up (records/<name>/labels.txt), shared by the splits.
MANIFEST_NAME = "manifest.parquet"
LABELS_NAME = "labels.txt"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

# One manifest row per CSV entry, converted or not.
MANIFEST_SCHEMA = pa.schema([
    pa.field("video_id", pa.string()),       # <ytid>_<start:06d>_<end:06d>, unique in a split
    pa.field("label", pa.int32()),           # index into labels.txt, -1 if the CSV label is unknown
    pa.field("label_name", pa.string()),
    pa.field("source", pa.string()),         # path of the source video ("" if not found)
    pa.field("shard", pa.int32()),           # shard index the video is assigned to
    pa.field("status", pa.string()),         # STATUS_OK or STATUS_FAILED
    pa.field("reason", pa.string()),         # one line, "" when ok
    pa.field("num_frames", pa.int32()),      # frames stored
    pa.field("fps", pa.float32()),           # source frame rate
    pa.field("src_width", pa.int32()),
    pa.field("src_height", pa.int32()),
    pa.field("width", pa.int32()),           # stored frame size
    pa.field("height", pa.int32()),
    pa.field("bytes", pa.int64()),           # JPEG bytes stored for the video
])
META_SCHEMA_VERSION = b"stnet_records.schema_version"
META_SETTINGS = b"stnet_records.settings"      # JSON of the conversion settings


class SchemaVersionError(ValueError):
    """Records written by an incompatible version of this schema."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.mindrecord"


def pack_frames(jpegs: Sequence[bytes]) -> tuple[bytes, np.ndarray]:
    """Concatenate encoded frames; offsets[i]:offsets[i+1] is frame i."""
    offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
    np.cumsum([len(j) for j in jpegs], out=offsets[1:])
    return b"".join(jpegs), offsets


def frame_bytes(blob: bytes | memoryview, offsets: np.ndarray, index: int) -> memoryview:
    """Encoded bytes of frame ``index`` without copying the blob."""
    return memoryview(blob)[int(offsets[index]):int(offsets[index + 1])]


def read_manifest(split_dir: str | Path) -> pa.Table:
    """The split's manifest, refusing files written under another schema version."""
    path = Path(split_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}: convert the split first (datatools.convert)")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    found = meta.get(META_SCHEMA_VERSION, b"<none>").decode()
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"{path}: records schema v{found}, this code reads v{SCHEMA_VERSION}; reconvert the split")
    return table


def manifest_settings(table: pa.Table) -> dict:
    """Conversion settings stored in the manifest metadata."""
    return json.loads((table.schema.metadata or {}).get(META_SETTINGS, b"{}"))


def source_sizes(table: pa.Table) -> dict[str, tuple[int, int]]:
    """(height, width) of each converted video's source, by video_id (stored frames may be smaller)."""
    rows = zip(table.column("video_id").to_pylist(), table.column("status").to_pylist(),
               table.column("src_height").to_pylist(), table.column("src_width").to_pylist())
    return {vid: (height, width) for vid, status, height, width in rows if status == STATUS_OK}


def ok_shard_paths(split_dir: str | Path) -> list[str]:
    """Shard files that hold at least one converted video, in shard order."""
    table = read_manifest(split_dir)
    shards = sorted({s for s, st in zip(table.column("shard").to_pylist(),
                                         table.column("status").to_pylist()) if st == STATUS_OK})
    paths = [str(Path(split_dir) / shard_name(s)) for s in shards]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"manifest lists shards that are not on disk: {missing[:3]}")
    return paths


def read_labels(path: str | Path) -> list[str]:
    """Class names by index from a label file of ``<class name> <idx>`` lines."""
    names: dict[int, str] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, _, idx = line.rstrip().rpartition(" ")
        if not name or not idx.isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<class name> <idx>', got {line!r}")
        names[int(idx)] = name
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: class indices must be 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))]
