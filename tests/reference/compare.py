"""Comparing our MindSpore networks with the PyTorch references written in tests/reference/."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import torch


def assert_close(ours, theirs, tol: float = 1e-4) -> None:
    """Max abs difference <= tol x max(1, max |theirs|)."""
    ours = ours.asnumpy() if isinstance(ours, ms.Tensor) else np.asarray(ours)
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max())
    assert err <= tol * scale, f"max abs diff {err} (scale {scale})"


def assert_same_forward(ours, theirs, x: np.ndarray, tol: float = 1e-4):
    """Both networks on the same input give the same (loc, conf); returns ours."""
    with torch.no_grad():
        loc_t, conf_t = theirs(torch.from_numpy(x))
    loc, conf = ours(ms.Tensor(x))
    assert_close(loc, loc_t, tol)
    assert_close(conf, conf_t, tol)
    return loc, conf
