"""PyTorch references for the FPN detectors' parts: FPN neck, ResNet/ResNeXt(+DCNv2) trunk, DCN sampling.

Test-only, written from the papers' and mmdetection's documented behaviour (not copied code):

    FPN            mmdetection v2 `FPN(add_extra_convs='on_output')`: lateral 1x1 (bias) -> top-down
                   nearest upsample to the finer lateral's size + add -> 3x3 (bias) -> extra 3x3/2
                   convs on the last output (ReLU before all but the first when asked).
                   Names: lateral_convs.i.{weight,bias}, fpn_convs.i.{weight,bias} (mmdetection
                   has a ConvModule in between: lateral_convs.i.conv.weight).
    ResNet         torchvision names with ResNeXt's grouped conv2 (width = planes * width_per_group / 64
                   * groups) and DCNv2 conv2 (conv2.weight, conv2.conv_offset.{weight,bias}).
    deform_conv2d  bilinear-sampling DCN in plain tensor ops (autograd gives its gradients), mmcv
                   offset layout: channel 2*(g*K + k) = dy, 2*(g*K + k) + 1 = dx; mask g*K + k.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- deformable conv
def _bilinear_zero_pad(img: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """img (N, C, H, W); py, px (N, P) positions -> (N, C, P); corners outside the image count 0."""
    n, c, h, w = img.shape
    y0, x0 = torch.floor(py), torch.floor(px)
    flat = img.reshape(n, c, h * w)
    out = 0
    for yc, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xc, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            valid = (yc >= 0) & (yc <= h - 1) & (xc >= 0) & (xc <= w - 1)
            idx = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).long()
            vals = torch.gather(flat, 2, idx[:, None, :].expand(n, c, idx.shape[1]))
            out = out + vals * (wy * wx * valid)[:, None, :]
    return out


def deform_conv2d(x, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                  deform_groups=1):
    """Modulated deformable conv (mask None = DCNv1) by explicit sampling: (N, Cout, Ho, Wo)."""
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    off = offset.reshape(n, deform_groups, k, 2, ho, wo)
    msk = None if mask is None else mask.reshape(n, deform_groups, k, ho, wo)
    oy = torch.arange(ho, dtype=x.dtype)[:, None] * stride - padding
    ox = torch.arange(wo, dtype=x.dtype)[None, :] * stride - padding
    cpg = cin // deform_groups
    cols = []   # per kernel point: (N, Cin, Ho*Wo)
    for kk in range(k):
        ky, kx = divmod(kk, kw)
        per_group = []
        for g in range(deform_groups):
            py = (oy + ky * dilation + off[:, g, kk, 0]).reshape(n, -1)
            px = (ox + kx * dilation + off[:, g, kk, 1]).reshape(n, -1)
            v = _bilinear_zero_pad(x[:, g * cpg:(g + 1) * cpg], py, px)
            if msk is not None:
                v = v * msk[:, g, kk].reshape(n, 1, -1)
            per_group.append(v)
        cols.append(torch.cat(per_group, 1))
    col = torch.stack(cols, 2)                     # (N, Cin, K, Ho*Wo)
    col = col.reshape(n, groups, cin // groups * k, ho * wo)
    wmat = weight.reshape(groups, cout // groups, cin // groups * k)
    out = torch.einsum("gok,ngkp->ngop", wmat, col).reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


class ModulatedDeformConv2dPack(nn.Module):
    """mmcv's DCNv2 layer: zero-initialised conv_offset -> (offset, sigmoid(mask)) -> deform conv."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, deform_groups=1):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.conv_offset = nn.Conv2d(cin, deform_groups * 3 * kernel_size ** 2, kernel_size, stride, padding,
                                     dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x):
        out = self.conv_offset(x)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        return deform_conv2d(x, torch.cat((o1, o2), 1), torch.sigmoid(mask), self.weight, None, self.stride,
                             self.padding, self.dilation, self.groups, self.deform_groups)


# ----------------------------------------------------------------------------- ResNet / ResNeXt
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, groups=1, width_per_group=64, dcn=False):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if dcn:
            self.conv2 = ModulatedDeformConv2dPack(width, width, 3, stride, 1, groups=groups)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-named ResNet/ResNeXt trunk (no fc) with optional DCNv2 per stage."""

    def __init__(self, depth=50, layer_strides=(1, 2, 2, 2), width=1.0, groups=1, width_per_group=64,
                 dcn_stages=(False, False, False, False)):
        super().__init__()
        blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
        stem = max(1, int(round(64 * width)))
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for i, (n, s) in enumerate(zip(blocks, layer_strides)):
            planes = max(1, int(round(64 * 2 ** i * width)))
            layer = []
            for j in range(n):
                layer.append(Bottleneck(inplanes, planes, s if j == 0 else 1, groups, width_per_group,
                                        dcn_stages[i]))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x, out_layers=(2, 3, 4)):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            if i in out_layers:
                outs.append(x)
        return outs


# ----------------------------------------------------------------------------- FPN
class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels=256, num_outs=5, start_level=0,
                 relu_before_extra_convs=False):
        super().__init__()
        self.start_level = start_level
        self.relu_before_extra_convs = relu_before_extra_convs
        self.num_outs = num_outs
        used = list(in_channels[start_level:])
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in used])
        convs = [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in used]
        convs += [nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
                  for _ in range(num_outs - len(used))]
        self.fpn_convs = nn.ModuleList(convs)

    def forward(self, inputs):
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        outs = [self.fpn_convs[i](lat) for i, lat in enumerate(laterals)]
        for i in range(len(laterals), self.num_outs):
            src = outs[-1]
            if i > len(laterals) and self.relu_before_extra_convs:
                src = F.relu(src)
            outs.append(self.fpn_convs[i](src))
        return outs
