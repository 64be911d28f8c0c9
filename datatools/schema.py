"""The sample format shared by the converter (writer) and the trainer (reader), and the label file.

One MindRecord sample holds one video. MindRecord stores numeric arrays but no list of bytes, so
the encoded frames of a video (JPEGs, or the packets of one h264 stream: the split's
``Settings.codec``) are concatenated into one blob and located by ``num_frames + 1`` byte
offsets: ``offsets[i]:offsets[i+1]`` is frame i. Every sample field is named here and both sides import it, so they change together;
the manifest, the settings and the shard files are ``datatools.manifest``'s. Bump
``SCHEMA_VERSION`` on any incompatible change of either (docs/design.md §2).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "SCHEMA_VERSION", "READABLE_VERSIONS", "VIDEO_ID", "LABEL", "NUM_FRAMES", "HEIGHT", "WIDTH", "FRAMES", "OFFSETS",
    "CHECKSUM", "RECORD_SCHEMA", "RECORD_COLUMNS", "LABELS_NAME", "SchemaVersionError",
    "pack_frames", "sample_checksum", "frame_bytes", "read_labels",
]

SCHEMA_VERSION = 3      # 2: a checksum per sample; 3: the codec in the settings, h264 samples
# Versions this code reads: a v2 split is JPEG, stored exactly as a v3 JPEG split.
READABLE_VERSIONS = (2, 3)

# MindRecord fields of one sample (one video).
VIDEO_ID = "video_id"
LABEL = "label"
NUM_FRAMES = "num_frames"
HEIGHT = "height"
WIDTH = "width"
FRAMES = "frames"
OFFSETS = "offsets"
CHECKSUM = "checksum"

RECORD_SCHEMA: dict[str, dict] = {
    VIDEO_ID: {"type": "string"},
    LABEL: {"type": "int32"},
    NUM_FRAMES: {"type": "int32"},
    HEIGHT: {"type": "int32"},
    WIDTH: {"type": "int32"},
    FRAMES: {"type": "bytes"},
    OFFSETS: {"type": "int64", "shape": [-1]},
    CHECKSUM: {"type": "int64"},
}
RECORD_COLUMNS: list[str] = list(RECORD_SCHEMA)

LABELS_NAME = "labels.txt"     # records/<name>/labels.txt, shared by the splits


class SchemaVersionError(ValueError):
    """Records written by an incompatible version of this schema."""


def pack_frames(frames: Sequence[bytes]) -> tuple[bytes, np.ndarray]:
    """Concatenate encoded frames; offsets[i]:offsets[i+1] is frame i."""
    offsets = np.zeros(len(frames) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in frames], out=offsets[1:])
    return b"".join(frames), offsets


def sample_checksum(video_id: str, label: int, offsets: np.ndarray, blob: bytes | memoryview) -> int:
    """CRC-32 of everything a sample says about its video: id, label, offsets and frame bytes.

    Written with the sample and checked when it is read (inspect, the loader), so a flipped byte
    anywhere in a stored video is found instead of training or scoring on it.
    """
    crc = zlib.crc32(video_id.encode())
    crc = zlib.crc32(np.int64(label).tobytes(), crc)
    crc = zlib.crc32(np.ascontiguousarray(offsets, np.int64).tobytes(), crc)
    return zlib.crc32(blob, crc)


def frame_bytes(blob: bytes | memoryview, offsets: np.ndarray, index: int) -> memoryview:
    """Encoded bytes of frame ``index`` without copying the blob."""
    return memoryview(blob)[int(offsets[index]):int(offsets[index + 1])]


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
