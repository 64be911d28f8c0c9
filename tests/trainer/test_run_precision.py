"""One resolved precision per run (issue 23): a run records the amp level it trained with, and
eval, export (so the 310 package) and a resume of it build that level on any host unless the
command names a level itself.

The run trains one tiny epoch in O2 on CPU (where ``auto`` would be O0), so a command that
resolved ``auto`` on this host again would build float32: the configs below say ``auto``, as
configs/demo.yaml does."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import trainer.eval
import trainer.export
import trainer.precision
import trainer.train
from trainer.config import load_config
from trainer.exported import read_metadata
from trainer.precision import inference_network, recorded_config
from trainer.rundir import RunDir
from trainer.train import train

from tests.trainer.conftest import DEMO, logged
from tests.trainer.inprocess import run_module

pytestmark = pytest.mark.slow   # trains a tiny run (one O2 step), exports once

# Eager (no graph compile for one step), the smallest width; one step of the 16 train clips
# (an O2 step takes ~5 s on CPU whatever its size).
TINY = ["model.width=4", "mode=pynative", "data.batch_size=16", "train.warmup_epochs=0",
        "train.log_interval=2", "train.eval_interval=100"]


def _overrides(records, out) -> list[str]:
    return [f"data.root={records}", f"train.output_dir={out}", *TINY]


def _level(net) -> str:
    """O2 when auto_mixed_precision cast the convolutions to float16, else O0 (float32)."""
    types = {getattr(cell, "mixed_precision_type", None) for _, cell in net.cells_and_names()}
    return "O2" if any(t is not None and t.name == "FP16" for t in types) else "O0"


@pytest.fixture(scope="module")
def o2_run(tiny_records, tmp_path_factory) -> RunDir:
    """The demo config trained one epoch with an explicit O2 on CPU."""
    out = tmp_path_factory.mktemp("runs")
    train(load_config(DEMO, [*_overrides(tiny_records, out), "name=o2", "train.epochs=1",
                             "train.amp_level=O2"]))
    return RunDir(out / "o2")


def _auto_config(tiny_records, run: RunDir, *overrides: str):
    """The config a user hands eval or export: amp_level left at the demo's ``auto``."""
    return load_config(DEMO, [*_overrides(tiny_records, run.path.parent), "name=o2", *overrides])


def test_a_run_records_the_level_it_trained_with(o2_run, tiny_records):
    assert yaml.safe_load(o2_run.config.read_text())["train"]["amp_level"] == "O2"
    assert o2_run.trained_amp_level() == "O2"
    # auto is saved as what it resolved to here: float32 on this CPU host
    auto = _auto_config(tiny_records, o2_run)
    assert auto.train.amp_level == "auto" and recorded_config(auto).train.amp_level == "O0"


def _spy_inference_network(monkeypatch) -> list:
    """The networks the command under test builds through trainer.precision.inference_network."""
    built = []

    def spy(*args, **kwargs):
        built.append(inference_network(*args, **kwargs))
        return built[-1]
    monkeypatch.setattr(trainer.precision, "inference_network", spy)
    return built


@pytest.mark.parametrize("override, expected", [([], "O2"), (["train.amp_level=O0"], "O0")])
def test_eval_builds_the_run_level_unless_overridden(o2_run, tiny_records, monkeypatch, override,
                                                     expected):
    built = _spy_inference_network(monkeypatch)
    args = ["--config", DEMO, "--ckpt", o2_run.best_weights,
            *_overrides(tiny_records, o2_run.path.parent), *override]
    assert run_module(trainer.eval, args) == 0
    assert [_level(net) for net in built] == [expected]


def test_every_checkpoint_of_the_run_is_of_the_run(o2_run, tiny_records, tmp_path):
    """An epoch checkpoint (checkpoints/) is of the run; a copy outside any run folder is not,
    nor one in a folder whose config.yaml records only auto (written before runs recorded it)."""
    cfg = _auto_config(tiny_records, o2_run)
    assert _level(inference_network(cfg, o2_run.latest_checkpoint())) == "O2"
    alone = Path(shutil.copy(o2_run.best_weights, tmp_path / "best.ckpt"))
    assert _level(inference_network(cfg, alone)) == "O0"
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(o2_run.best_weights, old / "best.ckpt")
    (old / "config.yaml").write_text(o2_run.config.read_text().replace("amp_level: O2",
                                                                       "amp_level: auto"))
    with logged("trainer.precision") as messages:
        assert _level(inference_network(cfg, old / "best.ckpt")) == "O0"
    assert any("records train.amp_level=auto" in m for m in messages), messages


def test_export_records_the_run_level(o2_run, tiny_records, tmp_path):
    """The 310 package ships this export and its JSON (make package-310)."""
    args = ["--config", DEMO, "--ckpt", o2_run.best_weights, "--input", "uint8", "--out", tmp_path,
            *_overrides(tiny_records, o2_run.path.parent)]
    assert run_module(trainer.export, args) == 0
    meta = read_metadata(tmp_path / "stnet_b1.mindir")
    assert (meta["amp_level"], meta["config"]["train"]["amp_level"]) == ("O2", "O2")


class _Built(Exception):
    """Stops train() once it has built its network."""


def test_a_resumed_run_keeps_its_level(o2_run, tiny_records, tmp_path, monkeypatch):
    """Resumed with the demo's auto, the run goes on in O2: train() casts the network it hands
    the train step so (stopped there: the level is all this checks)."""
    shutil.copytree(o2_run.path, tmp_path / "o2")
    built = []

    def stop(net, cfg, lr):
        built.append(_level(net))
        raise _Built
    monkeypatch.setattr(trainer.train, "build_train_cell", stop)
    with pytest.raises(_Built):
        train(load_config(DEMO, [*_overrides(tiny_records, tmp_path), "name=o2", "train.epochs=2",
                                 "train.resume=auto"]))
    assert built == ["O2"]


@pytest.mark.parametrize("device, level, asked", [("Ascend", "O0", True), ("Ascend", "O2", False),
                                                  ("CPU", "O0", False)])
def test_o0_on_ascend_asks_cann_to_keep_float32_where_the_level_is_final(monkeypatch, device, level, asked):
    """The first 910's default precision mode runs float32 matrix operators in float16; O0 asks
    for must_keep_origin_dtype when the network is cast, after a run's level replaced auto."""
    import mindspore as ms
    from mindspore import nn
    modes: list[str] = []
    monkeypatch.setattr(trainer.precision, "resolve_device_target", lambda cfg: device)
    monkeypatch.setattr(ms.device_context.ascend.op_precision, "precision_mode", modes.append)
    trainer.precision.cast_network(nn.Dense(2, 2), load_config(DEMO, [f"train.amp_level={level}"]))
    assert modes == (["must_keep_origin_dtype"] if asked else [])
