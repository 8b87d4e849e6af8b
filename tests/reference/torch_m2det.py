"""A PyTorch M2Det written with the official PyTorch release's module names.

Test-only: it pins our MindSpore implementation against the reference architecture and
gives checkpoint-conversion tests a model whose `state_dict()` keys are the official ones:

    base.{0,2,...,31,33}.{weight,bias}             VGG16 reduced-fc (flat indices)
    base.conv1.weight, base.layer1.0.conv1.weight  ResNet (torchvision names; fc optional)
    reduce.conv.weight, reduce.bn.{weight,bias,running_mean,running_var}
    up_reduce.*, leach.{0..L-1}.*                  leach: one shared module L times, or per level
    unet{1..L}.layers.i.*, unet*.toplayer.0.*, unet*.latlayer.i.*, unet*.smooth.i.*
    sfam_module.fc1.i.*, sfam_module.fc2.i.*       (shared across scales; only with sfam=True)
    Norm.*, loc.i.*, conf.i.*

Everything is configurable so that tiny networks can be compared in tests.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# the release's ResNet is torchvision's, which the FPN reference also builds (groups 1, width 64)
from tests.reference.torch_fpn import ResNet


class BasicConv(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def _scaled(c, width):
    return max(1, int(round(c * width)))


def vgg_reduced(width: float = 1.0) -> nn.ModuleList:
    """SSD's VGG16 with pool5 3x3/1 and the dilated conv6 / 1x1 conv7 (35 flat layers)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
    layers, in_ch = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "C":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            c = _scaled(v, width)
            layers += [nn.Conv2d(in_ch, c, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = c
    fc = _scaled(1024, width)
    layers += [nn.MaxPool2d(3, 1, 1), nn.Conv2d(in_ch, fc, 3, padding=6, dilation=6), nn.ReLU(inplace=False),
               nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=False)]
    return nn.ModuleList(layers)


class ResNetBase(ResNet):
    """torchvision-named ResNet (the FPN reference's trunk); `with_fc` adds the (unused) 1000-way
    fc the release carries, and the default outputs are the release's C3 and C5."""

    def __init__(self, depth=101, layer_strides=(1, 2, 1, 2), width=1.0, with_fc=False):
        super().__init__(depth, layer_strides, width)
        if with_fc:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.layer4[-1].conv3.out_channels, 1000)

    def forward(self, x, out_layers=(2, 4)):
        return super().forward(x, out_layers)


class TUM(nn.Module):
    def __init__(self, first_level=True, input_planes=128, is_smooth=True, side_channel=512, scales=6):
        super().__init__()
        self.scales = scales
        self.planes = 2 * input_planes
        self.in1 = input_planes if first_level else input_planes + side_channel
        self.first_level = first_level
        self.layers = nn.Sequential()
        self.layers.add_module("0", BasicConv(self.in1, self.planes, 3, 2, 1))
        for i in range(scales - 2):
            valid = i == scales - 3
            self.layers.add_module(str(len(self.layers)),
                                   BasicConv(self.planes, self.planes, 3, 1 if valid else 2, 0 if valid else 1))
        self.toplayer = nn.Sequential(BasicConv(self.planes, self.planes, 1, 1, 0))
        self.latlayer = nn.Sequential()
        for i in range(scales - 2):
            self.latlayer.add_module(str(i), BasicConv(self.planes, self.planes, 3, 1, 1))
        self.latlayer.add_module(str(scales - 2), BasicConv(self.in1, self.planes, 3, 1, 1))
        self.is_smooth = is_smooth
        if is_smooth:
            self.smooth = nn.Sequential(*[BasicConv(self.planes, self.planes, 1, 1, 0) for _ in range(scales - 1)])

    def forward(self, x, y=None):
        if not self.first_level:
            x = torch.cat([x, y], 1)
        conved = [x]
        for layer in self.layers:
            x = layer(x)
            conved.append(x)
        deconved = [self.toplayer[0](conved[-1])]
        for i in range(len(self.latlayer)):
            lateral = self.latlayer[i](conved[len(self.layers) - 1 - i])
            deconved.append(F.interpolate(deconved[i], size=lateral.shape[2:], mode="nearest") + lateral)
        if not self.is_smooth:
            return deconved
        return [deconved[0]] + [self.smooth[i](deconved[i + 1]) for i in range(len(self.smooth))]


class SFAM(nn.Module):
    def __init__(self, planes, num_levels, num_scales, compress_ratio=16):
        super().__init__()
        ch = planes * num_levels
        # one module listed num_scales times: shared weights, repeated state_dict keys
        self.fc1 = nn.ModuleList([nn.Conv2d(ch, ch // compress_ratio, 1, 1, 0)] * num_scales)
        self.fc2 = nn.ModuleList([nn.Conv2d(ch // compress_ratio, ch, 1, 1, 0)] * num_scales)
        self.relu = nn.ReLU(inplace=False)
        self.sigmoid = nn.Sigmoid()
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, xs):
        outs = []
        for x in xs:
            w = self.sigmoid(self.fc2[0](self.relu(self.fc1[0](self.avgpool(x)))))
            outs.append(x * w)
        return outs


class M2DetReference(nn.Module):
    """The reference M2Det (PyTorch release layout); `phase='test'` applies the softmax."""

    def __init__(self, backbone: str = "vgg16", width: float = 1.0, planes: int = 256, num_levels: int = 8,
                 num_scales: int = 6, base_channels: Sequence[int] = (256, 512), num_classes: int = 81,
                 input_size: int = 320, sfam: bool = False, shared_leach: bool = True, num_anchors: int = 6,
                 resnet_fc: bool = False, phase: str = "train"):
        super().__init__()
        self.phase = phase
        self.size = input_size
        self.num_classes = num_classes
        self.num_levels = num_levels
        self.num_scales = num_scales
        self.planes = planes
        self.use_sfam = sfam
        if backbone == "vgg16":
            self.net_family = "vgg"
            self.base = vgg_reduced(width)
            self.base_out = [22, 34]
            shallow_in, deep_in = _scaled(512, width), _scaled(1024, width)
        elif backbone in ("resnet50", "resnet101"):
            self.net_family = "res"
            self.base = ResNetBase(int(backbone[6:]), (1, 2, 1, 2), width, with_fc=resnet_fc)
            shallow_in, deep_in = _scaled(128, width) * 4, _scaled(512, width) * 4
        else:
            raise ValueError(backbone)
        self.reduce = BasicConv(shallow_in, base_channels[0], 3, 1, 1)
        self.up_reduce = BasicConv(deep_in, base_channels[1], 1, 1)
        base_ch = sum(base_channels)
        if shared_leach:
            self.leach = nn.ModuleList([BasicConv(base_ch, planes // 2, 1, 1)] * num_levels)
        else:
            self.leach = nn.ModuleList([BasicConv(base_ch, planes // 2, 1, 1) for _ in range(num_levels)])
        for i in range(num_levels):
            setattr(self, f"unet{i + 1}", TUM(first_level=i == 0, input_planes=planes // 2, is_smooth=True,
                                              side_channel=planes, scales=num_scales))
        if sfam:
            self.sfam_module = SFAM(planes, num_levels, num_scales, compress_ratio=16)
        ch = planes * num_levels
        self.Norm = nn.BatchNorm2d(ch)
        self.loc = nn.ModuleList([nn.Conv2d(ch, 4 * num_anchors, 3, 1, 1) for _ in range(num_scales)])
        self.conf = nn.ModuleList([nn.Conv2d(ch, num_classes * num_anchors, 3, 1, 1) for _ in range(num_scales)])
        self.softmax = nn.Softmax(dim=-1)

    def backbone_features(self, x):
        if self.net_family == "vgg":
            feats = []
            for k, layer in enumerate(self.base):
                x = layer(x)
                if k in self.base_out:
                    feats.append(x)
            return feats
        return self.base(x, (2, 4))

    def ffm1(self, shallow, deep):
        return torch.cat((self.reduce(shallow),
                          F.interpolate(self.up_reduce(deep), scale_factor=2, mode="nearest")), 1)

    def mlfpn(self, base_feature):
        tum_outs = [self.unet1(self.leach[0](base_feature))]
        for i in range(1, self.num_levels):
            tum_outs.append(getattr(self, f"unet{i + 1}")(self.leach[i](base_feature), tum_outs[i - 1][-1]))
        sources = [torch.cat([outs[i - 1] for outs in tum_outs], 1) for i in range(self.num_scales, 0, -1)]
        if self.use_sfam:
            sources = self.sfam_module(sources)
        sources[0] = self.Norm(sources[0])
        return sources

    def forward(self, x):
        sources = self.mlfpn(self.ffm1(*self.backbone_features(x)))
        b = x.shape[0]
        loc = torch.cat([l(s).permute(0, 2, 3, 1).reshape(b, -1) for s, l in zip(sources, self.loc)], 1)
        conf = torch.cat([c(s).permute(0, 2, 3, 1).reshape(b, -1) for s, c in zip(sources, self.conf)], 1)
        loc = loc.view(b, -1, 4)
        conf = conf.view(b, -1, self.num_classes)
        if self.phase == "test":
            conf = self.softmax(conf)
        return loc, conf
