"""FPN neck: mmdetection v2 semantics against a PyTorch FPN, levels, sizes, init (REFERENCE 2.1)."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch

from m2det.backbones import ResNet
from m2det.necks import FPN
from tests.reference import torch_fpn as ref

LEVELS = [(8, 8), (12, 16), (16, 32)]


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)


def copy_to_torch(ours: FPN, theirs: torch.nn.Module) -> None:
    """Same names on both sides; every parameter used. Biases randomised (they start at 0)."""
    rng = np.random.default_rng(0)
    params = {p.name: p for p in ours.get_parameters()}
    state = {}
    for key, value in theirs.state_dict().items():
        if key.endswith("bias"):
            params[key].set_data(ms.Tensor(rng.normal(0, 0.3, value.shape).astype(np.float32)))
        data = params[key].asnumpy()
        assert tuple(data.shape) == tuple(value.shape), key
        state[key] = torch.from_numpy(data.copy())
    theirs.load_state_dict(state, strict=True)
    assert set(state) == set(params)


@pytest.mark.parametrize("sizes, relu", [([(13, 10), (7, 5), (4, 3)], False),   # odd: upsample by size
                                         ([(16, 12), (8, 6), (4, 3)], True)])
def test_matches_reference(sizes, relu):
    rng = np.random.default_rng(1)
    ours = FPN(LEVELS, out_channels=8, num_outs=5, relu_before_extra_convs=relu)
    theirs = ref.FPN([c for c, _ in LEVELS], out_channels=8, num_outs=5, relu_before_extra_convs=relu)
    copy_to_torch(ours, theirs)
    feats = [rng.normal(size=(2, c, h, w)).astype(np.float32) for (c, _), (h, w) in zip(LEVELS, sizes)]
    outs = ours(tuple(ms.Tensor(f) for f in feats))
    expected = theirs([torch.from_numpy(f) for f in feats])
    assert len(outs) == 5
    for o, e in zip(outs, expected):
        assert o.shape == tuple(e.shape)
        np.testing.assert_allclose(o.asnumpy(), e.detach().numpy(), atol=1e-4, rtol=1e-4)
    assert [tuple(o.shape[2:]) for o in outs] == ours.output_sizes(sizes)


def test_relu_before_extra_convs_acts_on_p6_only():
    """VFNet's option: P7 = conv(relu(P6)); P6 itself comes from the un-rectified P5."""
    rng = np.random.default_rng(2)
    feats = tuple(ms.Tensor(rng.normal(size=(1, c, s, s)).astype(np.float32)) for (c, _), s in zip(LEVELS, (8, 4, 2)))
    plain = FPN(LEVELS, 8)
    relu = FPN(LEVELS, 8, relu_before_extra_convs=True)
    ms.load_param_into_net(relu, {p.name: p.clone() for p in plain.get_parameters()})
    a, b = plain(feats), relu(feats)
    for i in range(4):
        np.testing.assert_allclose(a[i].asnumpy(), b[i].asnumpy(), atol=1e-6)
    assert np.abs(a[4].asnumpy() - b[4].asnumpy()).max() > 1e-3
    np.testing.assert_allclose(b[4].asnumpy(), relu.fpn_convs[4](ms.ops.relu(b[3])).asnumpy(), atol=1e-6)


def test_levels_sizes_and_names_on_resnet50():
    backbone = ResNet(50, (1, 2, 2, 2), (2, 3, 4), width=0.0625)
    assert backbone.output_levels == [(32, 8), (64, 16), (128, 32)]
    full = ResNet(50, (1, 2, 2, 2), (2, 3, 4)).output_levels
    assert full == [(512, 8), (1024, 16), (2048, 32)]
    assert FPN(full).output_levels == [(256, 8), (256, 16), (256, 32), (256, 64), (256, 128)]

    neck = FPN(backbone.output_levels, out_channels=16)
    assert neck.output_levels == [(16, s) for s in (8, 16, 32, 64, 128)]
    sizes = backbone.output_sizes((100, 68))
    assert sizes == [(13, 9), (7, 5), (4, 3)]
    assert neck.output_sizes(sizes) == [(13, 9), (7, 5), (4, 3), (2, 2), (1, 1)]
    outs = neck(backbone(ms.Tensor(np.zeros((1, 3, 100, 68), np.float32))))
    assert [tuple(o.shape[1:]) for o in outs] == [(16, h, w) for h, w in neck.output_sizes(sizes)]
    # mmdetection's 1333x800: P3-P7 of 167x100 ... 11x7
    assert neck.output_sizes(backbone.output_sizes((800, 1333))) == \
        [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]

    names = sorted(p.name for p in neck.get_parameters())
    assert names == sorted([f"lateral_convs.{i}.{k}" for i in range(3) for k in ("weight", "bias")] +
                           [f"fpn_convs.{i}.{k}" for i in range(5) for k in ("weight", "bias")])
    assert neck.fpn_convs[3].in_channels == 16 and neck.fpn_convs[3].stride == (2, 2)


def test_extra_sources_start_level_and_checks():
    rng = np.random.default_rng(3)
    feats = tuple(ms.Tensor(rng.normal(size=(1, c, s, s)).astype(np.float32)) for (c, _), s in zip(LEVELS, (8, 4, 2)))
    on_input = FPN(LEVELS, 8, add_extra_convs="on_input")        # mmdetection v2 RetinaNet
    assert on_input.fpn_convs[3].in_channels == 16 and on_input.fpn_convs[4].in_channels == 8
    outs = on_input(feats)
    np.testing.assert_allclose(outs[3].asnumpy(), on_input.fpn_convs[3](feats[2]).asnumpy(), atol=1e-6)
    assert FPN(LEVELS, 8, add_extra_convs=True).fpn_convs[3].in_channels == 16
    pooled = FPN(LEVELS, 8, num_outs=5, add_extra_convs=False)    # max_pool2d(1, stride=2)
    assert len(pooled.fpn_convs) == 3
    outs = pooled(feats)
    np.testing.assert_allclose(outs[3].asnumpy(), outs[2].asnumpy()[:, :, ::2, ::2])
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    later = FPN(LEVELS, 8, num_outs=4, start_level=1)
    assert later.output_levels == [(8, 16), (8, 32), (8, 64), (8, 128)]
    assert [tuple(o.shape[2:]) for o in later(feats)] == [(4, 4), (2, 2), (1, 1), (1, 1)]
    with pytest.raises(ValueError, match="num_outs"):
        FPN(LEVELS, 8, num_outs=2)
    with pytest.raises(ValueError, match="add_extra_convs"):
        FPN(LEVELS, 8, add_extra_convs="on_top")


def test_xavier_uniform_init():
    neck = FPN([(64, 8), (128, 16), (256, 32)], out_channels=64)
    params = {p.name: p.asnumpy() for p in neck.get_parameters()}
    for name, fan_in, fan_out in [("fpn_convs.1.weight", 64 * 9, 64 * 9), ("lateral_convs.2.weight", 256, 64),
                                  ("fpn_convs.4.weight", 64 * 9, 64 * 9)]:
        w = params[name]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.05
    assert all(not v.any() for k, v in params.items() if k.endswith("bias"))


def test_graph_mode_matches_pynative():
    rng = np.random.default_rng(4)
    neck = FPN(LEVELS, 8, relu_before_extra_convs=True)
    feats = tuple(ms.Tensor(rng.normal(size=(1, c, h, w)).astype(np.float32))
                  for (c, _), (h, w) in zip(LEVELS, [(7, 5), (4, 3), (2, 2)]))
    eager = [o.asnumpy() for o in neck(feats)]
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = [o.asnumpy() for o in neck(feats)]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    for a, b in zip(eager, graph):
        np.testing.assert_allclose(a, b, atol=1e-5)
