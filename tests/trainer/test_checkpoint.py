"""Weight loading that explains itself: optimizer state filtered, wrong variant/classes/architecture
named in one line, the model zoo's training checkpoint loaded exactly."""
from __future__ import annotations

import logging

import mindspore as ms
import numpy as np
import pytest

from trainer.checkpoint import load_weights
from trainer.model import StNet

from tests.trainer.test_pretrained import MS_BN, _resnet50_shapes, _save_ckpt, model_zoo_stnet_shapes


def _tiny(xception: str = "dense", num_classes: int = 4, frames: int = 2) -> StNet:
    return StNet(num_classes=num_classes, frames_per_segment=frames, width=8, xception=xception)


def _save_net(net: StNet, path) -> None:
    ms.save_checkpoint(net, str(path))


def test_model_zoo_training_checkpoint_loads_and_reports_optimizer_state(tmp_path, caplog):
    """The reference's 301 names plus what its ModelCheckpoint adds (Momentum moments, lr,
    global step, loss scale): every network tensor lands in its own parameter, nothing else."""
    shapes = model_zoo_stnet_shapes(num_classes=400, frames_per_segment=5)
    arrays = {k: np.full(s, i, np.float32) for i, (k, s) in enumerate(shapes.items())}
    trainable = [k for k in shapes if not k.endswith(("moving_mean", "moving_variance"))]
    optimizer = {f"moments.{k}": np.zeros(shapes[k], np.float32) for k in trainable}
    optimizer.update(learning_rate=np.float32(0.01), momentum=np.float32(0.9),
                     global_step=np.int32(60 * 1875), scale_sense=np.float32(1024.0))
    path = tmp_path / "stnet_ascend_v1100_kinetics400_research_cv_acc69.16.ckpt"
    _save_ckpt({**arrays, **optimizer}, path)
    del arrays, optimizer
    net = StNet(num_classes=400, frames_per_segment=5, xception="dense")
    with caplog.at_level(logging.INFO, logger="trainer.checkpoint"):
        load_weights(net, path)
    values = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert sorted(values) == sorted(shapes)
    wrong = [k for i, k in enumerate(shapes) if not np.all(values[k] == i)]
    assert not wrong, f"{len(wrong)} parameters hold another tensor, e.g. {wrong[:3]}"
    report = [r.getMessage() for r in caplog.records if "not network parameters" in r.getMessage()]
    assert len(report) == 1 and f"{len(trainable) + 4} entries" in report[0], report
    assert f"moments.* ({len(trainable)})" in report[0] and "global_step" in report[0]


@pytest.mark.parametrize("saved, built", [("dense", "depthwise"), ("depthwise", "dense")])
def test_other_xception_variant_names_the_setting(tmp_path, saved, built):
    path = tmp_path / f"{saved}.ckpt"
    _save_net(_tiny(saved), path)
    with pytest.raises(ValueError, match=rf"xception\.att_conv\.weight is \(\d+, \d+, 3, 1\) in the "
                                         rf"checkpoint but \(\d+, \d+, 3, 1\) in the network: .*"
                                         rf"set model\.xception={saved}$"):
        load_weights(_tiny(built), path)


def test_other_class_count_names_key_shapes_and_setting(tmp_path):
    path = tmp_path / "k400.ckpt"
    _save_net(_tiny(num_classes=7), path)
    with pytest.raises(ValueError, match=r"fc\.weight is \(7, 128\) in the checkpoint but \(4, 128\) "
                                         r"in the network: .*set model\.num_classes=7"):
        load_weights(_tiny(num_classes=4), path)


def test_other_frames_per_segment_names_the_setting(tmp_path):
    path = tmp_path / "n5.ckpt"
    _save_net(_tiny(frames=5), path)
    with pytest.raises(ValueError, match=r"set data\.frames_per_segment=5"):
        load_weights(_tiny(frames=2), path)


def test_imagenet_resnet_as_ckpt_points_to_model_pretrained(tmp_path):
    path = tmp_path / "resnet50_imagenet.ckpt"
    shapes = _resnet50_shapes(8, 3, MS_BN, "down_sample_layer")
    shapes.update({"end_point.weight": (1000, 256), "end_point.bias": (1000,)})
    _save_ckpt({k: np.zeros(s, np.float32) for k, s in shapes.items()}, path)
    with pytest.raises(ValueError, match=rf"is a 2D ImageNet ResNet checkpoint, not an StNet one: "
                                         rf"initialise training from it with model\.pretrained={path}"):
        load_weights(_tiny(), path)
