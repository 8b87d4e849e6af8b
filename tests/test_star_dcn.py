"""VFNet's star-shaped deformable conv (REFERENCE 2.6) through heads.ops.DeformConv2d.

The input's two channels hold their own (y, x) coordinates and every output channel copies one
input channel at one kernel point, so the output is the sampled position itself (bilinear
interpolation of a linear function is exact). For a known (l, t, r, b) box the 9 kernel points
must land exactly on the box's corners, edge midpoints and centre - which pins the offset layout
all the way through MindSpore's deformable_conv2d.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from heads.vfnet_head import VFNetHead, star_base_offsets, star_dcn_offset
from heads.ops import DeformConv2d

H, W = 12, 14


def coordinate_conv():
    """DeformConv2d(2 -> 18): output 2k = input y at kernel point k, 2k + 1 = input x."""
    conv = DeformConv2d(2, 18, 3, 1, 1, modulated=True)
    weight = np.zeros((18, 2, 3, 3), np.float32)
    for k in range(9):
        weight[2 * k, 0, k // 3, k % 3] = 1.0
        weight[2 * k + 1, 1, k // 3, k % 3] = 1.0
    conv.weight.set_data(Tensor(weight))
    return conv


def coordinates():
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    return np.stack([yy, xx]).astype(np.float32)[None] + 100.0       # away from 0: padding cannot hide


@pytest.mark.parametrize("stride, ltrb_cells", [(8, (2.0, 1.0, 3.0, 2.0)), (16, (1.5, 2.25, 0.5, 3.75))])
def test_star_points_land_on_corners_midpoints_and_centre(stride, ltrb_cells):
    l, t, r, b = ltrb_cells
    distances = np.broadcast_to(np.array(ltrb_cells, np.float32).reshape(1, 4, 1, 1) * stride,
                                (1, 4, H, W)).copy()
    offset = star_dcn_offset(Tensor(distances), float(stride))
    assert offset.shape == (1, 18, H, W)
    mask = ops.ones((1, 9, H, W), ms.float32)
    out = coordinate_conv()(Tensor(coordinates()), offset, mask).asnumpy()[0].reshape(9, 2, H, W) - 100.0
    expected_dy = np.array([-t, -t, -t, 0, 0, 0, b, b, b])
    expected_dx = np.array([-l, 0, r, -l, 0, r, -l, 0, r])
    # every location whose star lies inside the map (exact bilinear sampling there)
    ys = np.arange(int(np.ceil(t)), H - int(np.ceil(b)))
    xs = np.arange(int(np.ceil(l)), W - int(np.ceil(r)))
    assert ys.size and xs.size
    for k in range(9):
        np.testing.assert_allclose(out[k, 0][np.ix_(ys, xs)], ys[:, None] + expected_dy[k] + 0 * xs, atol=1e-4)
        np.testing.assert_allclose(out[k, 1][np.ix_(ys, xs)], xs[None, :] + expected_dx[k] + 0 * ys[:, None],
                                   atol=1e-4)
    # the sampled points of one location, read as a box: corners (x1, y1), (x2, y2) and centre
    i, j = ys[0], xs[0]
    px, py = out[:, 1, i, j], out[:, 0, i, j]
    np.testing.assert_allclose([px[0], py[0], px[8], py[8]], [j - l, i - t, j + r, i + b], atol=1e-4)
    np.testing.assert_allclose([px[4], py[4]], [j, i], atol=1e-4)


def test_base_offsets_are_the_regular_grid_interleaved_dy_dx():
    np.testing.assert_array_equal(star_base_offsets().reshape(9, 2),
                                  [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0], [1, 1]])
    # a zero-size box samples every kernel point at the centre: offset = -grid position
    zero = star_dcn_offset(Tensor(np.zeros((1, 4, 2, 2), np.float32)), 8.0).asnumpy()
    np.testing.assert_allclose(zero[0, :, 0, 0], -star_base_offsets())


def test_only_a_tenth_of_the_gradient_reaches_the_box():
    d = Tensor(np.full((1, 4, 2, 3), 16.0, np.float32))
    weight = Tensor(np.random.default_rng(0).normal(size=(1, 18, 2, 3)).astype(np.float32))
    grad = ms.grad(lambda x: (star_dcn_offset(x, 8.0, 0.1) * weight).sum())(d).asnumpy()
    w = weight.asnumpy()[0].reshape(9, 2, 2, 3)
    # dL/dl = -sum over kernel points with dx = -l of w_dx, etc., times 0.1 / stride
    dl = -(w[[0, 3, 6], 1]).sum(0)
    dt = -(w[[0, 1, 2], 0]).sum(0)
    dr = (w[[2, 5, 8], 1]).sum(0)
    db = (w[[6, 7, 8], 0]).sum(0)
    np.testing.assert_allclose(grad[0], 0.1 / 8.0 * np.stack([dl, dt, dr, db]), rtol=1e-5, atol=1e-7)


def test_vfnet_head_uses_the_deformable_convs_with_unit_mask():
    head = VFNetHead([(8, 8)], 2, feat_channels=8, stacked_convs=1)
    assert isinstance(head.vfnet_cls_dconv, DeformConv2d) and head.vfnet_cls_dconv.modulated
    assert isinstance(head.vfnet_reg_refine_dconv, DeformConv2d)
    assert head.reg_denoms == (64.0,)
    outputs = head((Tensor(np.random.default_rng(1).normal(size=(1, 8, 5, 6)).astype(np.float32)),))
    cls, init, refine = (o.asnumpy() for o in outputs[:3])
    assert cls.shape == (1, 30, 2) and init.shape == refine.shape == (1, 30, 4)
    assert (init > 0).all() and (refine > 0).all()      # exp-parameterised distances
