"""The 310 path (preprocess -> export -> runner -> postprocess) against trainer.eval, on real files.

The checkpoint is a freshly initialized tiny StNet whose classifier bias is centred on the mean
logit of the val clips (no training), so its predictions differ between videos and the top-1
comparison can fail.
"""
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

from trainer import eval as trainer_eval
from trainer.config import load_config
from trainer.infer310 import (DATA_DIR, LABELS_FILE, META_NAME, RESULT_DIR, read_meta,
                              result_name)
from trainer.infer310.postprocess import top1
from trainer.infer310.preprocess import preprocess
from trainer.infer310.runner import run_clips
from trainer.model import create_model
from trainer.runtime import init_runtime

REPO = Path(__file__).resolve().parents[2]
CLIPS_PER_VIDEO = 2


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def _read_clips(work: Path, meta: dict) -> np.ndarray:
    return np.stack([np.fromfile(work / DATA_DIR / name, np.float32).reshape(meta["clip_shape"][1:])
                     for name in meta["files"]])


@pytest.fixture(scope="module")
def run(tiny_records, tmp_path_factory):
    """Everything the 310 path writes, plus the network's own logits on the same clips."""
    base = tmp_path_factory.mktemp("infer310")
    overrides = ["model.width=8", f"data.root={tiny_records.root}",
                 f"test.clips={CLIPS_PER_VIDEO}", f"train.output_dir={base / 'runs'}"]
    cfg = load_config(REPO / "configs/demo.yaml", overrides)
    init_runtime(cfg)
    work, ckpt, export_dir = base / "work", base / "fresh.ckpt", base / "export"
    meta = preprocess(cfg, work)

    ms.set_seed(0)
    net = create_model(cfg)
    net.set_train(False)
    clips = ms.Tensor(_read_clips(work, meta))
    net.fc.bias.set_data(net.fc.bias - net(clips).mean(axis=0))
    ms.save_checkpoint(net, str(ckpt))
    logits = net(clips).asnumpy()

    exported = _cli("trainer.export", "--config", "configs/demo.yaml", "--ckpt", str(ckpt),
                    "--out", str(export_dir), *overrides)
    assert exported.returncode == 0, exported.stderr
    ran = _cli("trainer.infer310.runner", "--model", str(export_dir / "stnet_b1.mindir"),
               "--work", str(work))
    assert ran.returncode == 0, ran.stderr
    post = _cli("trainer.infer310.postprocess", "--work", str(work))
    assert post.returncode == 0, post.stderr
    return {"cfg": cfg, "overrides": overrides, "work": work, "ckpt": ckpt, "meta": meta,
            "logits": logits, "export": export_dir, "runner_out": ran.stdout,
            "post_line": post.stdout.strip().splitlines()[-1]}


def _clip_shape(cfg) -> list[int]:
    """One clip as the config's test protocol shapes it: (1, T, 3N, S, S)."""
    return [1, cfg.test.segments, 3 * cfg.data.frames_per_segment, cfg.test.crop, cfg.test.crop]


def test_preprocess_writes_every_video_once(run, tiny_records):
    meta, work = run["meta"], run["work"]
    labels = np.load(work / LABELS_FILE)
    assert meta["videos"] == len(labels) == 12  # the tiny val split, padding excluded
    assert len(meta["files"]) == CLIPS_PER_VIDEO * meta["videos"]
    assert len(set(meta["video_ids"])) == meta["videos"]
    assert meta["clip_shape"] == _clip_shape(run["cfg"])
    assert sorted(np.bincount(labels).tolist()) == [3, 3, 3, 3]


def test_runner_reproduces_the_network(run):
    meta, work = run["meta"], run["work"]
    results = np.stack([np.fromfile(work / RESULT_DIR / result_name(name), np.float32)
                        for name in meta["files"]])
    np.testing.assert_allclose(results, run["logits"], rtol=1e-5, atol=1e-4)
    assert len(set(results.argmax(axis=1).tolist())) > 1  # the comparison below can fail
    assert re.search(rf"clips={len(meta['files'])} seconds=[\d.]+ clips_per_s=[\d.]+",
                     run["runner_out"])


def test_top1_equals_trainer_eval(run, capsys):
    args = trainer_eval.build_parser().parse_args(
        ["--config", str(REPO / "configs/demo.yaml"), "--ckpt", str(run["ckpt"]), *run["overrides"]])
    result = trainer_eval.main(args)
    assert capsys.readouterr().out.strip().splitlines()[-1] == trainer_eval.summary_line(result)
    post = top1(run["work"])
    assert post["tot"] == result["videos"]
    assert post["top1_correct"] == round(result["top1"] * result["videos"])
    assert post["acc"] == pytest.approx(result["top1"], abs=1e-12)
    assert run["post_line"] == (f"top1_correct={post['top1_correct']}, tot={post['tot']}, "
                                f"acc={post['acc']:.4f}")


def test_postprocess_without_results_is_one_line_error(run, tmp_path):
    (tmp_path / META_NAME).write_text((run["work"] / META_NAME).read_text())
    np.save(tmp_path / LABELS_FILE, np.load(run["work"] / LABELS_FILE))
    done = _cli("trainer.infer310.postprocess", "--work", str(tmp_path))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"error: {2 * 12} of {2 * 12} results missing")


def test_runner_rejects_mismatched_export(run, tmp_path):
    exported = _clip_shape(run["cfg"])
    other = dict(read_meta(run["work"]), clip_shape=exported[:3] + [exported[3] + 8] * 2)
    (tmp_path / META_NAME).write_text(json.dumps(other))
    with pytest.raises(ValueError, match=re.escape(f"takes input {exported}")):
        run_clips(run["export"] / "stnet_b1.mindir", tmp_path)


def test_runner_rejects_non_mindir(run):
    with pytest.raises(ValueError, match="must be a .mindir"):
        run_clips(run["export"] / "stnet_b1.mindir.json", run["work"])
