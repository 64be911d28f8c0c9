"""Evaluation of a tiny StNet with a planted classifier on converted records: alone, over 5 msrun
ranks, and refusing altered videos and non-finite scores.

The classifier is fitted on the network's own features so that every clip gets logits planted
by the test: each video's true class sits at a chosen rank (top-1 hits, top-5-only hits and
misses), and two videos have clips that disagree. The expected confusion, top-1 and top-5 follow
from the planted logits by plain numpy, not from the code under test.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from datatools.convert import convert
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import JPEG, Settings
from datatools.schema import LABEL, LABELS_NAME, VIDEO_ID
from datatools.synth import make_dataset
from trainer import eval as trainer_eval
from trainer.checkpoint import load_weights
from trainer.config import load_config
from trainer.data import CLIP, MASK, create_dataset
from trainer.eval import TOP_K, evaluate, write_results
from trainer.model import create_model
from trainer.precision import PixelInput
from trainer.runtime import init_runtime
from trainer.scoring import video_scores

from tests.conftest import TINY_SHORT_SIDE, TINY_SPEC, TINY_VIDEOS_PER_SHARD
from tests.conftest import free_port
from tests.trainer.inprocess import run_module

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
VENV_BIN = Path(sys.executable).parent
SUMMARY = re.compile(r"^top1=(\d\.\d+) top5=(\d\.\d+) videos=(\d+)$")
CLASSES = 6            # > TOP_K: a true class ranked 6th misses the top 5
VAL_PER_CLASS = 2      # 12 videos: not divisible by RANKS, exercises eval padding
# msrun ranks: the fewest that do not divide the 12 videos (1, 2, 3 and 4 do), so 3 rows are
# padding, and a padded row counted as a video, or a video counted twice or never, changes the
# totals. More ranks would only start more MindSpore processes on the test host's 2 cores.
RANKS = 5
# Rank of the true class in each video's planted scores, in evaluation order: 6 top-1 hits,
# 4 hits in the top 5 only, 2 misses.
TRUE_RANK = [0, 1, 0, 5, 0, 2, 0, 4, 0, 5, 3, 0]
# Videos whose two clips disagree (clip 0 favours the planted first class, clip 1 the second):
# the mean softmax puts the first class on top, the mean logit, clip 0 alone and clip 1 alone do
# not all agree with it, so another rule changes a prediction.
SPLIT = (1, 2)


def _overrides(root) -> list[str]:
    # Tiny width, PyNative (no graph compile in RANKS processes on 2 cores), 2 clips per video that
    # differ (2 segments of 8 frames: runs at frames 1 and 3 of each; with 4 segments of 4 frames
    # both clips would start at frame 0).
    return [f"data.root={root}", "model.width=4", "mode=pynative", "test.clips=2", "test.segments=2",
            "test.batch_size=3", "data.num_workers=1", f"model.num_classes={CLASSES}"]


@pytest.fixture(scope="module")
def six_class_records(tmp_path_factory) -> Path:
    """6 classes x 2 validation videos, converted by the real pipeline (no train split)."""
    base = tmp_path_factory.mktemp("six_classes")
    train_csv, val_csv = make_dataset(base / "source", CLASSES, 1, VAL_PER_CLASS, seed=1, spec=TINY_SPEC)
    labels = write_labels(class_names(e.label for e in read_csv(train_csv)),
                          base / "records" / LABELS_NAME)
    settings = Settings(codec=JPEG, short_side=TINY_SHORT_SIDE, quality=90, max_fps=None,
                        videos_per_shard=TINY_VIDEOS_PER_SHARD, seed=0)
    convert(val_csv, base / "source" / "videos", labels, base / "records" / "val", settings, workers=1)
    return base / "records"


@pytest.fixture(scope="module")
def cfg(six_class_records):
    return load_config(DEMO, _overrides(six_class_records))


def _planted_logits(labels: np.ndarray) -> np.ndarray:
    """(videos, 2 clips, classes) logits with each video's true class at ``TRUE_RANK``."""
    rng = np.random.default_rng(0)
    logits = np.empty((len(labels), 2, CLASSES))
    for video, (label, rank) in enumerate(zip(labels, TRUE_RANK)):
        others = rng.permutation([c for c in range(CLASSES) if c != label]).tolist()
        order = others[:rank] + [int(label)] + others[rank:]          # classes, best first
        planted = logits[video]                                        # (clips, classes) view
        planted[:, order] = np.linspace(5, -5, CLASSES)
        if video in SPLIT:   # mean softmax: order[0]; mean logit: order[1]
            planted[:, order] = -6.0
            planted[:, order[:3]] = [[2.0, 0.0, 0.0], [-10.0, 0.0, -0.1]]
    return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _expected(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Confusion, top-1 and top-5 of per-video ``scores`` by plain numpy."""
    confusion = np.zeros((CLASSES, CLASSES), np.int64)
    for label, video_scores in zip(labels, scores):
        confusion[label, video_scores.argmax()] += 1
    top5 = np.mean([label in np.argsort(-s)[:TOP_K] for label, s in zip(labels, scores)])
    return {"confusion": confusion.tolist(), "top1": np.trace(confusion) / len(labels), "top5": top5}


@pytest.fixture(scope="module")
def planted(cfg, tmp_path_factory) -> dict:
    """The checkpoint of a random tiny StNet whose classifier gives every val clip its planted
    logits, those logits, and the labels and video ids in evaluation order."""
    init_runtime(cfg)
    ms.set_seed(3)
    net = create_model(cfg)
    net.set_train(False)
    fc, net.fc = net.fc, nn.Identity()
    features, labels, video_ids = [], [], []
    for batch in create_dataset(cfg, "val", training=False).create_dict_iterator(num_epochs=1,
                                                                                output_numpy=True):
        real = batch[MASK].astype(bool)
        clips = batch[CLIP][real]
        out = PixelInput(net)(ms.Tensor(clips.reshape(-1, *clips.shape[2:]))).asnumpy()
        features.append(out.reshape(*clips.shape[:2], -1))
        labels.extend(batch[LABEL][real].tolist())
        video_ids.extend(str(v) for v in batch[VIDEO_ID][real])
    net.fc = fc
    features, labels = np.concatenate(features).astype(np.float64), np.asarray(labels)
    logits = _planted_logits(labels)
    inputs = np.concatenate([features, np.ones((*features.shape[:2], 1))], axis=-1)
    solution = np.linalg.lstsq(inputs.reshape(-1, inputs.shape[-1]),
                               logits.reshape(-1, CLASSES), rcond=None)[0]
    net.fc.weight.set_data(ms.Tensor(solution[:-1].T.astype(np.float32)))
    net.fc.bias.set_data(ms.Tensor(solution[-1].astype(np.float32)))
    fitted = inputs @ solution
    assert np.abs(fitted - logits).max() < 1e-3, "the planted logits must be reachable"
    path = tmp_path_factory.mktemp("ckpt") / "planted.ckpt"
    ms.save_checkpoint(net, str(path))
    return {"ckpt": path, "logits": logits, "labels": labels, "video_ids": video_ids}


def test_planted_logits_make_the_rules_disagree(planted):
    """The design, checked: per-video predictions differ, and for the split videos the mean
    softmax (trainer.scoring's rule) disagrees with the mean logit or with a single clip."""
    logits, labels = planted["logits"], planted["labels"]
    mean_softmax = _softmax(logits).mean(axis=1)
    assert len(set(mean_softmax.argmax(axis=1).tolist())) > 2
    for video in SPLIT:
        rules = {"mean softmax": mean_softmax[video].argmax(),
                 "mean logit": logits[video].mean(axis=0).argmax(),
                 "clip 0": logits[video, 0].argmax(), "clip 1": logits[video, 1].argmax()}
        assert rules["mean softmax"] != rules["mean logit"] and rules["clip 0"] != rules["clip 1"], rules
    assert _expected(labels, mean_softmax)["top5"] < 1.0


def test_evaluate_scores_each_video_by_its_mean_clip_softmax(cfg, planted):
    init_runtime(cfg)
    net = create_model(cfg)
    load_weights(net, planted["ckpt"])
    result = evaluate(PixelInput(net), create_dataset(cfg, "val", training=False), CLASSES)

    labels, logits = planted["labels"], planted["logits"]
    expected = _expected(labels, _softmax(logits).mean(axis=1))
    assert result["confusion"] == expected["confusion"]
    assert (result["top1"], result["top5"]) == (pytest.approx(6 / 12), pytest.approx(10 / 12))
    assert (result["top1"], result["top5"]) == (pytest.approx(expected["top1"]),
                                                pytest.approx(expected["top5"]))
    assert result["videos"] == len(labels) == CLASSES * VAL_PER_CLASS
    for c, acc in enumerate(result["per_class"]):
        confusion = np.asarray(expected["confusion"])
        assert acc == pytest.approx(confusion[c, c] / confusion[c].sum())
    # Scoring two correctly predicted videos of different classes with each other's clips makes
    # both wrong: top-1 6/12 -> 4/12, so an evaluation that swaps videos cannot pass.
    hits = [video for video, rank in enumerate(TRUE_RANK) if rank == 0]
    a, b = next((a, b) for a in hits for b in hits if labels[a] != labels[b])
    swapped = logits.copy()
    swapped[[a, b]] = swapped[[b, a]]
    assert _expected(labels, _softmax(swapped).mean(axis=1))["top1"] == pytest.approx(4 / 12)
    # Likewise scoring by the mean logit: the split videos change their prediction.
    assert _expected(labels, logits.mean(axis=1))["confusion"] != expected["confusion"]


def test_load_weights_refuses_a_checkpoint_missing_parameters(cfg, planted, tmp_path):
    params = ms.load_checkpoint(str(planted["ckpt"]))
    partial = tmp_path / "partial.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items() if not k.startswith("fc.")],
                       str(partial))
    with pytest.raises(ValueError, match=r"lacks 2 network parameters.*fc\."):
        load_weights(create_model(cfg), partial)


def _tiny_net(tiny_cfg) -> nn.Cell:
    init_runtime(tiny_cfg)
    ms.set_seed(3)
    return PixelInput(create_model(tiny_cfg))


def test_evaluate_refuses_an_altered_video(altered_records):
    tiny_cfg = load_config(DEMO, [f"data.root={altered_records}", "model.width=4", "mode=pynative",
                                  "data.val_split=val_altered"])
    dataset = create_dataset(tiny_cfg, "val", training=False)
    message = (f"video {altered_records.val_frame_flipped}: checksum mismatch: metrics are not "
               f"computed on altered data; run datatools.inspect {altered_records.root / 'val_altered'}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        evaluate(_tiny_net(tiny_cfg), dataset, tiny_cfg.model.num_classes)


def test_evaluate_refuses_non_finite_logits(tiny_records):
    tiny_cfg = load_config(DEMO, [f"data.root={tiny_records}", "model.width=4", "mode=pynative"])
    net = _tiny_net(tiny_cfg)
    net.net.fc.bias.set_data(ms.Tensor(np.array([0, np.nan, 0, 0], np.float32)))
    dataset = create_dataset(tiny_cfg, "val", training=False)
    first = str(next(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))[VIDEO_ID][0])
    with pytest.raises(ValueError, match=rf"^video {first}: the network's logits are not finite "
                                         rf"\(nan\): .* \(and 11 more videos, logged\)$"):
        evaluate(net, dataset, tiny_cfg.model.num_classes)


class _Recorder(nn.Cell):
    """``net``, noting how many views each call takes."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.calls: list[int] = []

    def construct(self, clips):
        self.calls.append(clips.shape[0])
        return self.net(clips)


def test_views_go_through_the_network_in_chunks_with_the_same_scores(tiny_records):
    """3 crops of 4 videos a batch: 12 views, at most test.batch_size=4 per call."""
    tiny_cfg = load_config(DEMO, [f"data.root={tiny_records}", "model.width=4", "mode=pynative",
                                  "test.crops=3", "test.batch_size=4"])
    net = _Recorder(_tiny_net(tiny_cfg))
    chunked = evaluate(net, create_dataset(tiny_cfg, "val", training=False), tiny_records.num_classes)
    assert max(net.calls) == 4 and sum(net.calls) == 3 * 12
    batch = next(create_dataset(tiny_cfg, "val", training=False).create_dict_iterator(
        num_epochs=1, output_numpy=True))
    clips = batch[CLIP]
    whole = net.net(ms.Tensor(clips.reshape(-1, *clips.shape[2:]))).asnumpy()   # one call
    expected = video_scores(whole.reshape(*clips.shape[:2], -1))
    assert len(chunked["scores"]) == 12
    for video_id, scores in zip(batch[VIDEO_ID], expected):
        np.testing.assert_allclose(chunked["scores"][str(video_id)], scores, rtol=1e-6, atol=1e-9)


def test_confusion_csv_quotes_class_names_with_commas(tmp_path):
    """datatools.labels accepts 'cooking egg, fried': unquoted, it shifted every column."""
    names = ["abseiling", "cooking egg, fried", 'say "cheese"']
    confusion = [[2, 0, 1], [0, 3, 0], [1, 1, 4]]
    result = {"top1": 0.75, "top5": 1.0, "videos": 12, "per_class": [2 / 3, 1.0, 4 / 6],
              "confusion": confusion}
    path = write_results(result, tmp_path / "result.json", names)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["true\\predicted", *names],
                    *([name, *map(str, row)] for name, row in zip(names, confusion))]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return env


def _summary(text: str) -> tuple[float, float, int]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = SUMMARY.match(lines[-1])
    assert match, f"last line is not the summary: {lines[-1]!r}"
    return float(match[1]), float(match[2]), int(match[3])


def test_cli_missing_checkpoint_is_one_line(cfg, tmp_path):
    """The one real ``python -m trainer.eval`` start (the others run main in this process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.eval", "--config", str(DEMO), "--ckpt",
         str(tmp_path / "none.ckpt"), *_overrides(cfg.data.root)],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --ckpt not found: {tmp_path / 'none.ckpt'}"]


@pytest.mark.slow
def test_multi_rank_eval_counts_each_video_once_and_matches_one_process(cfg, planted, tmp_path,
                                                                         capsys):
    args = ["--config", str(DEMO), "--ckpt", str(planted["ckpt"]), *_overrides(cfg.data.root)]
    log_dir = tmp_path / "msrun"
    dist_out = tmp_path / "dist" / "result.json"
    # Started first: the single-process run below fits in while its ranks start up.
    with open(tmp_path / "msrun.out", "w") as console:
        dist = subprocess.Popen(
            ["msrun", f"--worker_num={RANKS}", f"--local_worker_num={RANKS}",
             f"--master_port={free_port()}", f"--log_dir={log_dir}", "--join=True",
             str(REPO / "scripts" / "launch.py"), "trainer.eval", *args, "--out", str(dist_out)],
            stdout=console, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        try:
            out = tmp_path / "single" / "result.json"
            assert run_module(trainer_eval, [*args, "--out", out]) == 0
            returncode = dist.wait(timeout=600)
        finally:
            if dist.poll() is None:   # a failure above: on SIGINT msrun stops its ranks too
                dist.send_signal(signal.SIGINT)
                dist.wait(timeout=60)
    top1, top5, videos = _summary(capsys.readouterr().out)
    # the planted predictions (6 hits, 4 top-5-only hits, 2 misses), not merely what one rank says
    assert (top1, top5, videos) == (0.5, pytest.approx(10 / 12, abs=1e-4), 12)
    payload = json.loads(out.read_text())
    assert (payload["top1"], payload["videos"]) == (pytest.approx(top1, abs=1e-4), videos)
    expected = _expected(planted["labels"], _softmax(planted["logits"]).mean(axis=1))["confusion"]
    confusion = out.with_name("result.confusion.csv").read_text().strip().splitlines()
    assert [[int(x) for x in row.split(",")[1:]] for row in confusion[1:]] == expected
    assert videos % RANKS, f"the val split should not divide by {RANKS} to exercise padding"

    assert returncode == 0, (tmp_path / "msrun.out").read_text()[-3000:]
    rank0 = (log_dir / "worker_0.log").read_text()
    # Worker logs interleave MindSpore's own stderr lines: keep what the ranks printed.
    printed = [line for line in rank0.splitlines() if line.startswith("top1=")]
    assert len(printed) == 1 and _summary(printed[0]) == (top1, top5, videos)
    for rank in range(1, RANKS):   # only rank 0 reports
        assert "top1=" not in (log_dir / f"worker_{rank}.log").read_text(), rank
    assert json.loads(dist_out.read_text())["confusion_file"] == "result.confusion.csv"
    assert dist_out.with_name("result.confusion.csv").read_text().splitlines() == confusion
