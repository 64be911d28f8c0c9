"""What an export looks like on disk, importable without MindSpore (a 310 host may only have
MindSpore Lite): file names per format and batch, and the JSON written beside each file."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["FORMATS", "DYNAMIC", "export_path", "metadata_path", "read_metadata", "sha256_file"]

FORMATS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}  # format -> suffix ms.export adds
DYNAMIC = "dynamic"
FILE_STEM = "stnet"


def export_path(out_dir: str | Path, fmt: str, batch: int | None) -> Path:
    """``<out_dir>/stnet_b1.mindir``, ``stnet_dynamic.mindir``, ``stnet_b1.onnx`` ..."""
    tag = DYNAMIC if batch is None else f"b{batch}"
    return Path(out_dir) / f"{FILE_STEM}_{tag}{FORMATS[fmt]}"


def metadata_path(exported: str | Path) -> Path:
    """``stnet_b1.mindir`` -> ``stnet_b1.mindir.json`` (one JSON per exported file)."""
    exported = Path(exported)
    return exported.with_name(exported.name + ".json")


def read_metadata(exported: str | Path) -> dict | None:
    """The JSON beside ``exported``, or None if there is none."""
    path = metadata_path(exported)
    return json.loads(path.read_text()) if path.is_file() else None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
