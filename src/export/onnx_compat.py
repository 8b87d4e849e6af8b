"""Exact, ONNX-convertible stand-ins for the ops MindSpore 2.8 cannot export to ONNX.

MindSpore 2.8's ONNX exporter has no converter for
- `MaxPool3DWithArgmax`, which `nn.MaxPool2d(pad_mode="pad")` uses (explicit padding or
  ceil mode: VGG's pool 16 and pool5, ResNet's stem pool), and
- `ResizeNearestNeighborV2`, which `ops.interpolate(mode="nearest")` uses (the TUM decoder and
  FFMv1's upsampling), and
- `GroupNorm` (the dense heads' towers).

The replacements below give bit-identical results:
- ceil-mode pooling with kernel == stride and no padding is "same" pooling (the extra window sits
  at the bottom/right in both);
- explicit padding p < kernel is edge replication (built from slices and a concat) followed by
  "valid" pooling: every window that reaches into the padding also holds the edge value the
  padding copies, so its maximum is unchanged;
- `ResizeNearestNeighbor` (the older primitive, exported as ONNX Resize) picks the same source
  pixels floor(dst * in / out) as `ops.interpolate(mode="nearest")`.
- GroupNorm is written out with reshapes and means: the same formula, float rounding aside
  (the tests check 1e-4).
TUM and FFMv1 call the resize from their construct, so they are wrapped by cells that reuse
their layers and repeat their few lines of data flow with the exportable resize;
tests/test_export.py checks the rewritten network against the original.
"""
from __future__ import annotations

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from m2det.necks.ffm import FFMv1
from m2det.necks.tum import TUM
from m2det.cells import replace_child, walk


class UnsupportedForExport(ValueError):
    """A layer that has no exact ONNX-convertible equivalent here."""


def exportable_nearest_resize(x: Tensor, size) -> Tensor:
    """Nearest resize of NCHW `x` to `size` (h, w), identical to m2det.layers.nearest_resize."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return ops.ResizeNearestNeighbor(tuple(size))(x)


class EdgePadMaxPool2d(nn.Cell):
    """Max pooling with symmetric padding (ph, pw) < kernel, as edge replication + "valid" pooling."""

    def __init__(self, kernel_size: tuple, stride: tuple, padding: tuple):
        super().__init__()
        self.ph, self.pw = padding
        self.pool = nn.MaxPool2d(kernel_size=kernel_size, stride=stride, pad_mode="valid")

    def construct(self, x: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        rows = (x,)
        for _ in range(self.ph):
            rows = (x[:, :, 0:1],) + rows + (x[:, :, h - 1:h],)
        x = ops.concat(rows, axis=2)
        cols = (x,)
        for _ in range(self.pw):
            cols = (x[:, :, :, 0:1],) + cols + (x[:, :, :, w - 1:w],)
        return self.pool(ops.concat(cols, axis=3))


def exportable_max_pool(pool: nn.MaxPool2d, path: str) -> nn.Cell:
    """The exportable equivalent of a padded or ceil-mode `nn.MaxPool2d`."""
    attrs = pool.max_pool.attrs
    kernel, stride = tuple(attrs["ksize"][1:]), tuple(attrs["strides"][1:])
    padding, ceil_mode = tuple(attrs["pads"][1:]), bool(attrs.get("ceil_mode", False))
    if any(d != 1 for d in attrs.get("dilation", (1, 1, 1))):
        raise UnsupportedForExport(f"{path}: dilated max pooling has no ONNX-exportable equivalent here")
    if ceil_mode and any(padding):
        raise UnsupportedForExport(f"{path}: ceil-mode max pooling with padding {padding} has no exact "
                                   f"ONNX-exportable equivalent here")
    if ceil_mode:
        if kernel != stride:
            raise UnsupportedForExport(f"{path}: ceil-mode max pooling with kernel {kernel} != stride {stride} "
                                       f"has no exact ONNX-exportable equivalent here")
        return nn.MaxPool2d(kernel_size=kernel, stride=stride, pad_mode="same")
    if any(p >= k for p, k in zip(padding, kernel)):
        raise UnsupportedForExport(f"{path}: max pooling padding {padding} >= kernel {kernel}")
    if not any(padding):
        return nn.MaxPool2d(kernel_size=kernel, stride=stride, pad_mode="valid")
    return EdgePadMaxPool2d(kernel, stride, padding)


class ExportableGroupNorm(nn.Cell):
    """nn.GroupNorm as reshape -> mean / biased variance per group -> normalise -> affine."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm
        self.groups = int(norm.num_groups)
        self.eps = float(norm.eps)
        self.affine = bool(norm.affine)

    def construct(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = x.reshape(n, self.groups, -1)
        mean = g.mean(axis=2, keep_dims=True)
        centred = g - mean
        var = (centred * centred).mean(axis=2, keep_dims=True)
        y = (centred / ops.sqrt(var + self.eps)).reshape(n, c, h, w)
        if self.affine:
            y = y * self.norm.gamma.reshape(1, c, 1, 1) + self.norm.beta.reshape(1, c, 1, 1)
        return y


class ExportableTUM(nn.Cell):
    """A TUM's layers with the exportable resize (same data flow as TUM.construct)."""

    def __init__(self, tum: TUM):
        super().__init__()
        self.tum = tum
        self.num_scales = tum.num_scales

    def construct(self, x: Tensor) -> tuple:
        encoded = [x]
        for i in range(self.num_scales - 1):
            encoded.append(self.tum.encoder[i](encoded[-1]))
        decoded = self.tum.top(encoded[-1])
        outs = [decoded]
        for i in range(self.num_scales - 1):
            skip = encoded[self.num_scales - 2 - i]
            decoded = exportable_nearest_resize(decoded, skip.shape[2:]) + self.tum.lateral[i](skip)
            outs.append(self.tum.smooth[i](decoded))
        return tuple(outs)


class ExportableFFMv1(nn.Cell):
    """FFMv1's layers with the exportable resize (same data flow as FFMv1.construct)."""

    def __init__(self, ffm: FFMv1):
        super().__init__()
        self.ffm = ffm

    def construct(self, shallow: Tensor, deep: Tensor) -> Tensor:
        shallow = self.ffm.reduce_shallow(shallow)
        deep = exportable_nearest_resize(self.ffm.reduce_deep(deep), shallow.shape[2:])
        return ops.cat((shallow, deep), axis=1)


def make_onnx_compatible(network: nn.Cell) -> list[str]:
    """Rewrite `network` in place (use a copy); returns the paths of the cells replaced."""
    replaced = []
    paths = {id(c): n for n, c in network.cells_and_names()}
    for parent, name, child in list(walk(network)):
        path = f"{paths.get(id(parent), '')}.{name}".lstrip(".")
        if isinstance(child, nn.MaxPool2d) and child.pad_mode.upper() == "PAD":
            replace_child(parent, name, exportable_max_pool(child, path))
        elif isinstance(child, TUM):
            replace_child(parent, name, ExportableTUM(child))
        elif isinstance(child, FFMv1):
            replace_child(parent, name, ExportableFFMv1(child))
        elif isinstance(child, nn.GroupNorm):
            replace_child(parent, name, ExportableGroupNorm(child))
        else:
            continue
        replaced.append(path)
    return replaced
