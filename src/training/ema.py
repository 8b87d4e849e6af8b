"""Exponential moving average of the detector's weights.

    ema = decay_t * ema + (1 - decay_t) * w,    decay_t = decay * (1 - exp(-t / warmup))

after every optimizer update t = 1, 2, ... (t counts updates, so a skipped overflow step does
not move it). The warmup ramp makes the average follow the weights closely at the start,
when they move fast; `warmup` 0 uses the constant `decay`. Every detector parameter is
averaged, BatchNorm running statistics included, so the averaged network is complete.

Checkpoints of a run with EMA carry the averaged weights under the detector's normal names
(what eval.py / export.py load, with no flag) and the raw training weights under `raw.<name>`
(what a resumed run trains on); see checkpoint.py.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

RAW_PREFIX = "raw."
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _update_one(decay, shadow, weight):
    return ops.assign(shadow, shadow * decay + weight * (1.0 - decay))


class ModelEMA(nn.Cell):
    """Holds `ema.<name>` shadows of every parameter of `network`; `construct()` does one update."""

    def __init__(self, network: nn.Cell, decay: float = 0.9999, warmup: float = 2000.0):
        super().__init__(auto_prefix=False)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        params = list(network.get_parameters())
        self.names = [p.name for p in params]
        self.weights = ParameterTuple(params)
        self.shadows = ParameterTuple([Parameter(Tensor(p.asnumpy()), name="ema." + p.name, requires_grad=False)
                                       for p in params])
        self.updates = Parameter(Tensor(0.0, ms.float32), name="ema.updates", requires_grad=False)
        self.decay = float(decay)
        self.inv_warmup = 1.0 / float(warmup) if warmup > 0 else 0.0
        self.hyper_map = ops.HyperMap()

    def construct(self):
        updates = self.updates + 1.0
        ops.assign(self.updates, updates)
        if self.inv_warmup > 0:
            decay = self.decay * (1.0 - ops.exp(-updates * self.inv_warmup))
        else:
            decay = ops.ones_like(updates) * self.decay
        return self.hyper_map(ops.partial(_ema_update, decay), self.shadows, self.weights)

    def decay_at(self, updates: int) -> float:
        """The decay used by update number `updates` (for tests and docs)."""
        if self.inv_warmup > 0:
            return self.decay * (1.0 - math.exp(-updates * self.inv_warmup))
        return self.decay

    def shadow_dict(self) -> dict:
        """{detector parameter name: averaged value (numpy)}."""
        return {name: s.asnumpy() for name, s in zip(self.names, self.shadows)}

    def load_shadows(self, values: dict, updates: float | None = None) -> None:
        """Set the averages from {detector parameter name: array}; names not in `values` keep theirs."""
        for name, shadow in zip(self.names, self.shadows):
            if name in values:
                value = values[name]
                value = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
                shadow.set_data(Tensor(value.astype(shadow.asnumpy().dtype)))
        if updates is not None:
            self.updates.set_data(Tensor(float(updates), ms.float32))

    def swap(self) -> None:
        """Exchange weights and averages (evaluate the EMA network in place; call again to undo)."""
        for weight, shadow in zip(self.weights, self.shadows):
            current = weight.asnumpy().copy()
            weight.set_data(Tensor(shadow.asnumpy()))
            shadow.set_data(Tensor(current))
