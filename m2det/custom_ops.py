"""The project's C kernels as MindSpore operators: one way to build them and one check for
where they can run (m2det/winograd.py, m2det/direct_conv.py).

The kernels are plain C shared libraries built by `bash scripts/make.sh`, called as MindSpore
"aot" custom operators: the graph names the library by its path and the function by its name.
They run on CPU only.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import mindspore.ops as ops

log = logging.getLogger("m2det.custom_ops")


def aot_operator(library: str, name: str, out_shape: Callable, bprop: Optional[Callable] = None,
                 outputs: int = 1) -> ops.Custom:
    """The function `name` of `library` as an operator whose `outputs` outputs have the first
    input's dtype (`out_shape` returns one shape, or a tuple of `outputs` shapes);
    `bprop(*inputs, out, dout)` gives its gradients when it is trained through."""
    if outputs == 1:
        out_dtype = lambda *dtypes: dtypes[0]            # noqa: E731
    else:
        out_dtype = lambda *dtypes: (dtypes[0],) * outputs  # noqa: E731
    return ops.Custom(f"{library}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)


def require_library(library: str, what: str) -> None:
    """Raise RuntimeError if `library` (the compiled `what`) is not built, saying how to build it."""
    if not os.path.isfile(library):
        raise RuntimeError(f"{what} not built: {library} is missing (run `bash scripts/make.sh`)")


def library_usable(library: str, device_target: str, setting: str, fallback: str) -> bool:
    """Whether operators of `library` can run here: on CPU, with the library built. A missing
    library is logged as a warning naming `setting`, the option that asked for it, and
    `fallback`, what runs instead."""
    if device_target != "CPU":
        return False
    if not os.path.isfile(library):
        log.warning("%s: %s is not built (bash scripts/make.sh); using %s", setting, library, fallback)
        return False
    return True
