"""ImageNet init (MindSpore .ckpt and torchvision .npz), conv1 inflation, model zoo checkpoint names.

Checkpoints are written here from name/shape lists derived from the published architectures, not
from our network, so a renamed or reshaped parameter fails the test.
"""
from __future__ import annotations

import logging

import pytest

from trainer.model import StNet
from trainer.pretrained import load_pretrained

import mindspore as ms  # noqa: E402  (after trainer: it caps oneDNN's ISA before the first kernel)
import numpy as np  # noqa: E402

R50_BLOCKS = (3, 4, 6, 3)
IMAGENET_CLASSES = 1000


def _resnet50_shapes(width: int, in_channels: int, bn_leaves: tuple[str, ...], down: str) -> dict:
    """Backbone names/shapes of ResNet-50 as MindSpore's official (``down_sample_layer``) or
    torchvision (``downsample``) code names them."""
    shapes: dict[str, tuple] = {}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.{leaf}": (c,) for leaf in bn_leaves})

    shapes["conv1.weight"] = (width, in_channels, 7, 7)
    bn("bn1", width)
    cin = width
    for stage, num_blocks in enumerate(R50_BLOCKS, start=1):
        c = width * 2 ** (stage - 1)
        for block in range(num_blocks):
            p = f"layer{stage}.{block}"
            for k, (cout, cinner, size) in enumerate([(c, cin, 1), (c, c, 3), (4 * c, c, 1)], start=1):
                shapes[f"{p}.conv{k}.weight"] = (cout, cinner, size, size)
                bn(f"{p}.bn{k}", cout)
            if block == 0:
                shapes[f"{p}.{down}.0.weight"] = (4 * c, cin, 1, 1)
                bn(f"{p}.{down}.1", 4 * c)
            cin = 4 * c
    return shapes


MS_BN = ("gamma", "beta", "moving_mean", "moving_variance")
TORCH_BN = ("weight", "bias", "running_mean", "running_var")


def model_zoo_stnet_shapes(num_classes: int, frames_per_segment: int) -> dict:
    """Parameters of the model zoo StNet (research/cv/stnet, src/Stnet_Res.py) as its checkpoint
    stacks them: 301 tensors at 400 classes."""
    shapes = _resnet50_shapes(64, 3 * frames_per_segment, MS_BN, "down_sample_layer")
    for name, c in (("temp1", 512), ("temp2", 1024)):
        shapes[f"{name}.conv1.weight"] = (c, c, 3, 1, 1)
        shapes[f"{name}.conv1.bias"] = (c,)
        shapes.update({f"{name}.bn1.bn2d.{leaf}": (c,) for leaf in MS_BN})
    head = {"bn1": None, "att_conv": (2048, 2048, 3, 1), "att_2": (1024, 2048, 1, 1), "bn2": None,
            "att_1": (1024, 1024, 3, 1), "att1_2": (1024, 1024, 1, 1), "dw": (1024, 2048, 1, 1),
            "bn3": None}
    for name, weight in head.items():
        if weight is None:
            c = 2048 if name == "bn1" else 1024
            shapes.update({f"xception.{name}.{leaf}": (c,) for leaf in MS_BN})
        else:
            shapes[f"xception.{name}.weight"] = weight
            shapes[f"xception.{name}.bias"] = (weight[0],)
    shapes["fc.weight"] = (num_classes, 1024)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def _arrays(shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _save_ckpt(arrays: dict[str, np.ndarray], path) -> None:
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()], str(path))


def _value(net: StNet, name: str) -> np.ndarray:
    return next(p for p in net.get_parameters() if p.name == name).asnumpy()


def _fresh_names(net: StNet) -> list[str]:
    return sorted(p.name for p in net.get_parameters() if p.name.split(".")[0] in ("temp1", "temp2", "xception", "fc"))


@pytest.fixture
def net():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return StNet(num_classes=7, frames_per_segment=5, width=8)


@pytest.fixture
def imagenet_ckpt(tmp_path):
    """Official MindSpore ResNet-50 (width 8) with its 1000-way head and an optimizer moment."""
    arrays = _arrays(_resnet50_shapes(8, 3, MS_BN, "down_sample_layer"))
    arrays["end_point.weight"] = np.ones((IMAGENET_CLASSES, 256), np.float32)
    arrays["end_point.bias"] = np.ones((IMAGENET_CLASSES,), np.float32)
    arrays["moments.conv1.weight"] = np.ones((8, 3, 7, 7), np.float32)
    path = tmp_path / "resnet50_imagenet.ckpt"
    _save_ckpt(arrays, path)
    return path, arrays


def test_mindspore_imagenet_checkpoint_loads_backbone(net, imagenet_ckpt, caplog):
    path, arrays = imagenet_ckpt
    with caplog.at_level(logging.INFO, logger="trainer.pretrained"):
        report = load_pretrained(net, path)
    backbone = sorted(k for k in arrays if k.split(".")[0] in ("conv1", "bn1") or k.startswith("layer"))
    assert report["loaded"] == backbone
    assert report["skipped"] == ["end_point.bias", "end_point.weight", "moments.conv1.weight"]
    assert report["missing"] == _fresh_names(net)
    for key in ("bn1.moving_variance", "layer3.0.down_sample_layer.0.weight", "layer4.2.conv3.weight"):
        np.testing.assert_array_equal(_value(net, key), arrays[key])
    assert "skipped 3 entries that are not network parameters: end_point.bias, end_point.weight, " \
           "moments.*" in caplog.text           # one line, optimizer slots grouped
    assert f"{len(report['missing'])} parameters keep their fresh initialisation" in caplog.text


def test_torchvision_npz_is_renamed_and_loaded(net, tmp_path):
    shapes = _resnet50_shapes(8, 3, TORCH_BN, "downsample")
    arrays = _arrays(shapes, seed=1)
    arrays.update({k.replace("running_var", "num_batches_tracked"): np.array(7, np.int64)
                   for k in shapes if k.endswith("running_var")})
    arrays["fc.weight"] = np.ones((IMAGENET_CLASSES, 256), np.float32)
    arrays["fc.bias"] = np.ones((IMAGENET_CLASSES,), np.float32)
    path = tmp_path / "resnet50.npz"
    np.savez(path, **arrays)
    fresh_fc = _value(net, "fc.weight")

    report = load_pretrained(net, path)

    assert len(report["loaded"]) == len(shapes)
    assert report["missing"] == _fresh_names(net)
    assert "fc.weight" in report["skipped"] and "layer1.0.bn1.num_batches_tracked" in report["skipped"]
    np.testing.assert_array_equal(_value(net, "fc.weight"), fresh_fc)
    pairs = {"bn1.gamma": "bn1.weight", "bn1.beta": "bn1.bias",
             "layer2.0.down_sample_layer.1.moving_variance": "layer2.0.downsample.1.running_var",
             "layer2.0.down_sample_layer.0.weight": "layer2.0.downsample.0.weight",
             "layer3.5.bn2.moving_mean": "layer3.5.bn2.running_mean",
             "layer4.2.conv3.weight": "layer4.2.conv3.weight"}
    for ours, theirs in pairs.items():
        np.testing.assert_array_equal(_value(net, ours), arrays[theirs])


def test_inflated_conv1_keeps_its_response_on_identical_frames(net, imagenet_ckpt):
    path, arrays = imagenet_ckpt
    load_pretrained(net, path)
    assert _value(net, "conv1.weight").shape == (8, 15, 7, 7)
    frame = np.random.default_rng(3).standard_normal((2, 3, 40, 56)).astype(np.float32)
    stacked = np.tile(frame, (1, 5, 1, 1))                        # N=5 identical RGB frames
    imagenet_conv1 = ms.nn.Conv2d(3, 8, 7, stride=2, pad_mode="pad", padding=3,
                                  weight_init=ms.Tensor(arrays["conv1.weight"]))
    expected = imagenet_conv1(ms.Tensor(frame)).asnumpy()
    got = net.conv1(ms.Tensor(stacked)).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected).max() > 1.0                           # a real response, not zeros


def test_shape_mismatch_is_refused_naming_key_and_shapes(net, tmp_path):
    path = tmp_path / "wide.ckpt"
    _save_ckpt(_arrays(_resnet50_shapes(16, 3, MS_BN, "down_sample_layer")), path)
    with pytest.raises(ValueError, match=r"conv1\.weight has shape \(16, 15, 7, 7\), "
                                         r"the network expects \(8, 15, 7, 7\)"):
        load_pretrained(net, path)


def test_unusable_files_are_refused(net, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained(net, tmp_path / "absent.ckpt")
    torch_file = tmp_path / "resnet50.pth"
    torch_file.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"must end in \.ckpt or \.npz, got 'resnet50\.pth'"):
        load_pretrained(net, torch_file)
    unrelated = tmp_path / "other.ckpt"
    _save_ckpt({"encoder.weight": np.ones((2, 2), np.float32)}, unrelated)
    with pytest.raises(ValueError, match="no entry matches"):
        load_pretrained(net, unrelated)


def test_model_zoo_checkpoint_loads_into_dense_variant_exactly(tmp_path):
    shapes = model_zoo_stnet_shapes(num_classes=400, frames_per_segment=5)
    assert len(shapes) == 301
    net = StNet(num_classes=400, frames_per_segment=5, depth=50, width=64, xception="dense")
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert sorted(set(ours) ^ set(shapes)) == []
    assert {k: v for k, v in ours.items() if shapes[k] != v} == {}

    # each tensor holds its own index, so a load into the wrong parameter shows up
    arrays = {k: np.full(s, i, np.float32) for i, (k, s) in enumerate(shapes.items())}
    path = tmp_path / "stnet_ascend_v1100_kinetics400_research_cv_acc69.16.ckpt"
    _save_ckpt(arrays, path)
    del arrays
    params_not_loaded, ckpt_not_loaded = ms.load_param_into_net(net, ms.load_checkpoint(str(path)))
    assert (params_not_loaded, ckpt_not_loaded) == ([], [])
    for i, key in enumerate(shapes):
        if i % 37 == 0 or key.startswith(("temp", "xception", "fc")):
            assert np.all(_value(net, key) == i), key

    # load_pretrained takes it whole as well; cleared parameters show that it did load values
    # (the same network again: a second 24M-parameter StNet would cost seconds)
    cleared = ("layer1.0.conv1.weight", "layer3.4.bn2.moving_mean", "xception.att_conv.weight",
               "fc.bias")
    for key in cleared:
        param = next(p for p in net.get_parameters() if p.name == key)
        param.set_data(ms.Tensor(np.zeros(param.shape, np.float32)))
    report = load_pretrained(net, path)
    assert report == {"loaded": sorted(shapes), "skipped": [], "missing": [], "reinitialised": []}
    for key in cleared:
        assert np.all(_value(net, key) == list(shapes).index(key)), key


def test_stnet_checkpoint_of_another_class_count_fine_tunes(tmp_path, caplog):
    """Kinetics (400 classes) -> 4 classes: every layer but the classifier is loaded, the
    classifier keeps its fresh initialisation, and both are said in one line each."""
    source = StNet(num_classes=7, frames_per_segment=2, width=8)
    path = tmp_path / "k7.ckpt"
    ms.save_checkpoint(source, str(path))
    target = StNet(num_classes=4, frames_per_segment=2, width=8)
    fresh_fc = _value(target, "fc.weight").copy()
    with caplog.at_level(logging.INFO, logger="trainer.pretrained"):
        report = load_pretrained(target, path)
    assert report["reinitialised"] == ["fc.bias", "fc.weight"] and report["missing"] == ["fc.bias", "fc.weight"]
    assert np.array_equal(_value(target, "fc.weight"), fresh_fc)
    assert np.array_equal(_value(target, "layer4.2.conv3.weight"), _value(source, "layer4.2.conv3.weight"))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("classifier fc.bias, fc.weight freshly initialised: the checkpoint classifies 7 "
               "classes, the network 4" in line for line in lines) == 1
    assert sum("loaded 299 parameters" in line for line in lines) == 1, lines
