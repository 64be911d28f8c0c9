"""trainer.predict on video files with a trained demo model: the classes it prints are the ones
trainer.eval scores for the same videos after conversion, and bad files are one line each."""
from __future__ import annotations

import json
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

import trainer.predict
from datatools.kinetics import read_csv
from datatools.manifest import read_manifest, read_settings
from datatools.schema import LABELS_NAME, read_labels
from trainer.config import Config, load_config, save_config
from trainer.data import create_dataset
from trainer.eval import evaluate
from trainer.model import create_model
from trainer.precision import inference_network
from trainer.predict import split_inputs

from tests.datatools import bad_videos
from tests.trainer.inprocess import run_module
from tests.trainer.test_config import DEMO


# The module's own networks run eagerly (the trained run left graph mode set); each prediction
# runs in its config's mode (see config_files).
pytestmark = [pytest.mark.usefixtures("eager_mode"),
              pytest.mark.slow]   # learned_run: the demo model trained first


def _predict(cfg, ckpt, *args) -> int:
    return run_module(trainer.predict, ["--config", cfg, "--ckpt", ckpt, *args])


@pytest.fixture(scope="module")
def val_videos(learnable_records):
    """(video file, true class name) of every validation video of the learnable set."""
    return [(entry.locate(learnable_records.source / "videos"), entry.label)
            for entry in read_csv(learnable_records.val_csv)]


@pytest.fixture(scope="module")
def config_files(learned_run, tmp_path_factory) -> dict[str, Path]:
    """The trained run's config per mode. Graph mode compiles a graph per batch shape, then runs
    fast: worth it for 40 videos of one shape. PyNative starts at once: for one or two videos."""
    folder = tmp_path_factory.mktemp("predict")
    paths = {mode: folder / f"{mode}.yaml" for mode in ("graph", "pynative")}
    for mode, path in paths.items():
        save_config(Config(learned_run.cfg, mode=mode), path)
    return paths


def test_predict_gives_eval_scores_and_the_true_class_first(learned_run, val_videos, config_files,
                                                            tmp_path, capsys):
    cfg, ckpt = learned_run.cfg, learned_run.run_dir / "best.ckpt"
    out = tmp_path / "predictions.jsonl"
    assert _predict(config_files["graph"], ckpt, *[video for video, _ in val_videos], "--out", out,
                    "--top", 2) == 0
    printed = capsys.readouterr().out.splitlines()
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["video"] for p in predicted] == [str(video) for video, _ in val_videos]
    assert all(len(p["top"]) == 2 and "windows" not in p for p in predicted)

    # The same videos converted and evaluated (eagerly, this module's mode): per-video scores
    # agree, not just the argmax. Not to the last bit: graph mode compiles a kernel per batch
    # shape, and predict batches one video's views where eval's batches mix videos. On an
    # h264-trained demo model the two differed by up to 7.8e-5 in graph mode and 1.6e-7 eagerly;
    # a wrong frame or crop moves the scores by 1e-2 and more.
    result = evaluate(inference_network(cfg, ckpt), create_dataset(cfg, "val", training=False),
                      cfg.model.num_classes)
    names = read_labels(Path(cfg.data.root) / LABELS_NAME)
    for (video, _), prediction in zip(val_videos, predicted):
        scores = result["scores"][video.stem]
        assert prediction["top"][0]["label"] == names[int(scores.argmax())]
        assert prediction["top"][0]["prob"] == pytest.approx(scores.max(), abs=5e-4)

    # Printed first: the true class, as often as eval counts top-1 hits (well above chance).
    hits = sum(any(line.startswith(f"{video}: {label} ") for line in printed) for video, label in val_videos)
    assert hits == round(result["top1"] * len(val_videos)) and result["top1"] >= 0.6


def test_predict_on_h264_records_gives_eval_scores(tiny_h264_records, tmp_path):
    """A video predicted with a model of h264 records is encoded as h264 at the split's stored
    settings and read back as eval reads the split: every class score equals eval's (eagerly,
    where batching does not move the numbers), on a fresh network whose scores differ by video."""
    cfg = load_config(DEMO, [f"data.root={tiny_h264_records}", "model.width=8", "mode=pynative",
                             f"train.output_dir={tmp_path}"])
    config_file, ckpt = tmp_path / "config.yaml", tmp_path / "fresh.ckpt"
    save_config(cfg, config_file)
    ms.set_seed(0)
    net = create_model(cfg)
    net.fc.weight.set_data(net.fc.weight * 0.01)    # fresh: softmax saturated, every video alike
    ms.save_checkpoint(net, str(ckpt))
    videos = [entry.locate(tiny_h264_records.source / "videos") for entry in read_csv(tiny_h264_records.val_csv)]
    out = tmp_path / "predictions.jsonl"
    assert _predict(config_file, ckpt, *videos, "--out", out, "--top", cfg.model.num_classes) == 0
    predicted = [json.loads(line) for line in out.read_text().splitlines()]

    # Eagerly, as predict ran: an earlier test of this process may have left graph mode set.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    result = evaluate(inference_network(cfg, ckpt), create_dataset(cfg, "val", training=False),
                      cfg.model.num_classes)
    names = read_labels(tiny_h264_records.labels)
    for video, prediction in zip(videos, predicted):
        expected = dict(zip(names, result["scores"][video.stem]))
        assert {p["label"]: p["prob"] for p in prediction["top"]} == pytest.approx(expected, abs=1e-5)
    # The scores depend on the video, far beyond the tolerance: comparing them means something.
    spread = np.ptp([sorted(p["prob"] for p in prediction["top"]) for prediction in predicted], axis=0)
    assert spread.max() > 1e-3, spread


def test_a_source_smaller_than_the_records_short_side_is_named_at_its_own(learned_run, config_files,
                                                                          tmp_path, capsys):
    """A source below the records' short side is stored at its own (as conversion keeps it): the
    line says so, not the records' short side (it said 256 for a 176x144 source)."""
    stored = learned_run.cfg.data.short_side or read_settings(read_manifest(
        Path(learned_run.cfg.data.root) / "train")).short_side
    small = bad_videos.good(tmp_path / "small.mp4", num_frames=16, width=64, height=stored - 8)
    assert _predict(config_files["pynative"], learned_run.run_dir / "best.ckpt", small) == 0
    printed = "".join(capsys.readouterr())
    assert f"{small} is stored at short side {stored - 8}; frames are scaled to short side {stored} " \
           f"at read time" in printed, printed


def test_windows_cover_the_video_with_their_times(learned_run, val_videos, config_files, tmp_path):
    config_file = config_files["pynative"]
    video = val_videos[0][0]
    out = tmp_path / "windows.jsonl"
    # 16 frames at 25 fps; a clip takes 4 segments x 3 frames = 12, so 0.3 s windows (8 frames)
    # are refused and 0.5 s windows (12 + a 4-frame rest, merged) give one window.
    assert _predict(config_file, learned_run.run_dir / "best.ckpt", video, "--window", 0.3, "--out", out) == 1
    assert "fewer than one clip's 12" in json.loads(out.read_text())["error"]
    assert _predict(config_file, learned_run.run_dir / "best.ckpt", video, "--window", 0.5, "--out", out) == 0
    windows = json.loads(out.read_text())["windows"]
    assert [(w["start"], w["end"]) for w in windows] == [(0.0, 0.64)]
    assert windows[0]["top"] == json.loads(out.read_text())["top"]   # the whole video, one window


def test_bad_videos_are_one_line_each_and_the_rest_predicted(learned_run, val_videos, config_files,
                                                             tmp_path, capsys):
    config_file = config_files["pynative"]
    bad = {
        "missing": tmp_path / "missing.mp4",
        "corrupt": bad_videos.random_bytes(tmp_path / "corrupt.mp4"),
        "audio": bad_videos.audio_only(tmp_path / "audio.m4a"),
        "short": bad_videos.good(tmp_path / "short.mp4", num_frames=6),
    }
    good = val_videos[0][0]
    code = _predict(config_file, learned_run.run_dir / "best.ckpt", bad["missing"], good, bad["corrupt"],
                    bad["audio"], bad["short"])
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert code == 1
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors), errors
    for path, line in zip([bad["missing"], bad["corrupt"], bad["audio"], bad["short"]], errors):
        assert str(path) in line
    assert "shorter than one clip" in errors[3]
    assert f"{good}: " in captured.out and "predicted 1 of 5 videos, 4 failed" in captured.out


def test_inputs_split_into_videos_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("clips.v2=final.mp4").write_bytes(b"")   # looks like an override, but is a file
    videos, overrides = split_inputs(["x.mp4", "test.crops=3", "clips.v2=final.mp4", "train.lr=0.1"])
    assert videos == ["x.mp4", "clips.v2=final.mp4"] and overrides == ["test.crops=3", "train.lr=0.1"]
