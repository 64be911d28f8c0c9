"""trainer.export on a freshly initialized tiny StNet: real MINDIR/ONNX files, reloaded and run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

import trainer.export
from datatools.schema import read_labels
from trainer.config import load_config
from trainer.export import export_network, input_shape, parse_batch
from trainer.exported import metadata_path, read_metadata, sha256_file
from trainer.model import create_model
from trainer.runtime import init_runtime

from tests.trainer.inprocess import run_module

REPO = Path(__file__).resolve().parents[2]
# PyNative: the reference logits run eagerly (no graph compile per input shape); ms.export and
# GraphCell compile their own graphs whatever the mode.
TINY = ["model.width=8", "mode=pynative"]


pytestmark = pytest.mark.slow   # export compiles


@pytest.fixture(scope="module")
def cfg(tiny_records):
    cfg = load_config(REPO / "configs/demo.yaml", TINY + [f"data.root={tiny_records.root}"])
    init_runtime(cfg)
    return cfg


@pytest.fixture(scope="module")
def net(cfg):
    ms.set_seed(0)
    net = create_model(cfg)
    net.set_train(False)
    return net


@pytest.fixture(scope="module")
def clips(cfg):
    shape = input_shape(cfg, 3)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _graph(path: Path) -> ms.nn.GraphCell:
    return ms.nn.GraphCell(ms.load(str(path)))


@pytest.fixture(scope="module")
def b1_export(cfg, net, tmp_path_factory) -> tuple[Path, Path]:
    """(out_dir, file) of one batch-1 MINDIR export, read by the tests below (each export
    compiles a graph)."""
    out_dir = tmp_path_factory.mktemp("b1")
    return out_dir, export_network(net, cfg, "MINDIR", batch=1, out_dir=out_dir, checkpoint="fresh.ckpt")


def test_mindir_round_trip_is_exact(net, clips, b1_export):
    out_dir, path = b1_export
    assert path == out_dir / "stnet_b1.mindir"
    one = ms.Tensor(clips[:1])
    np.testing.assert_array_equal(_graph(path)(one).asnumpy(), net(one).asnumpy())


def test_metadata_describes_the_file(cfg, tiny_records, b1_export):
    path = b1_export[1]
    meta = json.loads(metadata_path(path).read_text())
    assert meta["sha256"] == sha256_file(path)
    assert meta["bytes"] == path.stat().st_size
    assert meta["input_shape"] == [1, cfg.test.segments, 3 * cfg.data.frames_per_segment,
                                   cfg.test.crop, cfg.test.crop]
    assert meta["classes"] == read_labels(tiny_records.labels)
    assert meta["config"]["model"]["width"] == 8
    assert meta["checkpoint"] == "fresh.ckpt"


def test_dynamic_batch_runs_one_and_three(cfg, net, clips, tmp_path):
    path = export_network(net, cfg, "MINDIR", batch=None, out_dir=tmp_path)
    assert read_metadata(path)["input_shape"][0] is None
    graph = _graph(path)
    for batch in (1, 3):
        x = ms.Tensor(clips[:batch])
        out = graph(x).asnumpy()
        assert out.shape == (batch, cfg.model.num_classes)
        np.testing.assert_array_equal(out, net(x).asnumpy())


def test_onnx_matches_onnxruntime(cfg, net, clips, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export_network(net, cfg, "ONNX", batch=1, out_dir=tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: clips[:1]})[0]
    want = net(ms.Tensor(clips[:1])).asnumpy()
    # A fresh net's logits reach ~1e3 (BN still has unit statistics): 1e-4 of that scale.
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_onnx_refuses_dynamic_batch(cfg, net, tmp_path):
    with pytest.raises(ValueError, match="dynamic"):
        export_network(net, cfg, "ONNX", batch=None, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text", ["0", "-2", "two", ""])
def test_bad_batch_is_rejected(text):
    with pytest.raises(ValueError, match="--batch"):
        parse_batch(text)


def test_parse_batch():
    assert parse_batch("dynamic") is None
    assert parse_batch("4") == 4


def test_air_off_ascend_is_one_line_error(tmp_path):
    """The one real ``python -m trainer.export`` start (the other CLI paths run in-process)."""
    ckpt = tmp_path / "none.ckpt"
    ckpt.write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "trainer.export", "--config", "configs/demo.yaml",
                           "--ckpt", str(ckpt), "--format", "AIR", "--out", str(tmp_path)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --format AIR needs device_target=Ascend (MindSpore writes AIR only on Ascend), "
        "got 'CPU'; use MINDIR or ONNX here"]


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    assert run_module(trainer.export, ["--config", REPO / "configs/demo.yaml",
                                       "--ckpt", tmp_path / "gone.ckpt"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --ckpt not found: {tmp_path / 'gone.ckpt'}"
