"""ResNet (bottleneck) backbone in torchvision's layout and parameter names, without the fc layer."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor

from m2det.layers import BN_EPS, TORCH_DEFAULT_BN_MOMENTUM, conv2d, conv_output_size, kaiming_normal_fan_out, to_pair

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4


def _bn(channels: int) -> nn.BatchNorm2d:
    # torchvision's plain BatchNorm2d: eps 1e-5, PyTorch momentum 0.1
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=TORCH_DEFAULT_BN_MOMENTUM)


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    # torchvision init: kaiming_normal_(mode='fan_out', nonlinearity='relu')
    return conv2d(in_ch, out_ch, kernel_size, stride, padding, weight_init=kaiming_normal_fan_out())


class Bottleneck(nn.Cell):
    """1x1 -> 3x3 (carries the stride, torchvision "ResNet v1.5") -> 1x1, plus the shortcut."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1 = _conv(in_channels, planes, 1)
        self.bn1 = _bn(planes)
        self.conv2 = _conv(planes, planes, 3, stride, 1)
        self.bn2 = _bn(planes)
        self.conv3 = _conv(planes, out_channels, 1)
        self.bn3 = _bn(out_channels)
        self.relu = nn.ReLU()
        self.has_downsample = stride != 1 or in_channels != out_channels
        self.downsample = (nn.SequentialCell(_conv(in_channels, out_channels, 1, stride), _bn(out_channels))
                           if self.has_downsample else None)

    def construct(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.has_downsample:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Cell):
    """torchvision-layout ResNet-50/101/152 trunk (`conv1`, `bn1`, `layer1.0.conv1`, `.downsample.0/.1`).

    Args:
        depth: 50, 101 or 152.
        layer_strides: stride of the first block of layer1..layer4. torchvision is (1, 2, 2, 2)
            (layer4 at stride 32, the FPN layout); M2Det uses (1, 2, 1, 2): layer3 keeps the
            resolution (no dilation), so layer4 sits at stride 16 (SPEC 1.2).
        out_layers: which of layer1..layer4 to return, in order.
        width: multiplier on every channel count.

    The classification fc is not built. Parameter counts therefore differ from torchvision's
    by 2048 * 1000 + 1000 = 2,049,000: the reference M2Det-ResNet101 count of 157,222,684
    includes that unused fc; ours is 155,173,684 (tests/test_model_structure.py).
    """

    def __init__(self, depth: int = 50, layer_strides: Sequence[int] = (1, 2, 2, 2),
                 out_layers: Sequence[int] = (2, 4), width: float = 1.0):
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth}")
        if len(layer_strides) != 4:
            raise ValueError(f"ResNet needs 4 layer_strides, got {list(layer_strides)}")
        if not out_layers or any(i not in (1, 2, 3, 4) for i in out_layers):
            raise ValueError(f"ResNet out_layers must be a non-empty subset of 1..4, got {list(out_layers)}")
        self.depth = depth
        self.layer_strides = tuple(int(s) for s in layer_strides)
        self.out_layers = tuple(int(i) for i in out_layers)
        stem = max(1, int(round(64 * width)))
        self.conv1 = _conv(3, stem, 7, 2, 3)
        self.bn1 = _bn(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)

        in_ch = stem
        self._channels = []
        for i, (blocks, stride) in enumerate(zip(BLOCKS[depth], self.layer_strides)):
            planes = max(1, int(round(64 * 2 ** i * width)))
            layer = [Bottleneck(in_ch, planes, stride)]
            in_ch = planes * EXPANSION
            layer += [Bottleneck(in_ch, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.SequentialCell(layer))
            self._channels.append(in_ch)

    @property
    def output_levels(self) -> list[tuple[int, int]]:
        """(channels, stride) of each output."""
        strides, s = [], 4
        for st in self.layer_strides:
            s *= st
            strides.append(s)
        return [(self._channels[i - 1], strides[i - 1]) for i in self.out_layers]

    def output_sizes(self, input_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """(h, w) of each output for an input of `input_size`, by shape arithmetic."""
        return resnet_sizes(input_size, self.layer_strides, self.out_layers)

    def construct(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = ()
        x = self.layer1(x)
        if 1 in self.out_layers:
            outs += (x,)
        x = self.layer2(x)
        if 2 in self.out_layers:
            outs += (x,)
        x = self.layer3(x)
        if 3 in self.out_layers:
            outs += (x,)
        x = self.layer4(x)
        if 4 in self.out_layers:
            outs += (x,)
        return outs


def resnet_sizes(input_size: int | Sequence[int], layer_strides: Sequence[int] = (1, 2, 2, 2),
                 out_layers: Sequence[int] = (2, 4)) -> list[tuple[int, int]]:
    """Output (h, w) of the chosen layers for an input of `input_size`."""
    sides = []
    for n in to_pair(input_size):
        n = conv_output_size(n, 7, 2, 3)   # conv1
        n = conv_output_size(n, 3, 2, 1)   # maxpool
        per_layer = []
        for s in layer_strides:
            n = conv_output_size(n, 3, s, 1)
            per_layer.append(n)
        sides.append([per_layer[i - 1] for i in out_layers])
    return list(zip(*sides))
