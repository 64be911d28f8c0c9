"""Fine-tuning: train.head_lr_mult steps the classifier at a multiple of the schedule, only it;
the demo model fine-tunes to another class count."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from trainer.config import load_config
from trainer.rundir import RunDir
from trainer.train_step import build_train_cell, run_step

from tests.trainer.conftest import FINETUNE_VAL_PER_CLASS
from tests.trainer.test_config import DEMO
from tests.trainer.test_train_step import SETTINGS, ShallowStNet, _batch

pytestmark = [pytest.mark.usefixtures("eager_mode"), pytest.mark.slow]   # learned_run, fine-tuning runs

LR = np.full(4, 0.05, np.float32)


def _updates(mult: float) -> dict[str, np.ndarray]:
    cfg = load_config(DEMO, [*SETTINGS, "train.amp_level=O0", f"train.head_lr_mult={mult}"])
    ms.set_seed(0)
    net = ShallowStNet()
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    run_step(build_train_cell(net, cfg, LR), *_batch())
    return {p.name: p.asnumpy() - before[p.name] for p in net.trainable_params()}


def test_head_lr_mult_scales_the_classifier_update_only():
    plain, boosted = _updates(1.0), _updates(10.0)
    for name in plain:
        ratio = np.linalg.norm(boosted[name]) / max(np.linalg.norm(plain[name]), 1e-30)
        expected = 10.0 if name.startswith("fc.") else 1.0
        assert abs(ratio - expected) < 1e-3 * expected, (name, ratio)


def test_the_demo_model_fine_tunes_from_4_to_2_classes(finetuned_run):
    """The 4-class demo checkpoint as model.pretrained of a 2-class set: the classifier is named
    as freshly initialised, the rest loaded, and the fine-tuning run trains and saves."""
    assert sum("classifier fc.bias, fc.weight freshly initialised: the checkpoint classifies 4 "
               "classes, the network 2" in m for m in finetuned_run.messages) == 1, finetuned_run.messages
    assert finetuned_run.metrics["videos"] == 2 * FINETUNE_VAL_PER_CLASS
    windows, _ = RunDir(finetuned_run.run_dir).read_log()
    assert len(windows) == 6 and all(np.isfinite(w["loss"]) for w in windows)
    best = ms.load_checkpoint(str(finetuned_run.run_dir / "best.ckpt"))
    assert best["fc.weight"].shape[0] == 2
    tuned = best["layer1.0.conv1.weight"].asnumpy()
    pretrained = ms.load_checkpoint(str(finetuned_run.pretrained))["layer1.0.conv1.weight"].asnumpy()
    assert not np.array_equal(tuned, pretrained)                              # trained
    assert np.abs(tuned - pretrained).max() < 0.1 * np.abs(pretrained).max()   # started from it
