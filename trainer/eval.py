"""Exact-once evaluation: top-1/top-5 over every validation video, alone or under msrun.

Each rank runs its shard of the padded validation set (``create_dataset(training=False)``);
padded rows are masked out, so the counts of all ranks add up to exactly the split's videos.
A video's V views (``test.clips`` temporal clips × ``test.crops`` spatial crops) are scored by the
mean of their softmax (``trainer.scoring``). Counts are summed over ranks
with AllReduce (SUM is the only CPU reduction), so rank 0 reports the whole split. A video that
is not what the converter wrote (checksum mismatch, a frame that does not decode) or whose logits
are not finite is an error naming it: no metric is computed on altered data or scores.

    python -m trainer.eval --config configs/demo.yaml --ckpt runs/demo/best.ckpt --out result.json
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from datatools.cli import run_cli, setup_logging
from datatools.progress import Progress
from datatools.schema import LABEL, VIDEO_ID
from trainer import cloud
from trainer.checkpoint import checkpoint_arg, nan_or_inf
from trainer.config import config_from_args, config_parser
from trainer.data import CLIP, MASK, PROBLEM, bad_samples, check_records, create_dataset, split_name
from trainer.runtime import all_reduce_counts, init_runtime
from trainer.scoring import video_scores

__all__ = ["forward_views", "evaluate", "summary_line", "write_results", "main"]

logger = logging.getLogger(__name__)
TOP_K = 5


def _non_finite_logits(video_id: str, logits: np.ndarray) -> str:
    return (f"video {video_id}: the network's logits are not finite ({nan_or_inf(logits)}): "
            f"metrics are not computed from them; check the checkpoint, or evaluate in float32 "
            f"(train.amp_level=O0)")


def _refuse(problems: list[str], count: int) -> None:
    """Raise for ``count`` problems over all ranks, naming this rank's first."""
    if not count:
        return
    if not problems:
        raise ValueError(f"altered or non-finite videos on other ranks ({count}, logged there): "
                         f"metrics are not computed")
    raise ValueError(problems[0] + (f" (and {count - 1} more videos, logged)" if count > 1 else ""))


def forward_views(net: nn.Cell, views: np.ndarray, max_views: int) -> np.ndarray:
    """Logits of ``views`` (V, *clip) run through ``net`` at most ``max_views`` at a time: a
    batch's K clips × C crops of every video in one call (480 clips at 10 × 3 and 16 videos)
    would not fit an accelerator's memory. Each view's logits do not depend on its chunk."""
    return np.concatenate([net(ms.Tensor(views[start:start + max_views])).asnumpy()
                           for start in range(0, len(views), max_views)])


def evaluate(net: nn.Cell, dataset: ms.dataset.Dataset, num_classes: int,
             group_size: int = 1, max_views: int | None = None) -> dict:
    """Top-1/top-5, per-class accuracy and confusion matrix of ``net`` over ``dataset``.

    ``dataset`` is an eval dataset from ``create_dataset`` (columns clip (B, V, T, 3N, S, S),
    label, mask). With ``group_size > 1`` every rank must call this (the counts are all-reduced).
    The views go through ``net`` at most ``max_views`` per call (default: the dataset's batch
    size, ``test.batch_size``), whatever the views per video.
    Returns ``top1``, ``top5`` (fractions), ``videos`` (real videos counted), ``per_class``
    (accuracy per class index, None for a class without videos), ``confusion``
    (``confusion[true][predicted]`` counts) and ``scores`` (video_id -> float64 class scores of
    the videos this rank evaluated: per-video results to compare, e.g. with trainer.predict).

    A bad sample or a video with non-finite logits is a ValueError naming the first one (the
    others are logged). Every rank raises once the counts are summed, so none waits for another.
    """
    net.set_train(False)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    top5_hits = 0
    problems: list[str] = []
    video_scores_by_id: dict[str, np.ndarray] = {}
    k = min(TOP_K, num_classes)
    max_views = max_views or dataset.get_batch_size()
    progress = Progress(dataset.get_dataset_size(), "batches", logger=logger, desc="eval")
    for batch in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
        progress.update()
        clips, labels, mask = batch[CLIP], batch[LABEL], batch[MASK].astype(bool)
        problems.extend(bad_samples(batch[PROBLEM]))
        batch_size, num_clips = clips.shape[:2]
        logits = forward_views(net, clips.reshape(batch_size * num_clips, *clips.shape[2:]), max_views)
        if logits.shape[-1] != num_classes:
            raise ValueError(f"network gives {logits.shape[-1]} classes, expected {num_classes}")
        logits = logits.reshape(batch_size, num_clips, -1)
        finite = np.isfinite(logits).all(axis=(1, 2))
        problems.extend(_non_finite_logits(video_id, video_logits) for video_id, video_logits
                        in zip(batch[VIDEO_ID][mask & ~finite], logits[mask & ~finite]))
        keep = mask & finite
        scores, labels = video_scores(logits[keep]), labels[keep].astype(np.int64)
        np.add.at(confusion, (labels, scores.argmax(axis=1)), 1)
        video_scores_by_id.update(zip(map(str, batch[VIDEO_ID][keep]), scores))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top5_hits += int((top == labels[:, None]).any(axis=1).sum())
    for problem in problems[1:]:   # the first is the error raised below
        logger.error("%s", problem)
    counts = np.append(confusion.ravel(), [top5_hits, len(problems)])
    progress.close()
    if group_size > 1:
        counts = all_reduce_counts(counts)
    confusion, top5_hits = counts[:-2].reshape(num_classes, num_classes), int(counts[-2])
    _refuse(problems, int(counts[-1]))
    videos = int(confusion.sum())
    per_class_videos = confusion.sum(axis=1)
    per_class = [float(confusion[c, c] / n) if n else None
                 for c, n in enumerate(per_class_videos.tolist())]
    return {
        "top1": float(np.trace(confusion) / videos) if videos else 0.0,
        "top5": top5_hits / videos if videos else 0.0,
        "videos": videos,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "scores": video_scores_by_id,
    }


def summary_line(result: dict) -> str:
    return f"top1={result['top1']:.4f} top5={result['top5']:.4f} videos={result['videos']}"


def write_results(result: dict, out: str | Path, class_names: list[str]) -> Path:
    """JSON with top1/top5/videos and per-class accuracy by name; the confusion matrix as CSV
    next to it (``<out stem>.confusion.csv``, rows = true class, columns = predicted)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    confusion_path = out.with_name(f"{out.stem}.confusion.csv")
    payload = {key: result[key] for key in ("top1", "top5", "videos")}
    payload["per_class"] = dict(zip(class_names, result["per_class"]))
    payload["confusion_file"] = confusion_path.name
    out.write_text(json.dumps(payload, indent=2) + "\n")
    with confusion_path.open("w", newline="", encoding="utf-8") as f:   # quotes names with commas
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["true\\predicted", *class_names])
        writer.writerows([name, *row] for name, row in zip(class_names, result["confusion"]))
    return confusion_path


def main(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    rank, group_size = init_runtime(cfg)   # before any pull: msrun's start-up waits for every rank
    setup_logging(rank)
    cfg = cloud.prepare(cfg, (split_name(cfg, "val"),))
    ckpt = checkpoint_arg(cfg, cloud.checkpoint(cfg, args.ckpt))
    names = check_records(cfg, ("val",))   # before the network is built
    from trainer.precision import inference_network  # the network is heavy; import after set-up
    net = inference_network(cfg, ckpt)   # cast as in training: in-run and standalone top-1 agree
    dataset = create_dataset(cfg, "val", training=False, rank=rank, group_size=group_size)
    result = evaluate(net, dataset, cfg.model.num_classes, group_size)
    if rank == 0:
        if args.out:
            confusion_path = write_results(result, args.out, names)
            logger.info("wrote %s and %s", args.out, confusion_path)
        print(summary_line(result), flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser("Evaluate a checkpoint on the validation split: top-1, top-5, every "
                           "video exactly once (standalone or under msrun).")
    parser.add_argument("--ckpt", help="checkpoint (default: <train.output_dir>/<name>/best.ckpt)")
    parser.add_argument("--out", help="write the result JSON here (+ <stem>.confusion.csv)")
    return parser


if __name__ == "__main__":
    raise SystemExit(run_cli(build_parser(), main))
