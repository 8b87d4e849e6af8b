"""Checkpoints: atomic writes, keep-last-K rotation, resume and backbone loading.

A training checkpoint holds the detector's parameters under their bare names (they load
into a plain detector for eval/export), the optimizer's state (`global_step`, momentum
`moments.*`/`accum.*`) and the metadata `epoch` and `step`. Files are written to a temporary
name in the same folder and renamed, so a crash never leaves a half-written checkpoint
under the real name.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Iterable

import mindspore as ms
from mindspore import nn

META_KEYS = ("epoch", "step", "config_name")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the network."""


def _param_list(cells: Iterable[nn.Cell]) -> list[dict]:
    seen, out = set(), []
    for cell in cells:
        for p in cell.get_parameters():
            if p.name in seen:
                continue
            seen.add(p.name)
            out.append({"name": p.name, "data": p})
    return out


def save_checkpoint(path: str, detector: nn.Cell, optimizer: nn.Optimizer | None = None, **meta) -> str:
    """Write `path` atomically; `meta` values must be int, float, bool or str."""
    path = os.path.abspath(path)
    if not path.endswith(".ckpt"):
        raise ValueError(f"checkpoint path must end with .ckpt: {path}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    cells = [detector] + ([optimizer] if optimizer is not None else [])
    try:
        ms.save_checkpoint(_param_list(cells), tmp, append_dict=dict(meta) or None)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path: str) -> dict:
    """Parameter dict of a checkpoint file, with a clear error for missing or corrupt files."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with parser internals
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a MindSpore ckpt): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def checkpoint_meta(params: dict) -> dict:
    meta = {}
    for key in META_KEYS:
        if key in params:
            value = params[key]
            meta[key] = value if isinstance(value, (int, float, str)) else value.asnumpy().item()
    return meta


def _describe_mismatch(cell: nn.Cell, params: dict, prefix: str = "") -> tuple[list, list]:
    missing, bad_shape = [], []
    for p in cell.get_parameters():
        key = prefix + p.name
        if key not in params:
            missing.append(p.name)
        elif tuple(params[key].shape) != tuple(p.shape):
            bad_shape.append(f"{p.name}: checkpoint {tuple(params[key].shape)} vs network {tuple(p.shape)}")
    return missing, bad_shape


def _short(items: list, n: int = 10) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def load_detector_weights(detector: nn.Cell, params: dict, source: str = "checkpoint") -> None:
    """Load every detector parameter from `params`; any missing or mismatched tensor is an error."""
    missing, bad_shape = _describe_mismatch(detector, params)
    if missing or bad_shape:
        lines = [f"{source} does not match the network built from the config:"]
        if bad_shape:
            lines.append(f"  shape mismatches ({len(bad_shape)}): {_short(bad_shape)}")
        if missing:
            lines.append(f"  missing ({len(missing)}): {_short(missing)}")
        raise CheckpointError("\n".join(lines))
    ms.load_param_into_net(detector, {p.name: params[p.name] for p in detector.get_parameters()}, strict_load=True)


def load_backbone_weights(backbone: nn.Cell, path: str) -> int:
    """Load a backbone ckpt (keys bare or under `backbone.`); returns the number of tensors loaded."""
    params = read_checkpoint(path)
    names = [p.name for p in backbone.get_parameters()]
    # a backbone cell inside a detector has names like `backbone.layers.0.weight`; a converted
    # backbone file may use either that or the bare `layers.0.weight`
    def lookup(name: str):
        for key in (name, name.split(".", 1)[1] if name.startswith("backbone.") else "backbone." + name):
            if key in params:
                return key
        return None

    missing, bad_shape, mapping = [], [], {}
    for p in backbone.get_parameters():
        key = lookup(p.name)
        if key is None:
            # BN running statistics may be absent from a converted file; everything else must be there
            missing.append(p.name)
        elif tuple(params[key].shape) != tuple(p.shape):
            bad_shape.append(f"{p.name}: file {tuple(params[key].shape)} vs network {tuple(p.shape)}")
        else:
            mapping[p.name] = params[key]
    if missing or bad_shape:
        lines = [f"backbone checkpoint {path} does not fit the backbone ({len(names)} tensors):"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {_short(missing)}")
        if bad_shape:
            lines.append(f"  shape mismatches ({len(bad_shape)}): {_short(bad_shape)}")
        raise CheckpointError("\n".join(lines))
    ms.load_param_into_net(backbone, mapping, strict_load=True)
    return len(mapping)


def restore_training_state(params: dict, detector: nn.Cell, optimizer: nn.Optimizer) -> dict:
    """Load weights and optimizer state from a training checkpoint; returns its metadata."""
    load_detector_weights(detector, params, "resume checkpoint")
    # the learning-rate table and momentum come from the config (a resumed run may extend the
    # schedule); the state restored is the step counter and the per-parameter buffers
    skip = {"learning_rate", "momentum"}
    opt_state = {p.name: params[p.name] for p in optimizer.get_parameters()
                 if p.name in params and p.name not in skip and tuple(params[p.name].shape) == tuple(p.shape)}
    ms.load_param_into_net(optimizer, opt_state, strict_load=False)
    return checkpoint_meta(params)


class CheckpointManager:
    """Names checkpoints `{prefix}_epoch{E:04d}.ckpt` in `directory` and keeps the newest `keep`."""

    PATTERN = re.compile(r"_epoch(\d+)\.ckpt$")

    def __init__(self, directory: str, prefix: str, keep: int = 5):
        self.directory = directory
        self.prefix = prefix
        self.keep = max(int(keep), 1)

    def path_for(self, epoch: int) -> str:
        return os.path.join(self.directory, f"{self.prefix}_epoch{epoch:04d}.ckpt")

    def existing(self) -> list[str]:
        """Checkpoints of this prefix, oldest first."""
        files = glob.glob(os.path.join(self.directory, f"{self.prefix}_epoch*.ckpt"))
        return sorted((f for f in files if self.PATTERN.search(f)),
                      key=lambda f: int(self.PATTERN.search(f).group(1)))

    def save(self, epoch: int, detector: nn.Cell, optimizer: nn.Optimizer | None, **meta) -> str:
        path = save_checkpoint(self.path_for(epoch), detector, optimizer, epoch=epoch, **meta)
        for old in self.existing()[:-self.keep]:
            os.remove(old)
        return path
