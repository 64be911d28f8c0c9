"""The Ascend 310 inference path: preprocess → runner → postprocess over files, as the model zoo.

A 310 host runs an exported graph, not the training code, so the steps meet on disk in one
work folder:

    <work>/clips.json          what preprocess wrote: clip shape and dtype, views per video
                               (K clips × C crops), one file name per view, video ids
    <work>/label_ids.npy       int32 label per video, in order
    <work>/labels.txt          the class names (the records' labels.txt)
    <work>/data/<name>.bin     one view (1, T, 3N, S, S), ``stnet_v<video>_c<view>.bin``: uint8
                               pixels (default) or normalized float32 (preprocess --float-input)
    <work>/result/<name>_0.bin float32 logits (1, num_classes) of that clip (output 0)

``preprocess`` needs the records and the trainer's data pipeline (host 1); ``package`` gathers
the export, a work folder and the runner and postprocess code into one folder with a ``run.sh``
that a 310 host (host 2) runs without this checkout: ``runner`` needs only the exported MINDIR
and MindSpore Lite (or MindSpore on CPU), ``postprocess`` only numpy.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["META_NAME", "LABELS_FILE", "NAMES_FILE", "DATA_DIR", "RESULT_DIR", "CLIP_DTYPES",
           "clip_name", "result_name", "read_meta"]

META_NAME = "clips.json"
LABELS_FILE = "label_ids.npy"
NAMES_FILE = "labels.txt"
DATA_DIR = "data"
RESULT_DIR = "result"
CLIP_DTYPES = ("uint8", "float32")  # raw pixels (graph normalizes) | normalized (model zoo)


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
    meta = json.loads(path.read_text())
    if meta.get("dtype") not in CLIP_DTYPES:
        raise ValueError(f"{path}: dtype must be one of {CLIP_DTYPES}, got {meta.get('dtype')!r}")
    return meta
