"""Evaluation of a real tiny StNet on converted records: alone, and over 8 msrun ranks."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from datatools.schema import LABEL
from trainer.config import load_config
from trainer.data import CLIP, MASK, create_dataset
from trainer.checkpoint import load_weights
from trainer.eval import evaluate
from trainer.model import create_model
from trainer.runtime import init_runtime

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
VENV_BIN = Path(sys.executable).parent
SUMMARY = re.compile(r"^top1=(\d\.\d+) top5=(\d\.\d+) videos=(\d+)$")


def _overrides(root) -> list[str]:
    # Tiny width, PyNative (no graph compile in 8 processes on 2 cores), 2 clips per video.
    return [f"data.root={root}", "model.width=4", "mode=pynative", "test.clips=2",
            "test.batch_size=3", "data.num_workers=1"]


@pytest.fixture(scope="module")
def cfg(tiny_records):
    return load_config(DEMO, _overrides(tiny_records))


@pytest.fixture(scope="module")
def ckpt(cfg, tmp_path_factory) -> Path:
    init_runtime(cfg)
    ms.set_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "net.ckpt"
    ms.save_checkpoint(create_model(cfg), str(path))
    return path


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


def test_evaluate_averages_clip_softmax_per_video(cfg, ckpt):
    init_runtime(cfg)
    net = create_model(cfg)
    load_weights(net, ckpt)
    result = evaluate(net, create_dataset(cfg, "val", training=False), cfg.model.num_classes)

    net.set_train(False)
    confusion = np.zeros((cfg.model.num_classes,) * 2, np.int64)
    single = load_config(DEMO, _overrides(cfg.data.root) + ["test.batch_size=1"])
    for batch in create_dataset(single, "val", training=False).create_dict_iterator(
            num_epochs=1, output_numpy=True):
        logits = net(ms.Tensor(batch[CLIP][0])).asnumpy().astype(np.float64)  # (K, classes)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        confusion[batch[LABEL][0], probs.mean(axis=0).argmax()] += 1
        assert batch[MASK][0] == 1
    assert result["confusion"] == confusion.tolist()
    assert result["videos"] == confusion.sum()
    assert result["top1"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert result["top5"] == 1.0  # 4 classes: the true one is always in the top 5
    for c, acc in enumerate(result["per_class"]):
        assert acc == pytest.approx(confusion[c, c] / confusion[c].sum())


def test_load_weights_refuses_a_checkpoint_missing_parameters(cfg, ckpt, tmp_path):
    params = ms.load_checkpoint(str(ckpt))
    partial = tmp_path / "partial.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items() if not k.startswith("fc.")],
                       str(partial))
    with pytest.raises(ValueError, match=r"lacks 2 network parameters.*fc\."):
        load_weights(create_model(cfg), partial)


def test_cli_missing_checkpoint_is_one_line(cfg, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.eval", "--config", str(DEMO), "--ckpt",
         str(tmp_path / "none.ckpt"), *_overrides(cfg.data.root)],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --ckpt not found: {tmp_path / 'none.ckpt'}"]


@pytest.mark.slow
def test_eight_rank_eval_counts_each_video_once_and_matches_one_process(cfg, ckpt, tmp_path):
    args = ["--config", str(DEMO), "--ckpt", str(ckpt), *_overrides(cfg.data.root)]
    out = tmp_path / "single" / "result.json"
    single = subprocess.run([sys.executable, "-m", "trainer.eval", *args, "--out", str(out)],
                            capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    top1, top5, videos = _summary(single.stdout)
    payload = json.loads(out.read_text())
    assert (payload["top1"], payload["videos"]) == (pytest.approx(top1, abs=1e-4), videos)
    confusion = out.with_name("result.confusion.csv").read_text().strip().splitlines()
    assert len(confusion) == 1 + cfg.model.num_classes
    assert sum(int(x) for row in confusion[1:] for x in row.split(",")[1:]) == videos
    assert videos % 8, "the tiny val split should not divide by 8 to exercise padding"

    log_dir = tmp_path / "msrun"
    dist_out = tmp_path / "dist" / "result.json"
    dist = subprocess.run(
        ["msrun", "--worker_num=8", "--local_worker_num=8", "--master_port=8437",
         f"--log_dir={log_dir}", "--join=True", str(REPO / "scripts" / "launch.py"),
         "trainer.eval", *args, "--out", str(dist_out)],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    rank0 = (log_dir / "worker_0.log").read_text()
    assert dist.returncode == 0, rank0[-3000:]
    # Worker logs interleave MindSpore's own stderr lines: keep what the ranks printed.
    printed = [line for line in rank0.splitlines() if line.startswith("top1=")]
    assert len(printed) == 1 and _summary(printed[0]) == (top1, top5, videos)
    assert "top1=" not in (log_dir / "worker_5.log").read_text()  # only rank 0 reports
    assert json.loads(dist_out.read_text())["confusion_file"] == "result.confusion.csv"
    assert dist_out.with_name("result.confusion.csv").read_text().splitlines() == confusion
