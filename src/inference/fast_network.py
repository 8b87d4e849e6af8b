"""The network that evaluation and inference call: the trained detector made cheaper to run.

    detector --copy--> BatchNorm folded into the convolutions (test.fold_bn, src/export/fold_bn.py)
             --on CPU--> wide 3x3 convolutions by Winograd F(2x2, 3x3) (test.winograd, m2det/winograd.py)

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
                      device_target: str | None = None):
    """`detector` itself when both options are off, else a rewritten copy in inference mode.

    fold_bn, use_winograd: `test.fold_bn`, `test.winograd` (src.builder.inference_options); Winograd
    applies on CPU only (default device: MindSpore's context).
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
        replaced = winograd.use_winograd(network)
        log.info("test.winograd: %d convolutions use Winograd F(2x2, 3x3)", len(replaced))
    network.set_train(False)
    return network
