"""ResNet / ResNeXt (bottleneck) backbone in torchvision's layout and parameter names, without the fc layer.

Options for the FPN detectors follow mmdetection's ResNet: frozen stages, BatchNorm kept in inference
mode (`norm_eval`), and DCNv2 in chosen stages.
"""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor

from heads.ops.conv import conv2d
from heads.ops.deform_conv import ModulatedDeformConv2dWithOffsets
from m2det.layers import BN_EPS, TORCH_DEFAULT_BN_MOMENTUM, conv_output_size, kaiming_normal_fan_out, to_pair

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4


def _bn(channels: int) -> nn.BatchNorm2d:
    # torchvision's plain BatchNorm2d: eps 1e-5, PyTorch momentum 0.1
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=TORCH_DEFAULT_BN_MOMENTUM)


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
          groups: int = 1) -> nn.Conv2d:
    # torchvision init: kaiming_normal_(mode='fan_out', nonlinearity='relu')
    return conv2d(in_ch, out_ch, kernel_size, stride, padding, weight_init=kaiming_normal_fan_out(), groups=groups)


def bottleneck_width(planes: int, groups: int = 1, width_per_group: int = 64) -> int:
    """Channels of the 3x3 conv: torchvision's int(planes * width_per_group / 64) * groups.

    ResNet: groups 1, width_per_group 64 -> planes. ResNeXt-101 64x4d: 64 groups of 4 at planes 64 -> 256.
    """
    return int(planes * (width_per_group / 64.0)) * groups


class Bottleneck(nn.Cell):
    """1x1 -> 3x3 (carries the stride, torchvision "ResNet v1.5"; grouped for ResNeXt; optionally
    DCNv2) -> 1x1, plus the shortcut."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1, groups: int = 1,
                 width_per_group: int = 64, dcn: bool = False):
        super().__init__()
        out_channels = planes * EXPANSION
        width = bottleneck_width(planes, groups, width_per_group)
        if width < groups:
            raise ValueError(f"ResNeXt bottleneck of {planes} planes with groups={groups}, "
                             f"width_per_group={width_per_group} has no channels")
        self.conv1 = _conv(in_channels, width, 1)
        self.bn1 = _bn(width)
        if dcn:
            # mmdetection's DCNv2 conv2: same weight shape as the plain conv (pretrained weights load
            # into conv2.weight); conv2.conv_offset starts at zero
            self.conv2 = ModulatedDeformConv2dWithOffsets(width, width, 3, stride, 1, groups=groups,
                                                          weight_init=kaiming_normal_fan_out())
        else:
            self.conv2 = _conv(width, width, 3, stride, 1, groups)
        self.bn2 = _bn(width)
        self.conv3 = _conv(width, out_channels, 1)
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
    """torchvision-layout ResNet/ResNeXt-50/101/152 trunk (`conv1`, `bn1`, `layer1.0.conv1`, `.downsample.0/.1`).

    Args:
        depth: 50, 101 or 152.
        layer_strides: stride of the first block of layer1..layer4. torchvision is (1, 2, 2, 2)
            (layer4 at stride 32, the FPN layout: out_layers (2, 3, 4) are C3-C5 at strides 8, 16,
            32); M2Det uses (1, 2, 1, 2): layer3 keeps the resolution (no dilation), so layer4 sits
            at stride 16 (REFERENCE 1.2).
        out_layers: which of layer1..layer4 to return, in order.
        width: multiplier on every channel count.
        groups, width_per_group: ResNeXt cardinality and per-group width of the 3x3 conv (conv2),
            whose width is int(planes * width_per_group / 64) * groups. ResNet: 1, 64;
            ResNeXt-101 64x4d: 64, 4; ResNeXt-101 32x4d: 32, 4.
        frozen_stages: -1 freezes nothing; 0 the stem (conv1, bn1); n also layer1..layer n
            (mmdetection R50 configs: 1). Frozen parameters get requires_grad=False (so they are
            left out of `trainable_params()`) and their BatchNorms always use the moving statistics.
        norm_eval: every BatchNorm uses (and never updates) its moving statistics, also in training
            mode, as mmdetection's `norm_eval=True`; gamma/beta outside frozen stages still train.
        dcn_stages: per layer1..layer4, whether the bottlenecks' 3x3 conv is a DCNv2
            (`ModulatedDeformConv2dWithOffsets`: `conv2.weight`, `conv2.conv_offset.{weight,bias}`,
            the offset conv zero-initialised). mmdetection's DCN models: (False, True, True, True).

    The classification fc is not built. Parameter counts therefore differ from torchvision's
    by 2048 * 1000 + 1000 = 2,049,000: the reference M2Det-ResNet101 count of 157,222,684
    includes that unused fc; ours is 155,173,684 (tests/test_model_structure.py). Without fc:
    ResNet-50 23,508,032; ResNeXt-101 32x4d 42,128,704; ResNeXt-101 64x4d 81,406,272
    (tests/test_resnext_dcn.py).
    """

    def __init__(self, depth: int = 50, layer_strides: Sequence[int] = (1, 2, 2, 2),
                 out_layers: Sequence[int] = (2, 4), width: float = 1.0, groups: int = 1,
                 width_per_group: int = 64, frozen_stages: int = -1, norm_eval: bool = False,
                 dcn_stages: Sequence[bool] = (False, False, False, False)):
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth}")
        if len(layer_strides) != 4:
            raise ValueError(f"ResNet needs 4 layer_strides, got {list(layer_strides)}")
        if not out_layers or any(i not in (1, 2, 3, 4) for i in out_layers):
            raise ValueError(f"ResNet out_layers must be a non-empty subset of 1..4, got {list(out_layers)}")
        if len(dcn_stages) != 4:
            raise ValueError(f"ResNet needs 4 dcn_stages flags, got {list(dcn_stages)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"ResNet frozen_stages must be in -1..4, got {frozen_stages}")
        self.depth = depth
        self.layer_strides = tuple(int(s) for s in layer_strides)
        self.out_layers = tuple(int(i) for i in out_layers)
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = bool(norm_eval)
        self.dcn_stages = tuple(bool(d) for d in dcn_stages)
        stem = max(1, int(round(64 * width)))
        self.conv1 = _conv(3, stem, 7, 2, 3)
        self.bn1 = _bn(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)

        in_ch = stem
        self._channels = []
        for i, (blocks, stride) in enumerate(zip(BLOCKS[depth], self.layer_strides)):
            planes = max(1, int(round(64 * 2 ** i * width)))
            layer = []
            for j in range(blocks):
                layer.append(Bottleneck(in_ch, planes, stride if j == 0 else 1, groups, width_per_group,
                                        self.dcn_stages[i]))
                in_ch = planes * EXPANSION
            setattr(self, f"layer{i + 1}", nn.SequentialCell(layer))
            self._channels.append(in_ch)
        self._freeze()

    def _freeze(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen += [self.conv1, self.bn1]
        frozen += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        for cell in frozen:
            for p in cell.get_parameters():
                p.requires_grad = False
        for owner in [self] if self.norm_eval else frozen:
            for _, cell in owner.cells_and_names():
                if isinstance(cell, nn.BatchNorm2d):
                    # inference mode whatever set_train says: the moving statistics are used and
                    # never updated (mmdetection calls .eval() on these layers after every .train())
                    cell.use_batch_statistics = False

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
