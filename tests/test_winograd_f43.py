"""Winograd F(4x4, 3x3) inference cells (m2det/winograd.py tile=4, m2det/kernels/winograd_f43.c)
and the per-layer tile choice by map size (test.winograd_tile).

Independent truth: the algorithm's identity on one tile in NumPy with the transform matrices
written here, the input transform against B^T d B by hand-written tiling (exact on small
integers), single layers against a float64 direct convolution written here, and a whole folded
detector against its direct-convolution self.
"""
import copy

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from m2det import winograd
from m2det.input_sizes import cell_input_sizes
from src.builder import build_detector, inference_options
from src.config import load_config
from src.inference.fast_network import inference_network

TINY = "tests/configs/tiny.yaml"
# F(4x4, 3x3) with the points 0, 1, -1, 2, -2, infinity (Lavin & Gray 2016)
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)


def setup_module():
    assert winograd.available(), f"{winograd.LIBRARY} missing: run `bash scripts/make.sh`"


def conv_float64(x, weight, bias=None):
    """3x3, stride 1, padding 1 cross-correlation in float64."""
    n, c, h, w = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, weight.shape[0], h, w))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,kc->nkhw", padded[:, :, i:i + h, j:j + w], weight[:, :, i, j].astype(np.float64))
    return y if bias is None else y + bias.astype(np.float64)[None, :, None, None]


def rel_error(expected, got):
    return float(np.abs(expected - got).max() / max(np.abs(expected).max(), 1e-12))


def test_f43_identity_on_one_tile():
    # Y = A^T [(G g G^T) . (B^T d B)] A is the 4x4 valid correlation of a 6x6 patch with a 3x3 filter
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
    y = AT @ ((winograd.G43 @ g @ winograd.G43.T) * (BT @ d @ BT.T)) @ AT.T
    expected = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_f43_weight_transform_is_g_g_gt():
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 3)).astype(np.float32)
    u = winograd.transform_weight(w, tile=4)
    assert u.shape == (36, 3, 2) and u.dtype == np.float32
    for k in range(3):
        for c in range(2):
            expected = winograd.G43 @ w[k, c].astype(np.float64) @ winograd.G43.T
            np.testing.assert_allclose(u[:, k, c].reshape(6, 6), expected, rtol=1e-6, atol=1e-6)


def test_f43_input_transform_exact():
    # x (2, 3, 7, 6): tiles of 6x6 over the input padded by 1 (and up to 3 more at the bottom/right);
    # small integers, so float32 sums are exact
    x = np.arange(2 * 3 * 7 * 6, dtype=np.float32).reshape(2, 3, 7, 6) % 7 - 3
    cell = winograd.WinogradConv2d(np.zeros((1, 3, 3, 3), np.float32), tile=4)
    v = cell.input_transform(ms.Tensor(x)).asnumpy()
    th, tw = 2, 2
    assert v.shape == (36, 3, 2 * th * tw)
    padded = np.zeros((2, 3, 4 * th + 2, 4 * tw + 2))
    padded[:, :, 1:8, 1:7] = x
    for n in range(2):
        for c in range(3):
            for ty in range(th):
                for tx in range(tw):
                    d = padded[n, c, 4 * ty:4 * ty + 6, 4 * tx:4 * tx + 6]
                    np.testing.assert_array_equal(v[:, c, n * th * tw + ty * tw + tx], (BT @ d @ BT.T).reshape(36))


# sizes: multiples of 4, odd, not multiples of 4, smaller than a tile; batch > 1; with and without bias
@pytest.mark.parametrize("n,c,k,h,w,bias", [(1, 16, 8, 8, 8, True), (2, 5, 3, 7, 6, True), (2, 3, 4, 1, 2, False),
                                            (1, 32, 24, 9, 13, False), (3, 8, 5, 5, 4, True),
                                            (1, 128, 64, 20, 18, True)])
def test_f43_matches_float64_direct_convolution_graph_mode(n, c, k, h, w, bias):
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        rng = np.random.default_rng(n * 100 + c)
        weight = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32) if bias else None
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        expected = conv_float64(x, weight, b)
        got = winograd.WinogradConv2d(weight, b, tile=4)(ms.Tensor(x)).asnumpy()
        assert got.shape == expected.shape
        # float32 rounding, amplified by the transforms' larger coefficients (F(2x2): ~1e-7 here)
        assert rel_error(expected, got) < 2e-5
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_f43_is_inference_only_and_tiles_are_checked():
    conv = nn.Conv2d(4, 4, 3, pad_mode="pad", padding=1, has_bias=True)
    with pytest.raises(ValueError, match="tile=2"):
        winograd.WinogradConv2d(conv.weight, conv.bias, trainable=True, tile=4)
    with pytest.raises(ValueError, match="tile must be one of"):
        winograd.WinogradConv2d(conv.weight.asnumpy(), tile=3)
    with pytest.raises(ValueError, match="tile=2"):
        winograd.use_winograd(nn.SequentialCell([conv]), min_channels=4, trainable=True, tile=4)


def test_tile_for_map_sizes():
    assert winograd.tile_for(160, 160) == 4
    assert winograd.tile_for(16, 16) == 4
    assert winograd.tile_for(15, 40) == 2            # the smaller side decides
    assert winograd.tile_for(6, 6) == 2
    assert winograd.tile_for(5, 5) is None            # direct
    assert winograd.tile_for(1, 1) is None


def _pyramid():
    """Three 3x3 convolutions at 20x20, 10x10 and 5x5 for a (N, 16, 20, 20) input."""
    ms.set_seed(5)
    conv = [nn.Conv2d(16, 16, 3, pad_mode="pad", padding=1, has_bias=True) for _ in range(3)]
    return nn.SequentialCell([conv[0], nn.MaxPool2d(2, 2), conv[1], nn.MaxPool2d(2, 2), conv[2]])


def test_cell_input_sizes_leave_mode_and_training_flag():
    net = _pyramid()
    net.set_train(True)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        sizes = cell_input_sizes(net, (1, 16, 20, 20), lambda c: isinstance(c, nn.Conv2d))
        assert ms.get_context("mode") == ms.GRAPH_MODE
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert net.training
    assert sorted(sizes.values()) == [(5, 5), (10, 10), (20, 20)]


class _SharedConv(nn.Cell):
    """One convolution applied to a 5x5 and a 20x20 map (like a head shared by FPN levels)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, pad_mode="pad", padding=1, has_bias=True)
        self.pool = nn.AvgPool2d(4, 4)

    def construct(self, x):
        return self.conv(x).sum() + self.conv(self.pool(x)).sum()       # the small map last


def test_a_shared_convolution_is_sized_by_its_largest_map():
    net = _SharedConv()
    assert list(cell_input_sizes(net, (1, 16, 20, 20), lambda c: isinstance(c, nn.Conv2d)).values()) == [(20, 20)]
    fast = copy.deepcopy(net)
    winograd.use_winograd(fast, min_channels=16, tile=4, input_shape=(1, 16, 20, 20))
    assert isinstance(fast.conv, winograd.WinogradConv2d) and fast.conv.tile == 4


def test_use_winograd_picks_the_tile_by_map_size():
    net = _pyramid()
    net.set_train(False)
    fast = copy.deepcopy(net)
    replaced = winograd.use_winograd(fast, min_channels=16, tile=4, input_shape=(1, 16, 20, 20))
    assert replaced == ["0", "2"]
    assert [type(c).__name__ for c in fast.cell_list] == ["WinogradConv2d", "MaxPool2d", "WinogradConv2d",
                                                          "MaxPool2d", "Conv2d"]
    assert (fast.cell_list[0].tile, fast.cell_list[2].tile) == (4, 2)
    assert winograd.describe(fast) == "F(4x4, 3x3): 1, F(2x2, 3x3): 1"
    x = ms.Tensor(np.random.default_rng(2).standard_normal((3, 16, 20, 20)).astype(np.float32))
    assert rel_error(net(x).asnumpy(), fast(x).asnumpy()) < 1e-5
    # without an input shape: F(4x4) for every eligible convolution
    everywhere = copy.deepcopy(net)
    winograd.use_winograd(everywhere, min_channels=16, tile=4)
    assert winograd.describe(everywhere) == "F(4x4, 3x3): 3"
    assert rel_error(net(x).asnumpy(), everywhere(x).asnumpy()) < 1e-5


def test_narrower_layers_take_f43_only():
    # 64 channels: F(4x4) at 20 px, direct at 10 px (F(2x2) needs min_channels=128 there)
    ms.set_seed(6)
    net = nn.SequentialCell([nn.Conv2d(64, 64, 3, pad_mode="pad", padding=1), nn.MaxPool2d(2, 2),
                             nn.Conv2d(64, 64, 3, pad_mode="pad", padding=1)])
    net.set_train(False)
    fast = copy.deepcopy(net)
    assert winograd.use_winograd(fast, tile=4, input_shape=(1, 64, 20, 20)) == ["0"]
    assert fast.cell_list[0].tile == 4 and isinstance(fast.cell_list[2], nn.Conv2d)
    x = ms.Tensor(np.random.default_rng(4).standard_normal((1, 64, 20, 20)).astype(np.float32))
    assert rel_error(net(x).asnumpy(), fast(x).asnumpy()) < 2e-5
    f23 = copy.deepcopy(net)
    assert winograd.use_winograd(f23, tile=2) == []                     # the F(2x2) rule: >= 128


def test_detector_inference_with_f43_unchanged():
    cfg = load_config(TINY)
    ms.set_seed(3)
    detector = build_detector(cfg)
    detector.set_train(False)
    size = cfg.model.input_size
    fast = copy.deepcopy(detector)
    replaced = winograd.use_winograd(fast, min_channels=8, tile=4, input_shape=(1, 3, size, size))
    tiles = [c.tile for n, c in fast.cells_and_names() if n in replaced]
    assert tiles.count(4) >= 4 and tiles.count(2) >= 2
    assert any(winograd.eligible(c, 8) for _, c in fast.cells_and_names())      # the tiny maps stay direct
    x = ms.Tensor(np.random.default_rng(0).uniform(-100, 100, (2, 3, size, size)).astype(np.float32))
    for a, b in zip(detector(x), fast(x)):
        assert rel_error(a.asnumpy(), b.asnumpy()) < 1e-4


def test_inference_options_read_the_tile():
    cfg = load_config(TINY)
    options = inference_options(cfg)
    assert options["winograd_tile"] == 4                     # configs/base.yaml's default
    assert options["input_shape"] == (1, 3, 128, 128)
    assert inference_options(load_config(TINY, ["test.winograd_tile=2"]))["winograd_tile"] == 2
    with pytest.raises(ValueError, match="test.winograd_tile"):
        inference_options(load_config(TINY, ["test.winograd_tile=3"]))


def test_inference_network_uses_the_tile():
    def network():
        ms.set_seed(0)
        return nn.SequentialCell([nn.Conv2d(128, 128, 3, pad_mode="pad", padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                                  nn.Conv2d(128, 128, 3, pad_mode="pad", padding=1)])

    net = network()
    f43 = inference_network(net, fold_bn=True, use_winograd=True, device_target="CPU", winograd_tile=4,
                            input_shape=(1, 128, 16, 20))
    assert winograd.describe(f43) == "F(4x4, 3x3): 2"
    f23 = inference_network(net, fold_bn=True, use_winograd=True, device_target="CPU", winograd_tile=2,
                            input_shape=(1, 128, 16, 20))
    assert winograd.describe(f23) == "F(2x2, 3x3): 2"
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 128, 16, 20)).astype(np.float32))
    net.set_train(False)
    assert rel_error(net(x).asnumpy(), f43(x).asnumpy()) < 2e-5


def test_m2det320_shaped_network_matches_direct_convolutions():
    # M2Det-320's maps (160 .. 1 px, every tile choice) at half the VGG width and 2 TUM levels:
    # random 8-level stacks amplify float32 rounding ~2x per TUM, this one does not
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        cfg = load_config("configs/m2det320_vgg.yaml", ["model.backbone.width=0.5", "model.neck.mlfpn.num_levels=2"])
        ms.set_seed(1)
        detector = build_detector(cfg)
        options = inference_options(cfg)
        assert options["winograd_tile"] == 4 and options["input_shape"] == (1, 3, 320, 320)
        fast = inference_network(detector, **options, device_target="CPU")
        tiles = winograd.describe(fast)
        assert "F(4x4, 3x3)" in tiles and "F(2x2, 3x3)" in tiles, tiles
        direct = inference_network(detector, fold_bn=True, use_winograd=False, device_target="CPU")
        x = ms.Tensor(np.random.default_rng(0).uniform(-120, 120, (1, 3, 320, 320)).astype(np.float32))
        for a, b in zip(direct(x), fast(x)):
            assert rel_error(a.asnumpy(), b.asnumpy()) < 1e-5                  # measured ~1e-6
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
