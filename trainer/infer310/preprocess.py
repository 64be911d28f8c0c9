"""Write the evaluation clips as ``.bin`` files plus labels, for an offline runner.

    python -m trainer.infer310.preprocess --config configs/demo.yaml --out export/demo/310 [--float-input]

The clips come from the same pipeline as trainer.eval (``create_dataset(training=False)``: K
clips × C crops per video, padding masked out), so the 310 result can be checked against it. By
default they are the uint8 pixels (for a graph exported with ``--input uint8``, which normalizes
them itself): 4× fewer bytes to store, copy to the 310 host and feed than the normalized float32
clips ``--float-input`` writes (the model zoo's interface). Layout of ``--out``: see
``trainer.infer310``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from datatools.cli import run_cli, setup_logging
from datatools.progress import Progress
from datatools.schema import LABEL, LABELS_NAME, VIDEO_ID
from trainer import cloud
from trainer.config import Config, config_from_args, config_parser
from trainer.data import CLIP, MASK, PROBLEM, bad_samples, create_dataset, split_name, views_per_video
from trainer.infer310 import DATA_DIR, LABELS_FILE, META_NAME, NAMES_FILE, clip_name

__all__ = ["preprocess", "main"]

logger = logging.getLogger(__name__)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def preprocess(cfg: Config, out_dir: str | Path, split: str = "val", *,
               float_input: bool = False) -> dict:
    """Write every real video's K clips of ``split`` under ``out_dir``; returns the metadata.

    The metadata (also ``clips.json``) holds ``clip_shape`` (1, T, 3N, S, S), ``dtype`` (uint8,
    or float32 with ``float_input``), ``views_per_video`` (K clips × C crops), ``videos``, ``files`` (clip file
    names, video-major) and ``video_ids``. The records' labels.txt is copied beside them. A
    sample that is not what the converter wrote is a ValueError naming it, as in trainer.eval.
    """
    out_dir = Path(out_dir)
    names = Path(cfg.data.root) / LABELS_NAME
    if not names.is_file():
        raise FileNotFoundError(f"{names} not found: the class names travel with the clips")
    dtype = "float32" if float_input else "uint8"
    dataset = create_dataset(cfg, split, training=False, normalize=float_input)
    data_dir = _fresh_data_dir(out_dir)
    files: list[str] = []
    labels: list[int] = []
    video_ids: list[str] = []
    clip_shape: list[int] | None = None
    start = time.perf_counter()
    progress = Progress(dataset.get_dataset_size(), "batches", logger=logger, desc="preprocess")
    for batch in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
        progress.update()
        problems = bad_samples(batch[PROBLEM])
        if problems:   # else the 310 top-1 would count fewer videos than trainer.eval's
            raise ValueError(problems[0])
        clips, mask = batch[CLIP], batch[MASK].astype(bool)
        clip_shape = [1, *clips.shape[2:]]
        for row in np.flatnonzero(mask):
            video = len(labels)
            for k in range(clips.shape[1]):
                name = clip_name(video, k)
                np.ascontiguousarray(clips[row, k:k + 1], dtype=dtype).tofile(data_dir / name)
                files.append(name)
            labels.append(int(batch[LABEL][row]))
            video_ids.append(_text(batch[VIDEO_ID][row]))
    progress.close()
    if not labels:
        raise ValueError(f"split {split!r} of {cfg.data.root} has no videos to preprocess")
    np.save(out_dir / LABELS_FILE, np.asarray(labels, np.int32))
    shutil.copyfile(names, out_dir / NAMES_FILE)
    meta = {"split": split, "videos": len(labels), "views_per_video": views_per_video(cfg),
            "clip_shape": clip_shape, "dtype": dtype, "files": files, "video_ids": video_ids}
    (out_dir / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    logger.info("preprocess: wrote %d clips of %d videos (%s %s) to %s in %.1f s", len(files),
                len(labels), clip_shape, dtype, data_dir, time.perf_counter() - start)
    return meta


def _fresh_data_dir(out_dir: Path) -> Path:
    """``out_dir``/data, empty: an earlier preprocess's clips are removed (another split or
    protocol names other files, and the folder would hold two builds); a data folder that no
    preprocess wrote (no clips.json beside it) is refused, never emptied."""
    data_dir = out_dir / DATA_DIR
    if data_dir.exists():
        if not (out_dir / META_NAME).is_file():
            raise ValueError(f"{data_dir} exists and no trainer.infer310.preprocess wrote it (no "
                             f"{META_NAME} beside it): give another --out")
        (out_dir / META_NAME).unlink()
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    return data_dir


def main(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    # In cloud mode data.root becomes the pulled copy of labels.txt and this split.
    cfg = cloud.prepare(cfg, (split_name(cfg, args.split),))
    setup_logging()
    meta = preprocess(cfg, args.out, args.split, float_input=args.float_input)
    print(f"videos={meta['videos']} clips={len(meta['files'])} clip_shape={meta['clip_shape']} "
          f"dtype={meta['dtype']} out={args.out}", flush=True)
    return meta


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser("Write the eval clips of a split as .bin files (uint8 pixels, or "
                           "normalized float32) plus label_ids.npy for the 310 runner.")
    parser.add_argument("--out", required=True, help="work folder (data/, label_ids.npy, clips.json)")
    parser.add_argument("--split", default="val", help="train, val, or a folder under data.root")
    parser.add_argument("--float-input", action="store_true",
                        help="write normalized float32 clips (4x bigger; the model zoo's "
                        "interface) for a graph exported with --input float32")
    return parser


if __name__ == "__main__":
    raise SystemExit(run_cli(build_parser(), main))
