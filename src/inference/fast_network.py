"""The network that evaluation and inference call: the trained detector made cheaper to run.

    detector --copy--> BatchNorm folded into the convolutions (test.fold_bn, src/export/fold_bn.py)
             --on CPU--> wide 3x3 convolutions by Winograd (test.winograd, m2det/winograd.py): with
                         test.winograd_tile 4, F(4x4, 3x3), F(2x2, 3x3) or direct by each layer's map
                         size at `input_shape`; with 2, F(2x2, 3x3) everywhere

Both rewrites compute the same function up to float rounding (tests/test_winograd.py,
tests/test_fast_paths.py). export.py writes the same network into a MINDIR for CPU
(src/export/exporter.py, tests/test_export_winograd.py); ONNX keeps direct convolutions (the
Winograd transforms are CPU custom operators, not portable graph ops).
"""
from __future__ import annotations

import copy
import logging

from m2det import winograd
from m2det.cells import refresh_parameter_names
from src.export.fold_bn import fold_batchnorm

log = logging.getLogger("m2det.inference")


def inference_network(detector, *, fold_bn: bool = False, use_winograd: bool = False,
                      device_target: str | None = None, winograd_tile: int = 2, input_shape=None):
    """`detector` itself when both options are off, else a rewritten copy in inference mode.

    fold_bn, use_winograd, winograd_tile: `test.fold_bn`, `test.winograd`, `test.winograd_tile`
    (src.builder.inference_options); Winograd applies on CPU only (default device: MindSpore's
    context). `input_shape` (N, C, H, W): the input the tile choice is made for (winograd_tile 4;
    without it F(4x4, 3x3) everywhere).
    """
    import mindspore as ms

    device_target = device_target or ms.get_context("device_target")
    fold = bool(fold_bn)
    fast_conv = bool(use_winograd) and winograd.usable(device_target, "test.winograd")
    detector.set_train(False)
    if not (fold or fast_conv):
        return detector
    network = copy.deepcopy(detector)
    network.set_train(False)
    if fold:
        folded = fold_batchnorm(network)
        refresh_parameter_names(network)
        log.info("test.fold_bn: %d BatchNorm layers folded into their convolutions", len(folded))
    if fast_conv:
        replaced = winograd.use_winograd(network, tile=winograd_tile, input_shape=input_shape)
        log.info("test.winograd: %d convolutions use Winograd (%s)", len(replaced), winograd.describe(network))
    network.set_train(False)
    return network
