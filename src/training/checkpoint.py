"""Checkpoints: atomic CRC-checked writes, rotation, resume (with fallback) and backbone loading.

A training checkpoint holds
- the detector's parameters under their bare names (they load into a plain detector for
  eval/export). With EMA on, these are the *averaged* weights, and the raw training weights
  follow under `raw.<name>` (see ema.py);
- the optimizer's state: `global_step` (the position in the learning-rate table) and the
  momentum buffers `accum.*`;
- `ema.updates`, `loss_scale.value`, `loss_scale.good_steps` when those are in use;
- metadata: `epoch` (completed epochs), `epoch_step` (batches of epoch `epoch + 1` already
  consumed; 0 at an epoch end), `step` (global step), `global_batch`, `skipped_steps`,
  `config_name`;
- what travels with the model (src/model_info.py): `class_names` (JSON: [{"id", "name"}] in label
  order) and `config` (the resolved config, YAML), both strings.

Names: `{prefix}_epoch{E:04d}.ckpt` after epoch E; `{prefix}_epoch{E:04d}_step{K:06d}.ckpt`
K batches into epoch E (a periodic `train.save_every_steps` save or a SIGTERM/SIGINT save).

Files are written to a temporary name in the same folder, with MindSpore's CRC, and renamed,
so a crash never leaves a half-written checkpoint under the real name, and a file damaged
later (truncated copy, bad disk) is detected when read. The temporary files of a process
killed mid-save are removed at the next save in that folder.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Iterable

import mindspore as ms
from mindspore import nn

from src.training.ema import RAW_PREFIX
from src.utils.io import remove_stale_temp_files, temp_path_for

log = logging.getLogger("m2det.checkpoint")

META_KEYS = ("epoch", "epoch_step", "step", "global_batch", "skipped_steps", "config_name")


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


def _entries(detector: nn.Cell, optimizer, ema, extra) -> list[dict]:
    if ema is None:
        entries = _param_list([detector])
    else:
        averaged = dict(zip(ema.names, ema.shadows))
        entries = [{"name": p.name, "data": averaged[p.name]} for p in detector.get_parameters()]
        entries += [{"name": RAW_PREFIX + p.name, "data": p} for p in detector.get_parameters()]
        entries.append({"name": ema.updates.name, "data": ema.updates})
    names = {e["name"] for e in entries}
    for cell in [optimizer] + list(extra or []):
        if cell is None:
            continue
        for e in _param_list([cell]):
            if e["name"] not in names:
                names.add(e["name"])
                entries.append(e)
    return entries


def save_checkpoint(path: str, detector: nn.Cell, optimizer: nn.Optimizer | None = None, *, ema=None,
                    extra: Iterable[nn.Cell] = (), **meta) -> str:
    """Write `path` atomically; `meta` values must be int, float, bool or str.

    `ema` (a ModelEMA): save its averages under the detector's names and the weights under
    `raw.<name>`. `extra`: further cells whose parameters are saved as named (loss scale).
    """
    return write_checkpoint(path, _entries(detector, optimizer, ema, extra), meta)


def write_checkpoint(path: str, entries: list[dict], meta: dict | None = None) -> str:
    """Write MindSpore checkpoint entries ([{"name", "data"}]) and `meta` to `path` atomically
    (a temporary file beside it, then a rename), with a CRC so that corruption is detected on
    reading. Training checkpoints and convert.py's outputs are both written here."""
    path = os.path.abspath(path)
    if not path.endswith(".ckpt"):
        raise ValueError(f"checkpoint path must end with .ckpt: {path}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_path_for(path, ".ckpt")     # MindSpore appends .ckpt to any other name
    try:
        ms.save_checkpoint(entries, tmp, append_dict=dict(meta) if meta else None, crc_check=True)
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
        return ms.load_checkpoint(path, crc_check=True)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with parser internals
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt (CRC mismatch) or not a "
                              f"MindSpore ckpt): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def read_training_checkpoint(path: str) -> dict:
    """read_checkpoint, plus the check that the training metadata is there: MindSpore writes it
    last, so a file cut exactly between two records (which the CRC cannot see) lacks it."""
    params = read_checkpoint(path)
    if "epoch" not in params or "step" not in params:
        raise CheckpointError(f"checkpoint {path} has no training metadata (epoch, step): truncated, or not "
                              "saved by train.py")
    return params


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
    """Load every detector parameter from `params`.

    Missing or mismatched tensors are an error, and so are unexpected ones under the
    network's own top-level names (`backbone.`, `neck.`, `head.`): a checkpoint of a
    differently configured model (say, a VGG with BatchNorm) must not load with part of
    its weights silently dropped. Optimizer state and other entries are ignored.
    """
    missing, bad_shape = _describe_mismatch(detector, params)
    own = {p.name for p in detector.get_parameters()}
    prefixes = tuple(f"{name}." for name, _ in detector.name_cells().items())
    unexpected = [k for k in params if prefixes and k.startswith(prefixes) and k not in own]
    if missing or bad_shape or unexpected:
        lines = [f"{source} does not match the network built from the config:"]
        if bad_shape:
            lines.append(f"  shape mismatches ({len(bad_shape)}): {_short(bad_shape)}")
        if missing:
            lines.append(f"  missing ({len(missing)}): {_short(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {_short(unexpected)}")
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


def restore_training_state(params: dict, detector: nn.Cell, optimizer: nn.Optimizer, *, ema=None,
                           extra: Iterable[nn.Cell] = ()) -> dict:
    """Load weights, optimizer state, EMA and loss-scale state from a training checkpoint;
    returns its metadata.

    A checkpoint with `raw.*` entries (saved with EMA) trains on the raw weights; its normal
    names are the averages. A run with EMA resumed from a checkpoint without averages starts
    the average from the loaded weights.
    """
    has_raw = any(k.startswith(RAW_PREFIX) for k in params)
    if has_raw:
        raw = {k[len(RAW_PREFIX):]: v for k, v in params.items() if k.startswith(RAW_PREFIX)}
        load_detector_weights(detector, raw, "resume checkpoint (raw training weights)")
    else:
        load_detector_weights(detector, params, "resume checkpoint")
    if ema is not None:
        names = {p.name for p in detector.get_parameters()}
        source = params if has_raw else {n: params[n] for n in names}
        updates = params.get("ema.updates") if has_raw else None
        ema.load_shadows({n: source[n] for n in names},
                         None if updates is None else float(updates.asnumpy().reshape(-1)[0]))
    # the learning-rate table and momentum come from the config (a resumed run may extend the
    # schedule); the state restored is the step counter and the per-parameter buffers
    # (an optimizer's parameters include the network's: those were loaded above, maybe from raw.*).
    # Set by exact name: load_param_into_net falls back to suffix matches (`conv.bias` <- `accum.conv.bias`).
    skip = {"learning_rate", "momentum"} | {p.name for p in detector.get_parameters()}
    for cell in [optimizer] + list(extra or []):
        for p in cell.get_parameters():
            if p.name in params and p.name not in skip and tuple(params[p.name].shape) == tuple(p.shape):
                p.set_data(ms.Tensor(params[p.name].asnumpy().astype(p.asnumpy().dtype)))
    return checkpoint_meta(params)


class CheckpointManager:
    """Names checkpoints in `directory` (see the module docstring) and rotates them: the newest
    `keep` epoch checkpoints stay; of the mid-epoch ones, only the newest two that are newer than
    the newest epoch checkpoint stay (two, so a damaged newest one has a fallback)."""

    PATTERN = re.compile(r"_epoch(\d+)(?:_step(\d+))?\.ckpt$")
    KEEP_STEP_FILES = 2

    def __init__(self, directory: str, prefix: str, keep: int = 5):
        self.directory = directory
        self.prefix = prefix
        self.keep = max(int(keep), 1)

    def path_for(self, epoch: int, epoch_step: int = 0) -> str:
        """Epoch checkpoint after `epoch`, or `epoch_step` batches into epoch `epoch` if > 0."""
        suffix = f"_step{epoch_step:06d}" if epoch_step else ""
        return os.path.join(self.directory, f"{self.prefix}_epoch{epoch:04d}{suffix}.ckpt")

    def _key(self, path: str) -> tuple[int, int]:
        # (completed epochs, batches into the next one): training order
        match = self.PATTERN.search(path)
        epoch, step = int(match.group(1)), match.group(2)
        return (epoch, 0) if step is None else (epoch - 1, int(step))

    def existing(self) -> list[str]:
        """Checkpoints of this prefix (epoch and mid-epoch), oldest first in training order."""
        files = glob.glob(os.path.join(glob.escape(self.directory), f"{glob.escape(self.prefix)}_epoch*.ckpt"))
        prefix_len = len(self.prefix)
        files = [f for f in files if self.PATTERN.search(f)
                 and re.fullmatch(r"_epoch\d+(_step\d+)?\.ckpt", os.path.basename(f)[prefix_len:])]
        return sorted(files, key=self._key)

    def save(self, epoch: int, detector: nn.Cell, optimizer: nn.Optimizer | None, *, epoch_step: int = 0,
             **kwargs) -> str:
        """Save after `epoch` (epoch_step 0) or `epoch_step` batches into epoch `epoch`; rotate.

        The metadata `epoch` written is the number of completed epochs. `kwargs`: `ema`,
        `extra` and further metadata for save_checkpoint.
        """
        completed = epoch if epoch_step == 0 else epoch - 1
        for stale in remove_stale_temp_files(self.directory):
            log.info("removed %s, left by a save that was interrupted", stale)
        path = save_checkpoint(self.path_for(epoch, epoch_step), detector, optimizer, epoch=completed,
                               epoch_step=epoch_step, **kwargs)
        self._rotate()
        return path

    def _rotate(self) -> None:
        files = self.existing()
        epochs = [f for f in files if self.PATTERN.search(f).group(2) is None]
        steps = [f for f in files if self.PATTERN.search(f).group(2) is not None]
        newest_epoch = self._key(epochs[-1]) if epochs else (-1, 0)
        superseded = [f for f in steps if self._key(f) < newest_epoch]
        live = [f for f in steps if self._key(f) >= newest_epoch]
        for old in epochs[:-self.keep] + superseded + live[:-self.KEEP_STEP_FILES]:
            os.remove(old)


def select_resume_checkpoint(resume: str, manager: CheckpointManager, log=None) -> tuple[str, dict] | None:
    """Read the checkpoint to resume from: (path, params), or None for `auto` with no checkpoint.

    `resume` is a path (any damage is an error) or `auto`: the newest checkpoint of this
    config in the output dir that reads cleanly; damaged newer ones are reported and skipped.
    """
    if resume != "auto":
        return resume, read_training_checkpoint(resume)
    candidates = manager.existing()
    problems = []
    for path in reversed(candidates):
        try:
            params = read_training_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            if log is not None:
                log.warning("--resume auto: skipping %s", exc)
            continue
        return path, params
    if problems:
        raise CheckpointError("--resume auto: no readable checkpoint in "
                              f"{manager.directory}:\n  " + "\n  ".join(problems))
    return None
