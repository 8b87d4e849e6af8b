"""Replacing child cells in place, whatever kind of container holds them."""
from __future__ import annotations

import mindspore.nn as nn


def replace_child(parent: nn.Cell, name: str, new: nn.Cell) -> None:
    """Put `new` where `parent`'s child `name` was (attribute, CellList or SequentialCell slot).

    Parameter names are not touched here (MindSpore's container setters rename relative to
    the container only); call `refresh_parameter_names` on the top cell afterwards.
    """
    parent.insert_child_to_cell(name, new)
    if isinstance(parent, nn.SequentialCell):   # its construct runs a cached list of the children
        parent.cell_list = list(parent.name_cells().values())


def refresh_parameter_names(network: nn.Cell) -> None:
    """Name every parameter by its path from `network` (e.g. `neck.tums.0.tum.top.conv.bias`)."""
    network.update_parameters_name("")


def walk(cell: nn.Cell):
    """Every cell below `cell` (depth first) as (parent, child name, child); a snapshot, safe to edit."""
    out = []
    for name, child in list(cell.name_cells().items()):
        out.append((cell, name, child))
        out += walk(child)
    return out


def is_3x3_same_convolution(conv: nn.Cell) -> bool:
    """Whether `conv` is an NCHW nn.Conv2d with a 3x3 kernel, stride 1, dilation 1, one group and
    padding 1 on every side: the shape the Winograd and the direct-convolution cells compute."""
    if not isinstance(conv, nn.Conv2d) or conv.data_format != "NCHW":
        return False
    padding = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 4
    padded_by_one = (conv.pad_mode == "pad" and set(padding) == {1}) or conv.pad_mode == "same"
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.group == 1 and padded_by_one)
