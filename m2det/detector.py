"""The one-stage detector: backbone -> neck -> head, with the train/inference dispatch."""
from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor


class Detector(nn.Cell):
    """backbone(images) -> neck(features) -> head(maps).

    Training mode (`set_train(True)`): the head's raw outputs, what `head.loss` consumes
    (multibox head: loc offsets and class logits).
    Inference mode (`set_train(False)`): `head.predict(raw outputs)`, what post-processing
    consumes (multibox head: loc offsets and softmax scores). Shapes are static, so the cell
    compiles in GRAPH mode.

    The loss is not part of this cell: a training wrapper combines it with `detector.head`.

    Args:
        backbone: a cell returning a tuple of feature maps, with `output_levels` and
            `output_sizes(input_size)`.
        neck: a cell taking that tuple and returning the head's input maps, with
            `output_levels` and `output_sizes(backbone_sizes)`.
        head: a cell taking the neck's maps, with `loss(outputs, *targets)` and
            `predict(outputs)`.
    """

    def __init__(self, backbone: nn.Cell, neck: nn.Cell, head: nn.Cell):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def feature_sizes(self, input_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """(h, w) of every head input map for an input of `input_size`."""
        return self.neck.output_sizes(self.backbone.output_sizes(input_size))

    def construct(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.head(self.neck(self.backbone(images)))
        if self.training:
            return outputs
        return self.head.predict(outputs)


def count_params(cell: nn.Cell) -> int:
    """Trainable parameters (BatchNorm moving statistics excluded; a shared module counts once)."""
    seen = set()
    total = 0
    for p in cell.trainable_params():
        if id(p) not in seen:
            seen.add(id(p))
            total += int(p.size)
    return total


__all__ = ["Detector", "count_params"]
