"""Loss-scaled mixed precision on CPU: the O2 update is the O0 update, overflows are skipped.

The update comparison uses a shallow net built from StNet's own cells (conv + BN stem, a
temporal block, a classifier): in a freshly initialised 50-layer StNet in training mode, float16
rounding compounds through 16 batch-normalised blocks (logits differ by ~25% between O0 and O2
on the same weights), which would hide the scale error this test is for.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from trainer.config import ConfigError, load_config
from trainer.data import IGNORE_LABEL
from trainer.model import TemporalBlock
from trainer.precision import amp_level, cast_network
from trainer.train_step import MaskedCrossEntropy, build_train_cell, run_step

from tests.trainer.test_config import DEMO

pytestmark = pytest.mark.usefixtures("eager_mode")

SEGMENTS, CLASSES = 3, 4
SETTINGS = ["train.weight_decay=0.0", f"model.num_classes={CLASSES}"]
LR = np.full(4, 0.05, np.float32)


class ShallowStNet(nn.Cell):
    """conv1/bn1 stem, one temporal block over T, spatial mean, max over T, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(6, 16, 3, stride=2, pad_mode="pad", padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.temp1 = TemporalBlock(16)
        self.fc = nn.Dense(16, CLASSES)

    def construct(self, x):
        batch, segments, channels, height, width = x.shape
        x = self.relu(self.bn1(self.conv1(x.reshape(-1, channels, height, width))))
        x = self.temp1(x, segments).mean(axis=(2, 3))
        return self.fc(x.reshape(batch, segments, -1).max(axis=1))


def _batch(labels=(0, 1, 2, 3)):
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((4, SEGMENTS, 6, 32, 32)).astype(np.float32)
    return ms.Tensor(clip), ms.Tensor(np.array(labels, np.int32))


def _one_step(*overrides, labels=(0, 1, 2, 3)):
    """Weights before and after one step of a freshly seeded shallow net, and the step result."""
    cfg = load_config(DEMO, [*SETTINGS, *overrides])
    ms.set_seed(0)
    net = ShallowStNet()
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    net = cast_network(net, cfg)
    cell = build_train_cell(net, cfg, LR)
    result = run_step(cell, *_batch(labels))
    after = {p.name: p.asnumpy() for p in net.trainable_params()}
    return before, after, result


def _update(before, after):
    return np.concatenate([(after[k] - before[k]).ravel() for k in sorted(before)])


@pytest.mark.parametrize("manager", ["dynamic", "fixed"])
def test_o2_update_equals_o0_update(manager):
    before, after_o0, _ = _one_step("train.amp_level=O0")
    before_o2, after_o2, result = _one_step("train.amp_level=O2", f"train.loss_scale_manager={manager}",
                                            "train.loss_scale=1024.0")
    assert all(np.array_equal(before[k], before_o2[k]) for k in before)   # same start
    o0, o2 = _update(before, after_o0), _update(before, after_o2)
    assert np.linalg.norm(o0) > 0
    ratio = np.linalg.norm(o2) / np.linalg.norm(o0)
    error = np.linalg.norm(o2 - o0) / np.linalg.norm(o0)
    assert not result.skipped and result.loss_scale == 1024.0
    print(f"O2/O0 update norm ratio {ratio:.4f}, relative difference {error:.4f}")
    assert abs(ratio - 1) < 0.02 and error < 0.05, (ratio, error)   # float16 forward/backward


def test_overflowing_step_is_skipped_and_the_dynamic_scale_halves():
    before, after, result = _one_step("train.amp_level=O2", "train.loss_scale=3.0e38")
    assert result.skipped and np.isfinite(result.loss)
    assert result.loss_scale == pytest.approx(1.5e38)
    assert all(np.array_equal(before[k], after[k]) for k in before)   # no update applied


def test_o0_step_reports_no_scaling():
    _, _, result = _one_step("train.amp_level=O0")
    assert not result.skipped and result.loss_scale == 1.0 and np.isfinite(result.loss)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_the_mean_over_the_samples_the_loader_did_not_flag(smoothing):
    logits = ms.Tensor(np.random.default_rng(0).standard_normal((4, CLASSES)).astype(np.float32))
    flagged = ms.Tensor(np.array([0, IGNORE_LABEL, 2, 3], np.int32))
    kept = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits[ms.Tensor([0, 2, 3])],
                                                          ms.Tensor(np.array([0, 2, 3], np.int32)))
    loss = MaskedCrossEntropy(smoothing)
    assert float(loss(logits, flagged).asnumpy()) == pytest.approx(float(kept.asnumpy()), rel=1e-6)
    assert float(loss(logits, ms.Tensor(np.full(4, IGNORE_LABEL, np.int32))).asnumpy()) == 0.0


def test_a_batch_of_flagged_samples_updates_nothing():
    """Loss 0 and zero gradients, where nn.CrossEntropyLoss's mean over no sample is NaN and
    would have put NaN into every weight."""
    before, after, result = _one_step("train.amp_level=O0", labels=(IGNORE_LABEL,) * 4)
    assert result.loss == 0.0
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_auto_precision_is_float32_on_cpu_and_o2_on_ascend():
    assert amp_level(load_config(DEMO, ["device_target=CPU"])) == "O0"
    assert amp_level(load_config(DEMO, ["device_target=Ascend"])) == "O2"
    assert amp_level(load_config(DEMO, ["device_target=CPU", "train.amp_level=O2"])) == "O2"


@pytest.mark.parametrize("override, message", [
    ("train.amp_level=O5", "train.amp_level must be one of auto|O0|O1|O2|O3"),
    ("train.loss_scale_manager=static", "train.loss_scale_manager must be one of dynamic|fixed"),
    ("train.loss_scale=0.5", "train.loss_scale must be >= 1"),
])
def test_bad_precision_settings_are_config_errors_at_load(override, message):
    with pytest.raises(ConfigError, match=message):   # at load time, before any network is built
        load_config(DEMO, [*SETTINGS, "train.amp_level=O2", override])


def test_inference_network_runs_the_trained_precision(tmp_path):
    """eval/export/predict build the network as training cast it: O2 logits, not float32 ones."""
    from trainer.checkpoint import save_weights
    from trainer.model import create_model
    from trainer.precision import inference_network

    overrides = ["model.width=8", "data.frames_per_segment=2", "train.amp_level=O2"]
    cfg = load_config(DEMO, overrides)
    ms.set_seed(0)
    trained = cast_network(create_model(cfg), cfg)
    trained.set_train(False)
    save_weights(trained, tmp_path / "w.ckpt", epoch=1)
    clip = _batch()[0]
    expected = trained(clip).asnumpy()
    loaded = inference_network(cfg, tmp_path / "w.ckpt", pixels=False)(clip).asnumpy()
    fp32 = inference_network(load_config(DEMO, overrides[:2]), tmp_path / "w.ckpt", pixels=False)(clip).asnumpy()
    assert loaded.dtype == np.float32 and np.array_equal(loaded, expected)
    assert not np.array_equal(fp32, expected)   # the cast is visible: the test can fail
