"""Read a PyTorch checkpoint without executing code from it.

Only `torch.load(path, map_location='cpu', weights_only=True)` is used: a file whose pickle
names anything but tensors, containers and plain values (a custom class, a function) is
refused with a ConversionError saying so; the message never suggests the unsafe load.
"""
from __future__ import annotations

import os
import pickle
import re

import numpy as np

# containers the released checkpoints and training scripts wrap a state dict in
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
DATA_PARALLEL_PREFIX = "module."


class ConversionError(RuntimeError):
    """A PyTorch file that cannot be read, or whose tensors do not fit the target network."""


def _needs_code(exc: Exception) -> str | None:
    """The global (module.name) a refused pickle asks for, or None if it failed for another reason."""
    for line in str(exc).splitlines():
        match = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", line, re.IGNORECASE)
        if match:
            return match.group(1)
    return None


def _unpickling_detail(exc: Exception) -> str:
    """torch's reason without its advice (which suggests the unsafe weights_only=False load)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            if not detail:
                detail = next((rest for rest in lines[i + 1:] if rest), "")
            return detail.split(". Please use")[0]
    safe = [line for line in lines if line and "weights_only" not in line and "trusted source" not in line]
    return safe[0] if safe else type(exc).__name__


def _unwrap(obj, path: str) -> dict:
    for _ in range(3):   # e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict (a mapping of names to tensors), "
                              f"found {type(obj).__name__}")
    return obj


def load_torch_state_dict(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Tensors of a .pth file as NumPy arrays, and the names of the non-tensor entries skipped.

    The state dict may be the file's top level or sit under `state_dict` / `model` (also
    nested); a `module.` prefix (DataParallel) is removed from every key that has it.
    Floating tensors come back as float32.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"PyTorch checkpoint not found: {path}")
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = _needs_code(exc)
        if code is not None:
            raise ConversionError(
                f"refused to load {path}: unpickling it would run code ({code}), so it was not loaded. "
                f"Only files holding plain tensors and containers are read (a state dict saved with "
                f"torch.save(model.state_dict(), path)); ask for the weights in that form") from None
        raise ConversionError(f"cannot read {path}: not a PyTorch checkpoint of plain tensors, or corrupt "
                              f"({_unpickling_detail(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConversionError(f"cannot read {path}: not a PyTorch checkpoint or corrupt ({first})") from exc

    state = _unwrap(obj, path)
    tensors, skipped = {}, []
    for key, value in state.items():
        name = key[len(DATA_PARALLEL_PREFIX):] if key.startswith(DATA_PARALLEL_PREFIX) else key
        if not isinstance(value, torch.Tensor):
            skipped.append(name)
            continue
        array = value.detach().cpu().contiguous()
        tensors[name] = array.float().numpy() if array.is_floating_point() else array.numpy()
    if not tensors:
        raise ConversionError(f"{path}: no tensors found (keys: {', '.join(list(state)[:10])})")
    return tensors, skipped
