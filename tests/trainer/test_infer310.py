"""The 310 path (preprocess -> export -> runner -> postprocess, and the packaged folder a 310 host
runs) against trainer.eval, on real files.

The checkpoint is a freshly initialized tiny StNet whose classifier bias is centred on the mean
logit of the val clips (no training), so its predictions differ between videos and the top-1
comparison can fail.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from packaging.requirements import Requirement

import trainer.export
from datatools.schema import sample_checksum
from trainer import eval as trainer_eval
from trainer.config import Config, load_config
from trainer.data import MEAN, STD, ClipDecoder, ClipSampler, EvalClips
from trainer.export import export_network
from trainer.infer310 import (DATA_DIR, LABELS_FILE, META_NAME, NAMES_FILE, RESULT_DIR, read_meta,
                              result_name)
from trainer.infer310 import package as package_cli
from trainer.infer310 import postprocess as postprocess_cli
from trainer.infer310 import runner as runner_cli
from trainer.infer310.package import source_files
from trainer.infer310.postprocess import summary_line, top1
from trainer.infer310.preprocess import preprocess
from trainer.infer310.runner import run_clips
from trainer.model import create_model
from trainer.runtime import init_runtime

from tests.trainer.inprocess import run_module

REPO = Path(__file__).resolve().parents[2]
CLIPS_PER_VIDEO = 2
MODEL = "stnet_b1.mindir"
# The 310 host's runtime for `run.sh CPU`: numpy and MindSpore, nothing else of the project venv.
FRESH_VENV_DISTRIBUTIONS = ("numpy", "mindspore")
# What the host lacks; the package must run without them.
ABSENT_MODULES = ("cv2", "simplejpeg", "yaml", "pyarrow", "trainer", "datatools")


pytestmark = pytest.mark.slow   # exports a model and runs the 310 package in a fresh venv


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def _read_clips(work: Path, meta: dict) -> np.ndarray:
    shape = meta["clip_shape"][1:]
    return np.stack([np.fromfile(work / DATA_DIR / name, meta["dtype"]).reshape(shape)
                     for name in meta["files"]])


def _run_quietly(module, *args: object) -> str:
    """``run_module`` for a module-scoped fixture (no capsys there): returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run_module(module, args)
    assert code == 0, printed.getvalue()[-2000:]
    return printed.getvalue()


@pytest.fixture(scope="module")
def run(tiny_h264_records, tmp_path_factory):
    """Everything the 310 path writes (uint8 and float clips, both exports, the package), plus
    the network's own logits on the float clips.

    The export and the runner run in this process (a new one would import MindSpore again:
    run.sh starts the runner for real below); postprocess and package, which need only numpy,
    start as the 310 host starts them.
    """
    base = tmp_path_factory.mktemp("infer310")
    # 2 segments: the K=2 clips of a 16-frame video differ (with 4 they would be the same);
    # PyNative: no graph compile for the network's own runs (exports compile their graphs)
    overrides = ["model.width=8", f"data.root={tiny_h264_records.root}", "test.segments=2",
                 f"test.clips={CLIPS_PER_VIDEO}", f"train.output_dir={base / 'runs'}", "mode=pynative"]
    cfg = load_config(REPO / "configs/demo.yaml", overrides)
    init_runtime(cfg)
    work, float_work, ckpt = base / "work", base / "work_float", base / "fresh.ckpt"
    export_dir, float_export_dir, package = base / "export", base / "export_float", base / "package"
    meta = preprocess(cfg, work)
    float_meta = preprocess(cfg, float_work, float_input=True)

    ms.set_seed(0)
    net = create_model(cfg)
    net.set_train(False)
    clips = ms.Tensor(_read_clips(float_work, float_meta))
    net.fc.bias.set_data(net.fc.bias - net(clips).mean(axis=0))
    ms.save_checkpoint(net, str(ckpt))
    logits = net(clips).asnumpy()
    export_network(net, cfg, "MINDIR", out_dir=float_export_dir)

    _run_quietly(trainer.export, "--config", REPO / "configs/demo.yaml", "--ckpt", ckpt,
                 "--input", "uint8", "--out", export_dir, *overrides)
    runner_out = _run_quietly(runner_cli, "--model", export_dir / MODEL, "--work", work)
    post = _cli("trainer.infer310.postprocess", "--work", str(work))
    assert post.returncode == 0, post.stderr
    packaged = _cli("trainer.infer310.package", "--model", str(export_dir / MODEL),
                    "--work", str(work), "--out", str(package))
    assert packaged.returncode == 0, packaged.stderr
    return {"cfg": cfg, "overrides": overrides, "work": work, "float_work": float_work,
            "ckpt": ckpt, "meta": meta, "float_meta": float_meta, "logits": logits,
            "export": export_dir, "float_export": float_export_dir, "package": package,
            "runner_out": runner_out, "post_line": post.stdout.strip().splitlines()[-1]}


@pytest.fixture(scope="module")
def evaluated(run) -> dict:
    """trainer.eval's result for the same checkpoint and config."""
    args = trainer_eval.build_parser().parse_args(
        ["--config", str(REPO / "configs/demo.yaml"), "--ckpt", str(run["ckpt"]), *run["overrides"]])
    return trainer_eval.main(args)


def _clip_shape(cfg) -> list[int]:
    """One float clip as the config's test protocol shapes it: (1, T, 3N, S, S)."""
    return [1, cfg.test.segments, 3 * cfg.data.frames_per_segment, cfg.test.crop, cfg.test.crop]


def _pixel_shape(cfg) -> list[int]:
    """The same clip as uint8 pixels: (1, T, N, S, S, 3)."""
    return [1, cfg.test.segments, cfg.data.frames_per_segment, cfg.test.crop, cfg.test.crop, 3]


def test_preprocess_writes_every_video_once(run, tiny_h264_records):
    meta, work = run["meta"], run["work"]
    labels = np.load(work / LABELS_FILE)
    assert meta["videos"] == len(labels) == 12  # the tiny val split, padding excluded
    assert len(meta["files"]) == CLIPS_PER_VIDEO * meta["videos"]
    assert len(set(meta["video_ids"])) == meta["videos"]
    assert meta["clip_shape"] == _pixel_shape(run["cfg"])
    assert run["float_meta"]["clip_shape"] == _clip_shape(run["cfg"])
    assert sorted(np.bincount(labels).tolist()) == [3, 3, 3, 3]
    assert (work / NAMES_FILE).read_text() == tiny_h264_records.labels.read_text()
    assert meta["dtype"] == "uint8" and run["float_meta"]["dtype"] == "float32"
    assert {k: v for k, v in run["float_meta"].items() if k not in ("dtype", "clip_shape")} == \
        {k: v for k, v in meta.items() if k not in ("dtype", "clip_shape")}


def test_preprocess_again_into_its_folder_leaves_only_the_new_clips(run, tmp_path):
    """Another protocol into the same --out: the clips of the first are gone, so a package
    made from the folder holds one build (two runs once left 96 stale clips there); a data
    folder that no preprocess wrote is refused, untouched."""
    work = tmp_path / "work"
    first = preprocess(run["cfg"], work)
    second = preprocess(Config(run["cfg"], test=Config(run["cfg"].test, clips=1)), work)
    assert len(first["files"]) == CLIPS_PER_VIDEO * len(second["files"])
    assert sorted(p.name for p in (work / DATA_DIR).iterdir()) == sorted(second["files"])
    foreign = tmp_path / "foreign"
    (foreign / DATA_DIR).mkdir(parents=True)
    (foreign / DATA_DIR / "mine.txt").write_text("not a clip")
    with pytest.raises(ValueError, match=r"exists and no trainer.infer310.preprocess wrote it"):
        preprocess(run["cfg"], foreign)
    assert (foreign / DATA_DIR / "mine.txt").is_file()


def test_uint8_clips_are_the_float_clips_before_normalization(run):
    """Same videos, frames and crop: only the normalization and the channel layout moved."""
    pixels = _read_clips(run["work"], run["meta"]).astype(np.float64)   # (V, T, N, S, S, 3)
    v, t, n, h, w, c = pixels.shape
    pixels = pixels.transpose(0, 1, 2, 5, 3, 4).reshape(v, t, n * c, h, w)
    mean = np.tile(MEAN, n)[:, None, None]
    std = np.tile(STD, n)[:, None, None]
    floats = _read_clips(run["float_work"], run["float_meta"])
    np.testing.assert_allclose((pixels / 255.0 - mean) / std, floats, rtol=0, atol=1e-5)


def test_uint8_padding_rows_batch_with_uint8_clips():
    """A padded row (num_frames 0, sharded eval) must have the clips' dtype to batch with them."""
    op = EvalClips(ClipSampler(4, 3), ClipDecoder(64, 56, normalize=False), 2, "records/x/val")
    offsets = np.zeros(1, np.int64)
    clip, _, mask, _, problem = op(np.zeros(1, "S1"), offsets, 0, -1, "",
                                   sample_checksum("", -1, offsets, b"\x00"))
    assert clip.dtype == np.uint8 and clip.shape == (2, 4, 3, 56, 56, 3) and mask == 0 and problem == ""


def test_preprocess_refuses_an_altered_video(altered_records, tmp_path):
    cfg = load_config(REPO / "configs/demo.yaml", [f"data.root={altered_records}",
                                                   "data.val_split=val_altered"])
    with pytest.raises(ValueError, match=rf"^video {altered_records.val_frame_flipped}: checksum "
                                         rf"mismatch: metrics are not computed on altered data"):
        preprocess(cfg, tmp_path)


def test_uint8_clips_are_4x_smaller(run):
    def sizes(work: Path, meta: dict) -> list[int]:
        return [(work / DATA_DIR / name).stat().st_size for name in meta["files"]]

    small, big = sizes(run["work"], run["meta"]), sizes(run["float_work"], run["float_meta"])
    assert set(small) == {int(np.prod(_pixel_shape(run["cfg"])))}
    assert [4 * s for s in small] == big


def test_uint8_export_matches_float_export(run):
    """The graph's own normalization gives the logits of host-normalized float clips."""
    assert json.loads((run["export"] / f"{MODEL}.json").read_text())["input_dtype"] == "uint8"
    uint8_graph = ms.nn.GraphCell(ms.load(str(run["export"] / MODEL)))
    float_graph = ms.nn.GraphCell(ms.load(str(run["float_export"] / MODEL)))
    pixels = _read_clips(run["work"], run["meta"])
    floats = _read_clips(run["float_work"], run["float_meta"])
    got = np.concatenate([uint8_graph(ms.Tensor(clip[None])).asnumpy() for clip in pixels])
    want = np.concatenate([float_graph(ms.Tensor(clip[None])).asnumpy() for clip in floats])
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))


def test_runner_reproduces_the_network(run):
    meta, work = run["meta"], run["work"]
    results = np.stack([np.fromfile(work / RESULT_DIR / result_name(name), np.float32)
                        for name in meta["files"]])
    # the graph normalizes in float32 as x·scale + bias, the host as (x/255 − mean)/std
    assert np.abs(results - run["logits"]).max() <= 1e-5 * np.abs(run["logits"]).max()
    assert len(set(results.argmax(axis=1).tolist())) > 1  # the comparison below can fail
    assert re.search(rf"clips={len(meta['files'])} seconds=[\d.]+ clips_per_s=[\d.]+",
                     run["runner_out"])


def _correct_by_hand(logits: np.ndarray, labels: np.ndarray) -> tuple[int, np.ndarray]:
    """Videos whose mean clip softmax ranks the label first, in plain numpy (not
    trainer.scoring, which both postprocess and trainer.eval call), and the predictions."""
    per_video = logits.astype(np.float64).reshape(len(labels), CLIPS_PER_VIDEO, -1)
    exp = np.exp(per_video - per_video.max(axis=2, keepdims=True))
    predicted = (exp / exp.sum(axis=2, keepdims=True)).mean(axis=1).argmax(axis=1)
    return int((predicted == labels).sum()), predicted


def test_top1_equals_trainer_eval(run, evaluated):
    labels = np.load(run["work"] / LABELS_FILE)
    correct, predicted = _correct_by_hand(run["logits"], labels)
    # A rule scoring one clip per video would predict otherwise: the comparison can fail.
    clip_zero = run["logits"].reshape(len(labels), CLIPS_PER_VIDEO, -1)[:, 0].argmax(axis=1)
    assert (clip_zero != predicted).any()
    post = top1(run["work"])
    assert post["tot"] == evaluated["videos"] == len(labels)
    assert post["top1_correct"] == correct == round(evaluated["top1"] * evaluated["videos"])
    assert post["acc"] == pytest.approx(evaluated["top1"], abs=1e-12)
    assert run["post_line"] == summary_line(post)


def test_postprocess_without_results_is_one_line_error(run, tmp_path, capsys):
    (tmp_path / META_NAME).write_text((run["work"] / META_NAME).read_text())
    np.save(tmp_path / LABELS_FILE, np.load(run["work"] / LABELS_FILE))
    assert run_module(postprocess_cli, ["--work", tmp_path]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {2 * 12} of {2 * 12} results missing")


def test_runner_rejects_mismatched_export(run, tmp_path):
    exported = _pixel_shape(run["cfg"])
    other = dict(read_meta(run["work"]), clip_shape=exported[:3] + [exported[3] + 8] * 2 + [3])
    (tmp_path / META_NAME).write_text(json.dumps(other))
    with pytest.raises(ValueError, match=re.escape(f"takes input {exported}")):
        run_clips(run["export"] / MODEL, tmp_path)


def test_runner_rejects_float_clips_for_a_uint8_export(run, capsys):
    assert run_module(runner_cli, ["--model", run["export"] / MODEL,
                                   "--work", run["float_work"]]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {run['export'] / MODEL} takes uint8 clips but the clips are float32: rerun "
        f"trainer.infer310.preprocess without --float-input, or export with --input float32"]


def test_runner_rejects_non_mindir(run):
    with pytest.raises(ValueError, match="must be a .mindir"):
        run_clips(run["export"] / f"{MODEL}.json", run["work"])


def test_package_refuses_to_replace_another_folder(run, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert run_module(package_cli, ["--model", run["export"] / MODEL, "--work", run["work"],
                                    "--out", tmp_path]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {tmp_path} exists and is not a package")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_package_holds_model_clips_and_code(run):
    package = run["package"]
    assert sorted(p.relative_to(package / "lib") for p in (package / "lib").rglob("*.py")) == \
        source_files()
    assert (package / "model" / MODEL).read_bytes() == (run["export"] / MODEL).read_bytes()
    assert sorted(p.name for p in (package / "work" / DATA_DIR).iterdir()) == \
        sorted(run["meta"]["files"])
    pin = [line for line in (REPO / "requirements.txt").read_text().splitlines()
           if line.startswith("numpy==")]
    assert pin and pin[0] in (package / "requirements-310.txt").read_text().splitlines()


def _distribution_closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """``names`` and everything their Requires-Dist pulls in (extras off), as installed here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def _fresh_venv(root: Path) -> Path:
    """A venv holding only FRESH_VENV_DISTRIBUTIONS and their dependencies, symlinked from this
    one (installing MindSpore costs ~70 s and 2.8 GB); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], check=True, capture_output=True,
                               text=True).stdout.strip())
    for dist in _distribution_closure(FRESH_VENV_DISTRIBUTIONS):
        # import packages, modules, <name>.libs and the .dist-info; ".." entries are scripts
        for top in {Path(f).parts[0] for f in dist.files} - {"..", "__pycache__"}:
            if not (site / top).exists():
                (site / top).symlink_to(Path(dist.locate_file(top)).resolve())
    return python


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> dict:
    """The fresh venv's python and a clean environment for it (no PYTHONPATH)."""
    python = _fresh_venv(tmp_path_factory.mktemp("fresh") / "venv")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{python.parent}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return {"python": python, "env": env}


def test_fresh_venv_lacks_the_training_dependencies(fresh_venv, tmp_path):
    probe = ("import importlib.util, json, sys; "
             "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))")
    modules = ("numpy", "mindspore", *ABSENT_MODULES)
    done = subprocess.run([str(fresh_venv["python"]), "-c", probe, *modules], cwd=tmp_path,
                          env=fresh_venv["env"], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    assert found == {m: m in ("numpy", "mindspore") for m in modules}


def test_package_runs_in_a_fresh_venv_and_gives_the_eval_top1(run, evaluated, fresh_venv,
                                                            tmp_path):
    """Host 2: only the package folder and numpy + MindSpore, started from another directory."""
    env = dict(fresh_venv["env"], PYTHON=str(fresh_venv["python"]))
    done = subprocess.run(["bash", str(run["package"] / "run.sh"), "CPU"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    correct = round(evaluated["top1"] * evaluated["videos"])
    assert line == (f"top1_correct={correct}, tot={evaluated['videos']}, "
                    f"acc={evaluated['top1']:.4f}")
    assert line == run["post_line"]


def test_package_run_fails_on_a_bad_device(run, fresh_venv, tmp_path):
    env = dict(fresh_venv["env"], PYTHON=str(fresh_venv["python"]))
    done = subprocess.run(["bash", str(run["package"] / "run.sh"), "GPU"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "invalid choice: 'GPU'" in done.stderr
    assert "top1_correct" not in done.stdout
