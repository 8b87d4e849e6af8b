"""The spatial size of the input that each chosen cell of a network sees, for one input shape.

MindSpore runs forward hooks in PyNative mode only (in GRAPH mode they are silently skipped), so
`cell_input_sizes` runs the network once in PyNative mode on zeros, recording (H, W) of the first
input of every cell that `select` accepts (the largest, for a cell called on several maps, e.g. a
head shared by the FPN levels), and puts the context's mode back. Used to pick each
convolution's Winograd tile by its map size (m2det/winograd.py).
"""
from __future__ import annotations

from typing import Callable

import mindspore as ms
import mindspore.nn as nn
import numpy as np


def cell_input_sizes(network: nn.Cell, input_shape, select: Callable[[nn.Cell], bool]) -> dict[int, tuple]:
    """{id(cell): (H, W) of its input} for the cells of `network` that `select` accepts, on one
    forward of zeros of `input_shape` (N, C, H, W): the largest map where a cell is called more
    than once. Cells not reached by the forward are absent."""
    sizes: dict[int, tuple] = {}

    def record(cell, args):
        size = tuple(int(d) for d in args[0].shape[-2:])
        if size[0] * size[1] > np.prod(sizes.get(id(cell), (0, 0))):
            sizes[id(cell)] = size

    handles = [cell.register_forward_pre_hook(record) for _, cell in network.cells_and_names() if select(cell)]
    mode = ms.get_context("mode")
    training = network.training
    try:
        ms.set_context(mode=ms.PYNATIVE_MODE)
        network.set_train(False)
        network(ms.Tensor(np.zeros(tuple(input_shape), np.float32)))
    finally:
        for handle in handles:
            handle.remove()
        ms.set_context(mode=mode)
        network.set_train(training)
    return sizes
