"""Fine-tuning: train.head_lr_mult steps the classifier at a multiple of the schedule, only it."""
from __future__ import annotations

import mindspore as ms
import numpy as np

from trainer.config import load_config
from trainer.train_step import build_train_cell, run_step

from tests.trainer.test_config import DEMO
from tests.trainer.test_train_step import SETTINGS, ShallowStNet, _batch

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
