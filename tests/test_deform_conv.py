"""DeformConv2d: mmcv offset layout on ops.deformable_conv2d, against a bilinear-sampling reference (REFERENCE 2.6)."""
import mindspore as ms
import numpy as np
import pytest
import torch

from heads.ops.conv import conv2d
from heads.ops import DeformConv2d, ModulatedDeformConv2dWithOffsets
from tests.reference.torch_fpn import deform_conv2d as reference_deform_conv2d


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)


def test_each_kernel_point_samples_at_its_mmcv_position():
    """Input channels hold their own coordinates (x, y) and every output channel copies one input
    channel at one kernel point, so the output is the sampled position itself. Bilinear
    interpolation of a linear function is exact inside the map, so the positions must match to
    float precision: row i*s - p + ky*d + dy, column j*s - p + kx*d + dx, offset channels
    2*(g*K + k) (dy) and 2*(g*K + k) + 1 (dx), mask channel g*K + k."""
    rng = np.random.default_rng(0)
    h, w, k, stride, pad, dil, groups = 9, 11, 3, 2, 2, 2, 2
    kk = k * k
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # +10 keeps every value away from 0, so a wrongly placed mask cannot hide
    coords = np.stack([xx, yy] * groups).astype(np.float32)[None] + 10     # group g: channels 2g (x), 2g+1 (y)
    cin = coords.shape[1]
    weight = np.zeros((kk * cin, cin, k, k), np.float32)
    for point in range(kk):
        for c in range(cin):
            weight[point * cin + c, c, point // k, point % k] = 1
    # random targets inside the map, one per (group, kernel point, output pixel)
    ty = rng.uniform(0, h - 1, (groups, kk, ho, wo))
    tx = rng.uniform(0, w - 1, (groups, kk, ho, wo))
    ky, kx = np.divmod(np.arange(kk), k)
    base_y = np.arange(ho)[:, None] * stride - pad + ky[:, None, None] * dil
    base_x = np.arange(wo)[None, :] * stride - pad + kx[:, None, None] * dil
    offset = np.stack([ty - base_y, tx - base_x], 2).reshape(1, 2 * groups * kk, ho, wo).astype(np.float32)
    mask = rng.uniform(0.2, 1.0, (1, groups * kk, ho, wo)).astype(np.float32)

    net = DeformConv2d(cin, kk * cin, k, stride, pad, dil, deform_groups=groups)
    net.weight.set_data(ms.Tensor(weight))
    out = net(ms.Tensor(coords), ms.Tensor(offset), ms.Tensor(mask)).asnumpy()[0].reshape(kk, groups, 2, ho, wo)
    m = mask[0].reshape(groups, kk, ho, wo).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(out[:, :, 0], m * (tx.transpose(1, 0, 2, 3) + 10), rtol=0, atol=2e-4)
    np.testing.assert_allclose(out[:, :, 1], m * (ty.transpose(1, 0, 2, 3) + 10), rtol=0, atol=2e-4)


@pytest.mark.parametrize("kernel, stride, pad, dil, groups, deform_groups", [
    (3, 1, 1, 1, 1, 1), (3, 2, 1, 1, 2, 1), (3, 1, 2, 2, 1, 2), (1, 1, 0, 1, 1, 1), (5, 1, 2, 1, 1, 1)])
def test_matches_bilinear_reference_forward_and_backward(kernel, stride, pad, dil, groups, deform_groups):
    """Random fractional offsets up to 3 pixels (many samples partly or fully outside the 7x9 map:
    zero padding), random masks and bias; gradients of input, offsets, mask and weight too."""
    rng = np.random.default_rng(kernel * 100 + stride * 10 + dil + groups + deform_groups)
    cin, cout, h, w = 4, 6, 7, 9
    ho = (h + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
    kk = kernel * kernel
    x = rng.normal(size=(2, cin, h, w)).astype(np.float32)
    offset = rng.uniform(-3, 3, (2, 2 * deform_groups * kk, ho, wo)).astype(np.float32)
    mask = rng.uniform(0, 1, (2, deform_groups * kk, ho, wo)).astype(np.float32)
    cotangent = rng.normal(size=(2, cout, ho, wo)).astype(np.float32)
    net = DeformConv2d(cin, cout, kernel, stride, pad, dil, groups, deform_groups, bias=True)
    net.bias.set_data(ms.Tensor(rng.normal(size=cout).astype(np.float32)))

    def loss(a, b, c):
        return (net(a, b, c) * ms.Tensor(cotangent)).sum()

    inputs = [ms.Tensor(v) for v in (x, offset, mask)]
    out = net(*inputs)
    grads, (grad_w,) = ms.value_and_grad(loss, grad_position=(0, 1, 2), weights=[net.weight])(*inputs)[1]

    tx, to, tm = (torch.tensor(v, requires_grad=True) for v in (x, offset, mask))
    tw = torch.tensor(net.weight.asnumpy(), requires_grad=True)
    ref = reference_deform_conv2d(tx, to, tm, tw, torch.tensor(net.bias.asnumpy()), stride, pad, dil, groups,
                                  deform_groups)
    (ref * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_allclose(out.asnumpy(), ref.detach().numpy(), atol=1e-4)
    for ours, theirs in zip(list(grads) + [grad_w], (tx, to, tm, tw)):
        np.testing.assert_allclose(ours.asnumpy(), theirs.grad.numpy(), atol=1e-4)


def test_dcn_v1_is_a_unit_mask_and_arguments_are_checked():
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.normal(size=(1, 4, 6, 6)).astype(np.float32))
    offset = ms.Tensor(rng.uniform(-1, 1, (1, 18, 6, 6)).astype(np.float32))
    v1 = DeformConv2d(4, 3, modulated=False)
    v2 = DeformConv2d(4, 3)
    v2.weight.set_data(v1.weight.data)
    np.testing.assert_allclose(v1(x, offset).asnumpy(), v2(x, offset, ms.ops.ones((1, 9, 6, 6))).asnumpy(),
                               atol=1e-6)
    with pytest.raises(ValueError, match="needs a mask"):
        v2(x, offset)
    with pytest.raises(ValueError, match="takes no mask"):
        v1(x, offset, ms.ops.ones((1, 9, 6, 6)))
    with pytest.raises(ValueError, match="deform_groups"):
        DeformConv2d(6, 6, deform_groups=4)
    # mmcv's default init: U(-1/sqrt(n), 1/sqrt(n)), n = in_channels * 9
    bound = 1 / np.sqrt(4 * 9)
    assert np.abs(v1.weight.asnumpy()).max() <= bound and np.abs(v1.weight.asnumpy()).max() > 0.5 * bound


def test_dcnv2_with_learned_offsets_starts_as_half_a_conv_and_trains():
    """Zero offset conv: offsets 0, mask sigmoid(0) = 0.5, i.e. half the plain conv (as mmcv). The
    offset conv still receives a gradient through the sampling."""
    rng = np.random.default_rng(2)
    net = ModulatedDeformConv2dWithOffsets(4, 8, stride=2, groups=2)
    assert sorted(p.name for p in net.get_parameters()) == ["conv_offset.bias", "conv_offset.weight", "weight"]
    assert net.weight.shape == (8, 2, 3, 3) and net.conv_offset.weight.shape == (27, 4, 3, 3)
    assert not net.conv_offset.weight.asnumpy().any() and not net.conv_offset.bias.asnumpy().any()
    plain = conv2d(4, 8, 3, 2, 1, groups=2)
    plain.weight.set_data(net.weight.data)
    x = ms.Tensor(rng.normal(size=(2, 4, 9, 8)).astype(np.float32))
    np.testing.assert_allclose(net(x).asnumpy(), 0.5 * plain(x).asnumpy(), atol=1e-5)

    def loss(a):
        return (net(a) ** 2).sum()

    grads = ms.grad(loss, grad_position=None, weights=net.trainable_params())(x)
    by_name = {p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)}
    assert all(np.isfinite(g).all() for g in by_name.values())
    assert np.abs(by_name["conv_offset.weight"]).max() > 1e-4
    assert np.abs(by_name["conv_offset.bias"]).max() > 1e-4


def test_graph_mode():
    rng = np.random.default_rng(3)
    net = ModulatedDeformConv2dWithOffsets(4, 4)
    net.conv_offset.weight.set_data(ms.Tensor(rng.normal(0, 0.1, (27, 4, 3, 3)).astype(np.float32)))
    x = ms.Tensor(rng.normal(size=(1, 4, 5, 6)).astype(np.float32))
    eager = net(x).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = net(x).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph, eager, atol=1e-5)
