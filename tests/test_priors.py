"""SSD priors against values worked out by hand from REFERENCE 1.7 (not by calling SSDPriors)."""
import math

import numpy as np
import pytest

from heads.priors import SSDPriors, center_to_corner, corner_to_center
from src.builder import build_priors
from src.config import load_config

R2, R3 = math.sqrt(2), math.sqrt(3)


def six(cx, cy, s, s_prime):
    """The six priors of one cell, REFERENCE 1.7 order, clipped to [0, 1]."""
    boxes = [(cx, cy, s, s), (cx, cy, s_prime, s_prime),
             (cx, cy, s * R2, s / R2), (cx, cy, s / R2, s * R2),
             (cx, cy, s * R3, s / R3), (cx, cy, s / R3, s * R3)]
    return np.clip(np.array(boxes), 0.0, 1.0)


@pytest.fixture(scope="module")
def priors320():
    return build_priors(load_config("configs/m2det320_vgg.yaml")).boxes()


def test_counts():
    for name, n in [("m2det320_vgg", 12810), ("m2det512_vgg", 32760), ("m2det800_vgg", 80208)]:
        priors = build_priors(load_config(f"configs/{name}.yaml"))
        assert priors.num_priors() == n
        assert priors.boxes().shape == (n, 4)
    # 320: (40^2 + 20^2 + 10^2 + 5^2 + 3^2 + 1^2) * 6
    assert (1600 + 400 + 100 + 25 + 9 + 1) * 6 == 12810


def test_320_first_cell_of_each_scale(priors320):
    # offsets: cumulative 6 * f^2 for f = 40, 20, 10, 5, 3, 1
    offsets = [0, 9600, 12000, 12600, 12750, 12804]
    steps = [8, 16, 32, 64, 107, 320]
    mins = [25.6, 48.0, 105.6, 163.2, 220.8, 278.4]      # round(pattern * 320, 2)
    maxs = [48.0, 105.6, 163.2, 220.8, 278.4, 336.0]
    for k in range(6):
        fk = 320 / steps[k]
        c = 0.5 / fk
        s = mins[k] / 320
        expected = six(c, c, s, math.sqrt(s * maxs[k] / 320))
        np.testing.assert_allclose(priors320[offsets[k]:offsets[k] + 6], expected, rtol=0, atol=1e-6,
                                   err_msg=f"scale {k}")


def test_320_literal_values(priors320):
    # scale 0, cell (0, 0): centre 0.5/40, s = 25.6/320 = 0.08, s' = sqrt(0.08 * 48/320) = sqrt(0.012)
    np.testing.assert_allclose(priors320[0], [0.0125, 0.0125, 0.08, 0.08], atol=1e-7)
    np.testing.assert_allclose(priors320[1], [0.0125, 0.0125, 0.10954451, 0.10954451], atol=1e-7)
    np.testing.assert_allclose(priors320[2], [0.0125, 0.0125, 0.11313708, 0.05656854], atol=1e-7)
    np.testing.assert_allclose(priors320[5], [0.0125, 0.0125, 0.04618802, 0.13856406], atol=1e-7)
    # scale 4 (3x3 map, step 107): centre 0.5 * 107 / 320 = 0.1671875; s = 0.69, s*sqrt3 = 1.195 -> clipped
    np.testing.assert_allclose(priors320[12750 + 4], [0.1671875, 0.1671875, 1.0, 0.39837169], atol=1e-7)
    # the very last prior: 1x1 map, s = 278.4/320 = 0.87, (s/sqrt3, s*sqrt3 -> 1)
    np.testing.assert_allclose(priors320[-1], [0.5, 0.5, 0.50229473, 1.0], atol=1e-7)
    # s' of the last scale: sqrt(0.87 * 336/320) = sqrt(0.9135)
    np.testing.assert_allclose(priors320[-5], [0.5, 0.5, 0.95577194, 0.95577194], atol=1e-7)


def test_320_row_major_and_last_cell(priors320):
    s, sp = 0.08, math.sqrt(0.012)
    # cell (row 1, col 2) of scale 0 is cell number 1 * 40 + 2: x moves fastest
    idx = (1 * 40 + 2) * 6
    np.testing.assert_allclose(priors320[idx:idx + 6], six(2.5 / 40, 1.5 / 40, s, sp), atol=1e-6)
    # last cell of scale 0: (39, 39)
    idx = 1599 * 6
    np.testing.assert_allclose(priors320[idx:idx + 6], six(39.5 / 40, 39.5 / 40, s, sp), atol=1e-6)


def test_512_and_800_cells():
    p512 = build_priors(load_config("configs/m2det512_vgg.yaml")).boxes()
    # 512 scale 0: 64x64, s = 30.72/512 = 0.06, max 76.8
    np.testing.assert_allclose(p512[:6], six(0.5 / 64, 0.5 / 64, 0.06, math.sqrt(0.06 * 76.8 / 512)), atol=1e-6)
    # last prior: 2x2 map, step 256, cell (1, 1): centre 1.5 * 256 / 512 = 0.75, s = 445.44/512 = 0.87
    np.testing.assert_allclose(p512[-6:], six(0.75, 0.75, 0.87, math.sqrt(0.87 * 537.6 / 512)), atol=1e-6)

    p800 = build_priors(load_config("configs/m2det800_vgg.yaml")).boxes()
    np.testing.assert_allclose(p800[:6], six(0.5 / 100, 0.5 / 100, 0.04, math.sqrt(0.04 * 120 / 800)), atol=1e-6)
    # scale 3: 13x13 map, step 62, s = 408/800 = 0.51; its last cell (12, 12) centre 12.5 * 62 / 800
    offset = 6 * (100 ** 2 + 50 ** 2 + 25 ** 2)
    idx = offset + 6 * (13 * 13 - 1)
    np.testing.assert_allclose(p800[idx:idx + 6], six(0.96875, 0.96875, 0.51, math.sqrt(0.51 * 552 / 800)),
                               atol=1e-6)
    assert len(p800) == offset + 6 * (13 ** 2 + 7 ** 2 + 5 ** 2) == 80208


def test_min_max_sizes_table():
    cfg = load_config("configs/m2det800_vgg.yaml")
    p = build_priors(cfg)
    assert p.min_sizes == [32, 120, 264, 408, 552, 696]
    assert p.max_sizes == [120, 264, 408, 552, 696, 840]
    assert build_priors(load_config("configs/m2det512_vgg.yaml")).min_sizes == \
        [30.72, 76.8, 168.96, 261.12, 353.28, 445.44]


def test_mismatched_prior_config():
    with pytest.raises(ValueError, match="5 steps"):
        SSDPriors(320, [40, 20, 10, 5, 3, 1], [8, 16, 32, 64, 107], [0.1] * 7, [[2, 3]] * 6)


def test_corner_center_round_trip():
    boxes = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.1]])
    corners = center_to_corner(boxes)
    np.testing.assert_allclose(corners[0], [0.4, 0.3, 0.6, 0.7])
    np.testing.assert_allclose(corner_to_center(corners), boxes, atol=1e-12)
