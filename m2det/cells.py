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
