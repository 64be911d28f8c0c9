"""Learning-rate schedules: the reference step decay, warmup and cosine."""
import numpy as np
import pytest

from trainer.config import ConfigError, load_config
from trainer.schedule import build_lr

from tests.trainer.test_config import RECIPE


def test_reference_step_decay():
    lr = build_lr(load_config(RECIPE).train, steps_per_epoch=10, global_batch=128)
    assert lr.shape == (600,) and lr.dtype == np.float32
    np.testing.assert_allclose(lr[[0, 199, 200, 399, 400, 599]], [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4],
                               rtol=1e-6)


def test_warmup_then_cosine():
    train = load_config(RECIPE, ["train.lr_schedule=cosine", "train.warmup_epochs=2", "train.epochs=10"]).train
    lr = build_lr(train, steps_per_epoch=5, global_batch=128)
    np.testing.assert_allclose(lr[:10], 0.01 * np.arange(1, 11) / 10, rtol=1e-6)
    assert lr[10] == pytest.approx(0.01) and np.all(np.diff(lr[10:]) <= 0) and lr[-1] < 1e-4


def test_bad_schedule_and_empty_epoch():
    """build_lr refuses what it cannot schedule even past the config check (a Config edited in
    code), and load_config refuses the same value first."""
    train = load_config(RECIPE).train
    train["lr_schedule"] = "poly"
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \('step', 'cosine'\), got 'poly'"):
        build_lr(train, 10, 128)
    with pytest.raises(ConfigError, match=r"train.lr_schedule must be one of step\|cosine, got 'poly'"):
        load_config(RECIPE, ["train.lr_schedule=poly"])
    with pytest.raises(ValueError, match="at least one step"):
        build_lr(load_config(RECIPE).train, 0, 128)


def test_lr_follows_the_global_batch_unless_told_not_to():
    """The recipe's 0.01 is for 8 devices x 16 clips: 2 devices x 16 train at a quarter of it,
    and train.scale_lr=false keeps the lr as given."""
    train = load_config(RECIPE).train
    assert build_lr(train, 10, global_batch=32)[0] == pytest.approx(0.0025)
    assert build_lr(train, 10, global_batch=256)[0] == pytest.approx(0.02)
    fixed = load_config(RECIPE, ["train.scale_lr=false"]).train
    assert build_lr(fixed, 10, global_batch=32)[0] == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="train.lr_batch"):
        load_config(RECIPE, ["train.lr_batch=0"])
