"""The Ascend 310 inference path: preprocess → runner → postprocess over files, as the model zoo.

A 310 host runs an exported graph, not the training code, so the steps meet on disk in one
work folder:

    <work>/clips.json          what preprocess wrote: clip shape, K, one file name per clip, video ids
    <work>/label_ids.npy       int32 label per video, in order
    <work>/data/<name>.bin     one float32 clip (1, T, 3N, S, S), ``stnet_v<video>_c<clip>.bin``
    <work>/result/<name>_0.bin float32 logits (1, num_classes) of that clip (output 0)

``preprocess`` needs the records and the trainer's data pipeline; ``runner`` needs only the
exported MINDIR and a MindSpore runtime; ``postprocess`` needs only numpy.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["META_NAME", "LABELS_FILE", "DATA_DIR", "RESULT_DIR", "clip_name", "result_name",
           "read_meta"]

META_NAME = "clips.json"
LABELS_FILE = "label_ids.npy"
DATA_DIR = "data"
RESULT_DIR = "result"


def clip_name(video: int, clip: int) -> str:
    return f"stnet_v{video:06d}_c{clip:02d}.bin"


def result_name(clip_file: str) -> str:
    """Result of output 0 for one clip file, named as the model zoo's 310 runner names it."""
    return f"{Path(clip_file).stem}_0.bin"


def read_meta(work_dir: str | Path) -> dict:
    path = Path(work_dir) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run trainer.infer310.preprocess --out "
                                f"{work_dir} first")
    return json.loads(path.read_text())
