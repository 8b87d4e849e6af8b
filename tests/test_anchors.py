"""AnchorGenerator (REFERENCE 2.1): exact anchors for tiny cases worked out by hand."""
from math import sqrt

import numpy as np
import pytest

from heads.anchors import AnchorGenerator, feature_sizes


def test_atss_layout_one_square_anchor_of_8_strides_no_half_shift():
    anchors, counts = AnchorGenerator.atss(strides=(8, 16)).grid_anchors([(2, 3), (1, 1)])
    # level 0: 64 x 64 anchors centred at (8x, 8y), row-major; level 1: one 128 x 128 at (0, 0)
    expected = np.array([
        [-32, -32, 32, 32], [-24, -32, 40, 32], [-16, -32, 48, 32],
        [-32, -24, 32, 40], [-24, -24, 40, 40], [-16, -24, 48, 40],
        [-64, -64, 64, 64],
    ], np.float32)
    assert counts == [6, 1]
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, expected)


def test_retinanet_layout_ratios_outer_scales_inner():
    gen = AnchorGenerator.retinanet(strides=(8,))
    assert gen.num_base_anchors == 9
    anchors, counts = gen.grid_anchors([(1, 2)])
    assert counts == [18]
    # base side 8 * 4 * 2^(i/3) = 32, 32*2^(1/3), 32*2^(2/3); ratio r = h / w keeps the area:
    # w = side / sqrt(r), h = side * sqrt(r); rows: ratio 0.5 x 3 scales, ratio 1 x 3, ratio 2 x 3
    sides = [32.0, 32.0 * 2 ** (1 / 3), 32.0 * 2 ** (2 / 3)]
    rows = []
    for w_factor, h_factor in [(sqrt(2), 1 / sqrt(2)), (1.0, 1.0), (1 / sqrt(2), sqrt(2))]:
        for side in sides:
            w, h = side * w_factor, side * h_factor
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    first_cell = np.array(rows)
    np.testing.assert_allclose(anchors[:9], first_cell, rtol=1e-6)
    np.testing.assert_allclose(anchors[:3, 2] - anchors[:3, 0], [45.254834, 57.017518, 71.837571], rtol=1e-6)
    np.testing.assert_allclose(anchors[4], [-20.158737, -20.158737, 20.158737, 20.158737], rtol=1e-6)
    # second cell (x = 1): the same nine shifted by one stride in x
    np.testing.assert_allclose(anchors[9:], first_cell + [8, 0, 8, 0], rtol=1e-6)


def test_center_offset_and_level_count_check():
    anchors, _ = AnchorGenerator(strides=(16,), center_offset=0.5).grid_anchors([(1, 1)])
    np.testing.assert_array_equal(anchors, [[-56, -56, 72, 72]])
    with pytest.raises(ValueError):
        AnchorGenerator.atss().grid_anchors([(2, 2)])


def test_feature_sizes_round_up():
    assert feature_sizes((800, 1333), (8, 16, 32, 64, 128)) == [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]
