"""Top-1 from the runner's result files, printed as the model zoo's postprocess prints it.

    python -m trainer.infer310.postprocess --work export/demo/310
    top1_correct=123, tot=200, acc=0.615

A video's K clip × C crop results are scored by ``trainer.scoring.video_scores``, the rule trainer.eval
uses, so both report the same top-1 for the same checkpoint. Needs only numpy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datatools.cli import run_cli
from trainer.infer310 import LABELS_FILE, RESULT_DIR, read_meta, result_name
from trainer.scoring import video_scores

__all__ = ["top1", "summary_line", "main"]


def _read_results(work_dir: Path, files: list[str]) -> np.ndarray:
    missing = [name for name in files if not (work_dir / RESULT_DIR / result_name(name)).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} results missing in "
                                f"{work_dir / RESULT_DIR}, e.g. {result_name(missing[0])}: run "
                                f"trainer.infer310.runner first")
    results = [np.fromfile(work_dir / RESULT_DIR / result_name(name), np.float32) for name in files]
    sizes = {r.size for r in results}
    if len(sizes) != 1:
        raise ValueError(f"result files in {work_dir / RESULT_DIR} differ in size: {sorted(sizes)}")
    return np.stack(results)


def top1(work_dir: str | Path) -> dict:
    """``top1_correct``, ``tot`` (videos) and ``acc`` over the preprocessed split."""
    work_dir = Path(work_dir)
    meta = read_meta(work_dir)
    labels = np.load(work_dir / LABELS_FILE).astype(np.int64)
    views = meta["views_per_video"]
    if len(meta["files"]) != views * len(labels):
        raise ValueError(f"{work_dir}: {len(meta['files'])} clips for {len(labels)} videos, "
                         f"expected {views} per video")
    logits = _read_results(work_dir, meta["files"]).reshape(len(labels), views, -1)
    correct = int((video_scores(logits).argmax(axis=1) == labels).sum())
    return {"top1_correct": correct, "tot": len(labels), "acc": correct / len(labels)}


def summary_line(result: dict) -> str:
    return f"top1_correct={result['top1_correct']}, tot={result['tot']}, acc={result['acc']:.4f}"


def main(args: argparse.Namespace) -> dict:
    result = top1(args.work)
    print(summary_line(result), flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Top-1 of the 310 runner's results against the "
                                     "preprocessed labels (mean softmax over a video's clips).")
    parser.add_argument("--work", required=True, help="the preprocess/runner work folder")
    return parser


if __name__ == "__main__":
    raise SystemExit(run_cli(build_parser(), main))
