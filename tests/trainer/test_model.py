"""StNet: logits per clip for any T/N/H/W, parameter counts derived from layer shapes, gradients,
export."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import trainer.model
from trainer.model import StNet, count_parameters

from tests.trainer.inprocess import run_module

import mindspore as ms  # noqa: E402  (after trainer: it caps oneDNN's ISA before the first kernel)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
R50_BLOCKS = (3, 4, 6, 3)


pytestmark = pytest.mark.slow   # graph compiles and exports of the network


def expected_counts(frames_per_segment: int, num_classes: int, width: int,
                    depthwise: bool) -> tuple[int, int]:
    """(trainable, tensors) of StNet-R50 counted by hand from the architecture in docs/design.md §6.

    A BN layer has 2 trainable vectors and 4 tensors (with the moving statistics).
    """
    params = 3 * frames_per_segment * width * 49 + 2 * width
    tensors = 1 + 4
    cin = width
    for stage, num_blocks in enumerate(R50_BLOCKS):
        c = width * 2 ** stage
        for block in range(num_blocks):
            params += cin * c + 2 * c + c * c * 9 + 2 * c + c * 4 * c + 2 * 4 * c
            tensors += 3 + 3 * 4
            if block == 0:
                params += cin * 4 * c + 2 * 4 * c
                tensors += 1 + 4
            cin = 4 * c
    for c in (8 * width, 16 * width):          # temporal blocks: Conv3d (3,1,1) with bias, BN3d
        params += c * c * 3 + c + 2 * c
        tensors += 2 + 4
    f, h = 32 * width, 16 * width              # Xception head: 2048 → 1024 at width 64
    temporal = (lambda c: c * 3 + c) if depthwise else (lambda c: c * c * 3 + c)
    params += 2 * f + temporal(f) + (f * h + h) + 2 * h + temporal(h) + (h * h + h) + (f * h + h) + 2 * h
    tensors += 4 + 2 + 2 + 4 + 2 + 2 + 2 + 4
    params += h * num_classes + num_classes
    tensors += 2
    return params, tensors


@pytest.fixture(autouse=True)
def seeded():
    """Fresh weights are drawn from the global seed: every test sees the same network."""
    ms.set_seed(0)


@pytest.fixture(params=["pynative", "graph"])
def mode(request):
    ms.set_context(mode=ms.PYNATIVE_MODE if request.param == "pynative" else ms.GRAPH_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def _clip(batch: int, t: int, n: int, h: int, w: int, seed: int = 0) -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(seed).standard_normal((batch, t, 3 * n, h, w), np.float32))


@pytest.mark.parametrize("t,n,h,w", [
    (4, 3, 56, 56),              # the demo's clip
    (7, 5, 112, 112),            # the reference recipe's T and N (its crop is 224)
    (25, 5, 64, 64),             # Paddle's test protocol's 25 segments (its crop is 256)
    (3, 2, 48, 80),              # non-square
])
def test_each_clip_gets_its_own_logits_from_all_its_segments(pynative, t, n, h, w):
    """Any T/N/H/W gives (B, classes) logits. The B·T super-images are reshaped to (B, T) for the
    temporal blocks and the head: a wrong reshape mixes clips of a batch (clip 1's logits then
    move with clip 0's pixels) or loses a segment (clip 0's last segment then changes nothing).
    Width 2 and small crops keep every stage and reshape at a fraction of the cost (any size
    works: the spatial mean and the strided padding do not depend on it)."""
    net = StNet(num_classes=11, frames_per_segment=n, width=2)
    net.set_train(False)
    clips = _clip(2, t, n, h, w).asnumpy()
    changed = clips.copy()
    changed[0, -1] = np.random.default_rng(1).standard_normal(changed[0, -1].shape)
    out, out_changed = (net(ms.Tensor(x)).asnumpy() for x in (clips, changed))
    assert out.shape == out_changed.shape == (2, 11)
    assert np.isfinite(out).all() and np.isfinite(out_changed).all()
    np.testing.assert_allclose(out_changed[1], out[1], rtol=1e-5, atol=1e-5 * np.abs(out[1]).max(),
                               err_msg="clip 1 depends on clip 0")
    assert np.abs(out_changed[0] - out[0]).max() > 1e-3 * np.abs(out[0]).max(), \
        "clip 0's last segment does not reach its logits"


@pytest.mark.parametrize("xception", ["depthwise", "dense"])
def test_every_strided_conv_pads_symmetrically_as_the_reference(pynative, xception):
    """conv1 (7×7/2), the stride-2 bottleneck 3×3s and their 1×1 shortcuts equal ops.conv2d with
    k//2 on every side: "same" would pad (2,3) and (0,1) and shift the grid by a pixel."""
    net = StNet(num_classes=5, frames_per_segment=2, width=8, xception=xception)
    strided = [(name, cell) for name, cell in net.cells_and_names()
               if isinstance(cell, ms.nn.Conv2d) and tuple(cell.stride)[-2:] == (2, 2)]
    assert [name for name, _ in strided] == ["conv1", "layer2.0.conv2", "layer2.0.down_sample_layer.0",
                                             "layer3.0.conv2", "layer3.0.down_sample_layer.0",
                                             "layer4.0.conv2", "layer4.0.down_sample_layer.0"]
    rng = np.random.default_rng(1)
    for name, conv in strided:
        x = ms.Tensor(rng.standard_normal((2, conv.in_channels, 16, 16), np.float32))
        kernel = conv.kernel_size[0]
        expected = ms.ops.conv2d(x, conv.weight, stride=2, pad_mode="pad", padding=kernel // 2)
        assert conv(x).shape == expected.shape == (2, conv.out_channels, 8, 8), name
        np.testing.assert_allclose(conv(x).asnumpy(), expected.asnumpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_graph_and_pynative_agree_and_batch_is_independent():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = StNet(num_classes=5, frames_per_segment=2, width=4, xception="dense")
    net.set_train(False)
    clip = _clip(3, 3, 2, 32, 32)
    eager = net(clip).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = net(clip).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph, eager, rtol=1e-4, atol=1e-5)
    single = net(clip[1:2]).asnumpy()
    np.testing.assert_allclose(single, eager[1:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("xception,depthwise", [("depthwise", True), ("dense", False)])
def test_parameter_counts_r50_400_classes(xception, depthwise):
    net = StNet(num_classes=400, frames_per_segment=5, depth=50, width=64, xception=xception)
    counted = count_parameters(net)
    print(f"StNet-R50 {xception}: params={counted[0]} tensors={counted[1]}")
    assert counted == expected_counts(5, 400, 64, depthwise)
    assert counted[1] == 301                   # the model zoo's "Parameters: 301"


def test_deeper_backbones_add_blocks():
    counts = {d: count_parameters(StNet(10, 2, depth=d, width=4)) for d in (50, 101, 152)}
    assert counts[50][1] < counts[101][1] < counts[152][1]
    # 101 adds 17 bottlenecks to layer3, each 3 convs and 3 BNs (15 tensors)
    assert counts[101][1] - counts[50][1] == 17 * 15


@pytest.mark.parametrize("kwargs,match", [
    ({"depth": 34}, r"depth must be one of \(50, 101, 152\), got 34"),
    ({"xception": "separable"}, r"xception must be one of \('depthwise', 'dense'\), got 'separable'"),
    ({"width": 0}, "width must be a positive integer, got 0"),
    ({"frames_per_segment": 0}, "frames_per_segment must be a positive integer, got 0"),
])
def test_bad_arguments_name_allowed_values(kwargs, match):
    args = {"num_classes": 4, "frames_per_segment": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        StNet(**args)


@pytest.mark.parametrize("xception", ["depthwise", "dense"])
def test_gradient_reaches_every_parameter(mode, xception):
    net = StNet(num_classes=4, frames_per_segment=2, width=4, xception=xception)
    net.set_train(True)
    loss_fn = ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    params = net.trainable_params()

    def loss(clip, label):
        return loss_fn(net(clip), label)

    grad_fn = ms.value_and_grad(loss, None, params)
    value, grads = grad_fn(_clip(2, 3, 2, 32, 32), ms.Tensor(np.array([1, 3], np.int32)))
    assert np.isfinite(value.asnumpy())
    dead = [p.name for p, g in zip(params, grads) if not np.any(g.asnumpy() != 0)]
    assert not dead, f"no gradient reaches {dead}"
    assert all(np.isfinite(g.asnumpy()).all() for g in grads)


def test_exports_to_mindir_with_a_dynamic_batch(pynative, tmp_path):
    """The dense (model zoo) head, one file for any batch. The depthwise head's static and dynamic
    exports are test_export's (through trainer.export); each export and load compiles a graph,
    so they are not repeated here. The reference logits are PyNative's (graph and PyNative
    agree, tested above)."""
    net = StNet(num_classes=5, frames_per_segment=2, width=4, xception="dense")
    net.set_train(False)
    clip = _clip(3, 3, 2, 32, 32, seed=1)
    expected = net(clip).asnumpy()
    ms.export(net, ms.Tensor(shape=[None, 3, 6, 32, 32], dtype=ms.float32),
              file_name=str(tmp_path / "dyn"), file_format="MINDIR")
    dyn = ms.nn.GraphCell(ms.load(str(tmp_path / "dyn.mindir")))
    np.testing.assert_allclose(dyn(clip[:1]).asnumpy(), expected[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dyn(clip).asnumpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("xception", ["depthwise", "dense"])
def test_exports_to_onnx_matching_onnxruntime(pynative, tmp_path, xception):
    net = StNet(num_classes=5, frames_per_segment=2, width=4, xception=xception)
    net.set_train(False)
    clip = _clip(1, 3, 2, 32, 32, seed=2)
    expected = net(clip).asnumpy()
    ms.export(net, clip, file_name=str(tmp_path / "net"), file_format="ONNX")
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: clip.asnumpy()})[0]
    # fresh BN statistics let logits grow to ~100: compare to 1e-4 relative to their size
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_cli_prints_layer_table_and_model_zoo_counts():
    """The one real ``python -m trainer.model`` run."""
    done = subprocess.run([sys.executable, "-m", "trainer.model", "--config",
                           "configs/stnet_r50_k400.yaml", "model.xception=dense"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    params, tensors = expected_counts(5, 400, 64, depthwise=False)
    assert lines[-1] == f"params={params} tensors={tensors}"
    assert tensors == 301
    assert any(line.startswith("xception.att_conv ") and "(2048, 2048, 3, 1)" in line for line in lines)


def test_cli_rejects_bad_value_in_one_line(capsys):
    assert run_module(trainer.model, ["--config", REPO / "configs/demo.yaml", "model.depth=34"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "error: model.depth must be one of 50|101|152, got 34"
    assert captured.out == ""
