"""Weight loading that explains itself: optimizer state filtered, wrong variant/classes/architecture
named in one line, the model zoo's training checkpoint loaded exactly, NaN/inf refused by name."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from trainer import eval as trainer_eval
from trainer import export as trainer_export
from trainer.checkpoint import load_weights
from trainer.config import load_config
from trainer.model import StNet, create_model

from tests.trainer.test_pretrained import MS_BN, _resnet50_shapes, _save_ckpt, model_zoo_stnet_shapes

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


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


def test_non_finite_values_are_refused_by_name(tmp_path):
    net = _tiny()
    variance = net.layer1[0].bn1.moving_variance
    variance.set_data(ms.Tensor(np.full(variance.shape, np.inf, np.float32)))
    path = tmp_path / "diverged.ckpt"
    _save_net(net, path)
    total = len(list(net.get_parameters()))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: 1 of {total} tensors are not "
                                         rf"finite, first layer1\.0\.bn1\.moving_variance \(inf\): "):
        load_weights(_tiny(), path)


@pytest.mark.parametrize("command", [trainer_eval, trainer_export], ids=["eval", "export"])
def test_eval_and_export_refuse_a_non_finite_checkpoint_in_one_line(command, tiny_records, tmp_path):
    """Such a checkpoint evaluated with exit 0, predicting class 0 for every video."""
    overrides = [f"data.root={tiny_records}", "model.width=8"]
    net = create_model(load_config(DEMO, overrides))
    net.fc.weight.set_data(ms.Tensor(np.full(net.fc.weight.shape, np.nan, np.float32)))
    path = tmp_path / "nan.ckpt"
    _save_net(net, path)
    out = ["--out", str(tmp_path / "out")] if command is trainer_export else []
    args = command.build_parser().parse_args(["--config", str(DEMO), "--ckpt", str(path), *out,
                                              *overrides])
    with pytest.raises(ValueError) as info:   # run_cli: "error: <message>", exit 2
        command.main(args)
    total = len(list(net.get_parameters()))
    assert re.fullmatch(rf"{re.escape(str(path))}: 1 of {total} tensors are not finite, first "
                        rf"fc\.weight \(nan\): [^\n]+", str(info.value))
    assert not (tmp_path / "out").exists()
