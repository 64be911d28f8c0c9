"""What is happening in this video? Class probabilities for video files, no dataset needed.

    python -m trainer.predict --config configs/demo.yaml --ckpt runs/demo/best.ckpt a.mp4 b.mp4
    python -m trainer.predict --config X --ckpt C long.mp4 --window 10 --out predictions.jsonl

A video is decoded, resized and encoded (JPEG or h264) by the converter's own path
(``datatools.video.encode_video``) at the settings stored with the records the model was trained
on (``data.root``'s split manifest), then cut into views by the evaluation's pipeline
(``trainer.data.EvalClips``: K clips × C crops of ``test.*``) and scored by ``trainer.scoring``:
a prediction sees the pixels and gives the scores ``trainer.eval`` would for the same video.
``--window SECONDS`` also scores consecutive windows of a long video, each from its own views.
A video that cannot be predicted is one line naming it; the others are still predicted, and
the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mindspore import nn

from datatools.cli import positive_int, run_cli, setup_logging
from datatools.manifest import Settings, read_manifest, read_settings
from datatools.schema import pack_frames
from datatools.video import VideoError, encode_or_reason
from trainer.checkpoint import checkpoint_arg
from trainer.config import Config, config_from_args, config_parser
from trainer.data import EvalClips, build_decoder, class_names, eval_clips, split_dir
from trainer.eval import forward_views
from trainer.runtime import init_runtime
from trainer.scoring import video_scores

__all__ = ["Prediction", "Predictor", "stored_settings", "split_inputs", "main"]

logger = logging.getLogger(__name__)
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")   # section.key=value, as config overrides look


@dataclass
class Prediction:
    """One video's top classes, and each window's when windows were asked for."""

    video: str
    top: list[tuple[str, float]]
    windows: list[tuple[float, float, list[tuple[str, float]]]]

    def as_json(self) -> dict:
        """``{"video", "top": [{"label", "prob"}], "windows": [{"start", "end", "top"}]}``."""
        payload: dict = {"video": self.video, "top": _top_json(self.top)}
        if self.windows:
            payload["windows"] = [{"start": round(start, 3), "end": round(end, 3), "top": _top_json(top)}
                                  for start, end, top in self.windows]
        return payload

    def lines(self) -> list[str]:
        """``<video>: <label> <prob>, ...`` and one indented line per window with its times."""
        lines = [f"{self.video}: {_top_text(self.top)}"]
        lines += [f"  {start:.1f}-{end:.1f} s: {_top_text(top)}" for start, end, top in self.windows]
        return lines


def _top_json(top: list[tuple[str, float]]) -> list[dict]:
    return [{"label": label, "prob": round(prob, 6)} for label, prob in top]


def _top_text(top: list[tuple[str, float]]) -> str:
    return ", ".join(f"{label} {prob:.3f}" for label, prob in top)


def stored_settings(cfg: Config) -> Settings:
    """The conversion settings of the records ``cfg`` trains on (its train split, else val), so
    a predicted video is stored as its training videos were."""
    for split in ("train", "val"):
        try:
            settings = read_settings(read_manifest(split_dir(cfg, split), []))
        except FileNotFoundError:
            continue
        if settings is not None:
            return settings
    raise FileNotFoundError(f"data.root={cfg.data.root!r} holds no converted split with its settings "
                            f"(train or val manifest): predict encodes a video as the model's "
                            f"training videos were; set data.root to those records")


class Predictor:
    """The network, the class names and the test protocol of one config, reused for every video."""

    def __init__(self, cfg: Config, net: nn.Cell, class_names: list[str], settings: Settings,
                 top: int = 5) -> None:
        self.cfg = cfg
        self.net = net
        self.class_names = class_names
        self.settings = settings
        self.top = min(top, len(class_names))
        self.clip_frames = cfg.test.segments * cfg.data.frames_per_segment

    def predict(self, path: str | Path, window: float | None = None) -> Prediction:
        """Top classes of the video at ``path`` (and of each ``window``-second window);
        VideoError with the reason for a video that cannot be predicted."""
        s = self.settings
        encoded = encode_or_reason(path, s)    # any fault of this video is its one error line
        if isinstance(encoded, str):
            raise VideoError(encoded)
        count = len(encoded.frames)
        if count < self.clip_frames:
            raise VideoError(f"{count} frames, shorter than one clip ({self.cfg.test.segments} segments "
                             f"x {self.cfg.data.frames_per_segment} frames = {self.clip_frames})")
        blob, offsets = pack_frames(encoded.frames)
        video_id = Path(path).stem
        decoder = build_decoder(self.cfg, s.short_side, self.cfg.test.crop, False,
                                {video_id: (encoded.src_height, encoded.src_width)}, path, s.codec,
                                actual=min(encoded.width, encoded.height))
        clips = eval_clips(self.cfg, decoder, path)
        prediction = Prediction(str(path), self._top(self._scores(clips, blob, offsets, video_id)), [])
        if window:
            fps = min(encoded.fps, s.max_fps) if s.max_fps else encoded.fps
            for first, last in self._windows(count, window, fps):
                scores = self._scores(clips, blob, offsets, video_id, first, last - first)
                prediction.windows.append((first / fps, last / fps, self._top(scores)))
        return prediction

    def _windows(self, count: int, seconds: float, fps: float) -> list[tuple[int, int]]:
        """(first, end) frames of consecutive ``seconds`` windows; a last window shorter than one
        clip joins the one before it."""
        if not fps:
            raise VideoError("the video declares no frame rate: --window needs one")
        size = max(1, round(seconds * fps))
        if size < self.clip_frames:
            raise VideoError(f"--window {seconds:g} s holds {size} frames at {fps:.3g} fps, fewer than "
                             f"one clip's {self.clip_frames}")
        bounds = [(first, min(first + size, count)) for first in range(0, count, size)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.clip_frames:
            bounds[-2:] = [(bounds[-2][0], count)]
        return bounds

    def _scores(self, clips: EvalClips, blob: bytes | memoryview, offsets: np.ndarray,
                video_id: str, first: int = 0, count: int | None = None) -> np.ndarray:
        """Class scores of frames ``first..first+count-1`` (all by default): their views through
        the network in test.batch_size batches, then the mean softmax (trainer.scoring)."""
        count = len(offsets) - 1 - first if count is None else count
        views = clips.views(blob, offsets, count, video_id, first)
        logits = forward_views(self.net, views, self.cfg.test.batch_size)
        if not np.isfinite(logits).all():
            raise VideoError("the network's logits are not finite: check the checkpoint")
        return video_scores(logits[None])[0]

    def _top(self, scores: np.ndarray) -> list[tuple[str, float]]:
        order = np.argsort(-scores, kind="stable")[:self.top]
        return [(self.class_names[i], float(scores[i])) for i in order]


def split_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """(videos, overrides): a ``section.key=value`` item is an override unless it is a file."""
    videos = [item for item in items if not OVERRIDE.match(item) or Path(item).is_file()]
    return videos, [item for item in items if item not in videos]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def main(args: argparse.Namespace) -> int:
    videos, args.overrides = split_inputs(args.overrides)
    if not videos:
        raise ValueError("no VIDEO given: name one or more video files")
    cfg = config_from_args(args)
    ckpt = checkpoint_arg(cfg, args.ckpt)
    names = class_names(cfg)
    settings = stored_settings(cfg)
    init_runtime(cfg)
    setup_logging()
    from trainer.precision import inference_network  # the network is heavy; import after set-up
    predictor = Predictor(cfg, inference_network(cfg, ckpt), names, settings, args.top)
    out = open(args.out, "w") if args.out else None
    failed = 0
    try:
        for video in videos:
            try:
                prediction = predictor.predict(video, args.window)
            except VideoError as exc:
                failed += 1
                print(f"error: {video}: {exc}", file=sys.stderr, flush=True)
                record = {"video": video, "error": str(exc)}
            else:
                print("\n".join(prediction.lines()), flush=True)
                record = prediction.as_json()
            if out:
                out.write(json.dumps(record) + "\n")
    finally:
        if out:
            out.close()
    print(f"predicted {len(videos) - failed} of {len(videos)} videos"
          + (f", {failed} failed" if failed else "") + (f"; wrote {args.out}" if args.out else ""),
          flush=True)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser("Predict the action in video files with a trained StNet: top classes "
                           "with probabilities, per video and optionally per time window.")
    parser.usage = ("python -m trainer.predict --config FILE [--ckpt CKPT] [--top N] "
                    "[--window SECONDS] [--out FILE] VIDEO [VIDEO ...] [key=value ...]")
    parser.epilog = ("Positional arguments are video files, and config overrides (key=value). "
                     "Videos are encoded at the settings of the records in data.root.")
    parser.add_argument("--ckpt", help="checkpoint (default: <train.output_dir>/<name>/best.ckpt)")
    parser.add_argument("--top", type=positive_int, default=5, metavar="N",
                        help="classes shown per video (default 5)")
    parser.add_argument("--window", type=_positive_seconds, metavar="SECONDS",
                        help="also predict consecutive windows of this length, with their times")
    parser.add_argument("--out", help="write one JSON object per video here (JSON Lines)")
    return parser


if __name__ == "__main__":
    raise SystemExit(run_cli(build_parser(), main))
