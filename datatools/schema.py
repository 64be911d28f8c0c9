"""The sample format shared by the converter (writer) and the trainer (reader), and the label file.

One MindRecord sample holds one video. MindRecord stores numeric arrays but no list of bytes, so
the encoded frames of a video (JPEGs, or the packets of one h264 stream: the split's
``Settings.codec``) are concatenated into one blob and located by ``num_frames + 1`` byte
offsets: ``offsets[i]:offsets[i+1]`` is frame i. Every sample field is named here and both sides import it, so they change together;
the manifest, the settings and the shard files are ``datatools.manifest``'s. Bump
``SCHEMA_VERSION`` on any incompatible change of either (docs/design.md §2).
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "SCHEMA_VERSION", "READABLE_VERSIONS", "VIDEO_ID", "LABEL", "NUM_FRAMES", "HEIGHT", "WIDTH", "FRAMES", "OFFSETS",
    "CHECKSUM", "RECORD_SCHEMA", "RECORD_COLUMNS", "LABELS_NAME", "SchemaVersionError",
    "pack_frames", "sample_checksum", "frame_bytes", "read_labels", "labels_sha256",
    "split_labels_problem",
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
    """Class names by index from a label file of ``<class name> <idx>`` lines.

    Each index 0..N-1 must name one class and each class one index: a repeated index would
    silently drop a class, a repeated name give two indices one meaning, a gap a class without
    a name. A refusal names the file and the lines."""
    lines: dict[int, tuple[int, str]] = {}      # index -> (line number, name)
    seen: dict[str, int] = {}                   # name -> its line number
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, _, idx = line.rstrip().rpartition(" ")
        if not name or not idx.isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<class name> <idx>', got {line!r}")
        if int(idx) in lines:
            first, other = lines[int(idx)]
            raise ValueError(f"{path}:{first},{lineno}: class index {idx} is given to both {other!r} "
                             f"and {name!r}: each index must name one class")
        if name in seen:
            raise ValueError(f"{path}:{seen[name]},{lineno}: class {name!r} is listed twice: each "
                             f"class must have one index")
        lines[int(idx)], seen[name] = (lineno, name), lineno
    missing = sorted(set(range(len(lines))) - set(lines))
    if missing:
        last = max(lines)
        raise ValueError(f"{path}:{lines[last][0]}: class indices must be 0..{len(lines) - 1} without "
                         f"gaps, but index {missing[0]} is missing ({len(missing)} missing; the "
                         f"highest is {last}, at this line)")
    return [lines[i][1] for i in range(len(lines))]


def labels_sha256(path: str | Path) -> str:
    """The sha256 of a label file's bytes: the converter stores it in each split's manifest."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_labels_problem(split_dir: str | Path, labels_path: str | Path) -> str | None:
    """Why the labels stored in ``split_dir`` do not mean the classes of ``labels_path`` (None
    when they do): the split must have been converted with that very label file.

    A split converted with another label file holds other indices for the same names, and would
    be trained or scored on shifted labels without any error. One line naming the split and the
    file (for the trainer to raise and ``datatools.inspect`` to report)."""
    from datatools.manifest import META_SETTINGS, read_manifest   # manifest imports this module
    table = read_manifest(split_dir, [])     # the metadata alone
    stored = json.loads((table.schema.metadata or {}).get(META_SETTINGS, b"{}")).get("labels_sha256")
    actual = labels_sha256(labels_path)
    if stored == actual:
        return None
    if stored is None:
        return (f"{split_dir}: its manifest does not say which label file it was converted with, so "
                f"its labels cannot be checked against {labels_path}: reconvert the split with "
                f"--labels {labels_path}")
    return (f"{split_dir} was converted with another label file than {labels_path} (sha256 "
            f"{stored[:12]}… vs {actual[:12]}…): its labels would mean other classes; reconvert "
            f"it with --labels {labels_path}, or use the label file it was converted with")
