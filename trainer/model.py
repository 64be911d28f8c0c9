"""StNet (arXiv 1811.01549) on a ResNet backbone: the network and nothing else.

    python -m trainer.model --config configs/X.yaml [key=value ...]

prints the layer table and, last, ``params=<trainable> tensors=<parameter tensors incl. BN stats>``.

Input (B, T, 3N, H, W): T segments of N consecutive RGB frames stacked frame-major into one
"super-image" (frame n's RGB at channels 3n..3n+2). Each super-image goes through a 2D ResNet;
temporal blocks (Conv3d over T) after layer2 and layer3 mix segments; global spatial mean, a
temporal Xception head over T, max over T, Dense.

Padding is the reference's: a square conv pads k//2 on every side, given as one int (conv1 7×7/2
pads 3, every bottleneck 3×3 pads 1, the stride-2 ones too). ``pad_mode="same"`` would pad a
stride-2 conv on an even input (k−2)//2 before and the rest after ((2,3) for conv1, (0,1) for a
3×3), shifting the sampling grid by a pixel: the model zoo's released checkpoint then loads by
name and shape, but its logits move by about half their size. One int padding exports to ONNX
correctly (a non-square tuple does not), so the temporal (3,1) and (3,1,1) convs keep ``"same"``,
which at stride 1 is that symmetric padding.

Departures from the model zoo port, on purpose:
- global mean/max instead of AvgPool(7)/MaxPool(T), so any T and input size work (multi-clip and
  256 test crops), and a mean exports to ONNX where AdaptiveAvgPool2d does not;
- ``xception="depthwise"`` (the paper's and Paddle's head) is the default; ``"dense"`` is the model
  zoo port, whose parameter names and shapes it reproduces exactly (301 tensors at depth 50).
Parameter names follow the official MindSpore ResNet (``layerX.Y.convK``, ``down_sample_layer``)
and the port (``temp1/temp2``, ``xception.att_conv`` ...), so ImageNet and model zoo checkpoints map
onto them by name.
"""
from __future__ import annotations

import argparse
import math
import sys

from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, HeUniform, Uniform

from datatools.cli import run_cli
from trainer.config import BLOCKS_PER_STAGE, XCEPTION_VARIANTS, Config, config_from_args, config_parser

__all__ = ["BLOCKS_PER_STAGE", "XCEPTION_VARIANTS", "StNet", "create_model", "count_parameters",
           "layer_table", "main"]

EXPANSION = 4          # bottleneck output channels / inner channels
STAGE_STRIDES = (1, 2, 2, 2)


def _conv(in_channels: int, out_channels: int, kernel_size, *, stride: int = 1, group: int = 1,
          has_bias: bool = False, weight_init=None) -> nn.Conv2d:
    """2D conv padded as the reference: k//2 on every side for a square kernel (one int, which
    exports to ONNX), ``"same"`` for the stride-1 temporal (3,1) kernels (equal to symmetric)."""
    if isinstance(kernel_size, int):
        padding = {"pad_mode": "pad", "padding": kernel_size // 2}
    elif stride == 1:
        padding = {"pad_mode": "same"}
    else:
        raise ValueError(f"a non-square kernel {kernel_size} must have stride 1, got {stride}")
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, group=group,
                     has_bias=has_bias, **padding,
                     weight_init=weight_init or HeNormal(mode="fan_out", nonlinearity="relu"))


class Bottleneck(nn.Cell):
    """ResNet v1.5 bottleneck (stride on the 3×3), named as the official MindSpore ResNet."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * EXPANSION
        self.conv1 = _conv(in_channels, channels, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv(channels, channels, 3, stride=stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv(channels, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.has_down_sample = stride != 1 or in_channels != out_channels
        if self.has_down_sample:
            self.down_sample_layer = nn.SequentialCell(
                _conv(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels))

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.down_sample_layer(x) if self.has_down_sample else x
        return self.relu(out + identity)


def _stage(in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.SequentialCell:
    blocks = [Bottleneck(in_channels, channels, stride)]
    blocks += [Bottleneck(channels * EXPANSION, channels) for _ in range(num_blocks - 1)]
    return nn.SequentialCell(blocks)


class TemporalBlock(nn.Cell):
    """Residual Conv3d (3,1,1) over the T segments → ReLU → BN3d, on (B·T, C, H, W) features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), pad_mode="same", has_bias=True,
                               weight_init=HeUniform())
        self.bn1 = nn.BatchNorm3d(channels)
        self.relu = nn.ReLU()

    def construct(self, x, num_segments: int):
        _, channels, height, width = x.shape
        x = ops.transpose(x.reshape(-1, num_segments, channels, height, width), (0, 2, 1, 3, 4))
        x = self.bn1(self.relu(self.conv1(x))) + x
        return ops.transpose(x, (0, 2, 1, 3, 4)).reshape(-1, channels, height, width)


class TemporalXception(nn.Cell):
    """Temporal Xception head on (B, C, T, 1): two (3,1) convs over T, each followed by a 1×1.

    Names are the model zoo port's: att_conv/att_1 are the temporal convs (depthwise in the paper,
    dense in the port), att_2/att1_2 the pointwise ones, dw the 1×1 shortcut from bn1's output.
    """

    def __init__(self, in_channels: int, out_channels: int, depthwise: bool) -> None:
        super().__init__()

        def temporal(channels: int) -> nn.Conv2d:
            return _conv(channels, channels, (3, 1), group=channels if depthwise else 1,
                         has_bias=True, weight_init=HeUniform())

        def pointwise(cin: int, cout: int) -> nn.Conv2d:
            return _conv(cin, cout, 1, has_bias=True, weight_init=HeUniform())

        self.bn1 = nn.BatchNorm2d(in_channels)
        self.att_conv = temporal(in_channels)
        self.att_2 = pointwise(in_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.att_1 = temporal(out_channels)
        self.att1_2 = pointwise(out_channels, out_channels)
        self.dw = pointwise(in_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def construct(self, x):
        x = self.bn1(x)
        branch = self.relu(self.bn2(self.att_2(self.att_conv(x))))
        branch = self.att1_2(self.att_1(branch))
        return self.relu(self.bn3(branch + self.dw(x)))


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class StNet(nn.Cell):
    """StNet: (B, T, 3N, H, W) float32 clips → (B, num_classes) logits, for any T, H, W.

    Parameters
    ----------
    num_classes : int
        Classifier outputs.
    frames_per_segment : int
        N, consecutive frames stacked per segment (conv1 takes 3N channels).
    depth : int
        ResNet depth, one of 50, 101, 152.
    width : int
        Stem channels (64 is the standard ResNet); every stage scales with it.
    xception : str
        Temporal convs of the head: ``"depthwise"`` (paper, Paddle) or ``"dense"`` (model zoo).
    """

    def __init__(self, num_classes: int, frames_per_segment: int, depth: int = 50, width: int = 64,
                 xception: str = "depthwise") -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"depth must be one of {tuple(BLOCKS_PER_STAGE)}, got {depth!r}")
        if xception not in XCEPTION_VARIANTS:
            raise ValueError(f"xception must be one of {XCEPTION_VARIANTS}, got {xception!r}")
        for name, value in (("num_classes", num_classes), ("frames_per_segment", frames_per_segment),
                            ("width", width)):
            _check_positive(name, value)
        self.num_classes = num_classes
        self.frames_per_segment = frames_per_segment
        self.depth, self.width, self.xception_variant = depth, width, xception

        self.conv1 = _conv(3 * frames_per_segment, width, 7, stride=2)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        channels = [width * 2 ** i for i in range(4)]
        in_channels = [width] + [c * EXPANSION for c in channels[:3]]
        stages = [_stage(cin, c, n, s) for cin, c, n, s in
                  zip(in_channels, channels, BLOCKS_PER_STAGE[depth], STAGE_STRIDES)]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.temp1 = TemporalBlock(channels[1] * EXPANSION)
        self.temp2 = TemporalBlock(channels[2] * EXPANSION)
        features = channels[3] * EXPANSION
        self.xception = TemporalXception(features, features // 2, depthwise=xception == "depthwise")
        self.fc = nn.Dense(features // 2, num_classes, weight_init=Uniform(1.0 / math.sqrt(features // 2)))
        self.spatial_mean = ops.ReduceMean(keep_dims=False)
        self.temporal_max = ops.ReduceMax(keep_dims=False)

    def construct(self, x):
        _, num_segments, channels, height, width = x.shape
        x = x.reshape(-1, channels, height, width)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = self.layer3(self.temp1(x, num_segments))
        x = self.layer4(self.temp2(x, num_segments))
        x = self.spatial_mean(x, (2, 3))                                        # (B·T, C)
        x = ops.transpose(x.reshape(-1, num_segments, x.shape[1]), (0, 2, 1)).expand_dims(3)  # (B, C, T, 1)
        x = self.temporal_max(self.xception(x), (2, 3))                         # (B, C/2)
        return self.fc(x)


def create_model(cfg: Config) -> StNet:
    """StNet from ``cfg.model.{depth,width,xception,num_classes}`` and ``cfg.data.frames_per_segment``."""
    return StNet(num_classes=cfg.model.num_classes, frames_per_segment=cfg.data.frames_per_segment,
                 depth=cfg.model.depth, width=cfg.model.width, xception=cfg.model.xception)


def count_parameters(net: nn.Cell) -> tuple[int, int]:
    """(trainable parameter count, number of parameter tensors including BN moving statistics)."""
    trainable = sum(int(p.size) for p in net.trainable_params())
    return trainable, len(list(net.get_parameters()))


def layer_table(net: nn.Cell) -> list[str]:
    """One row per cell that owns parameters: name, type, parameter shapes, trainable count."""
    rows = [f"{'layer':<34} {'type':<12} {'trainable':>10}  shapes"]
    for name, cell in net.cells_and_names():
        params = list(cell.get_parameters(expand=False))
        if not params:
            continue
        trainable = sum(int(p.size) for p in params if p.requires_grad)
        shapes = " ".join(f"{p.name.rsplit('.', 1)[-1]}{tuple(p.shape)}" for p in params)
        rows.append(f"{name:<34} {type(cell).__name__:<12} {trainable:>10}  {shapes}")
    return rows


def main(args: argparse.Namespace) -> None:
    net = create_model(config_from_args(args))
    for row in layer_table(net):
        print(row)
    params, tensors = count_parameters(net)
    print(f"params={params} tensors={tensors}")


def build_parser() -> argparse.ArgumentParser:
    return config_parser("Print the StNet layer table and parameter counts.")


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
