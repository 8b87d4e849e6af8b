"""Config versions: what changed between them, and the upgrade of configs stored with models.

Version 2 (the `config_version` key of configs/base.yaml) changed two things:

- `model.num_classes` counts the object classes only (80 for COCO). Version 1 counted the
  background too (81), as M2Det's softmax layout does.
- Each component has its own section: the neck keys sit under `model.neck.mlfpn` /
  `model.neck.fpn`, the head keys under `model.head.multibox` / `.dense` / `.gfl`
  (`MOVED_KEYS`).

A resolved config stored in a checkpoint or an export sidecar before version 2 carries no
`config_version`: `upgrade_stored_config` rewrites it before it is checked against the schema,
so those files keep loading. A config file a user wrote is not upgraded: an old key is an error
naming its new place (`moved_key_message`, used by src/config.py). Whether an old file's
num_classes counts the background cannot be told from the file; the dataset check (categories
vs model.num_classes, src/data/coco.py) catches it where the dataset has categories.
"""
from __future__ import annotations

import copy
from typing import Optional

CONFIG_VERSION = 2
VERSION_KEY = "config_version"

_MLFPN_KEYS = ("base_channels", "planes", "num_levels", "num_scales", "shared_leach", "sfam", "sfam_reduction",
               "tum_norm")
_FPN_KEYS = ("out_channels", "num_outs", "start_level", "add_extra_convs", "relu_before_extra_convs")

# version 1 key -> version 2 key
MOVED_KEYS: dict[str, str] = {
    **{f"model.neck.{k}": f"model.neck.mlfpn.{k}" for k in _MLFPN_KEYS},
    **{f"model.neck.{k}": f"model.neck.fpn.{k}" for k in _FPN_KEYS},
    "model.head.feat_channels": "model.head.dense.feat_channels",
    "model.head.stacked_convs": "model.head.dense.stacked_convs",
    "model.head.reg_max": "model.head.gfl.reg_max",
    "data.match_threshold": "model.head.multibox.match_threshold",
    "train.neg_pos_ratio": "model.head.multibox.neg_pos_ratio",
    "train.empty_image_negatives": "model.head.multibox.empty_image_negatives",
}

NUM_CLASSES_NOTE = ("model.num_classes now counts the object classes only (80 for COCO, not 81): "
                    "a config written for version 1 also needs its num_classes lowered by one")


class ConfigVersionError(ValueError):
    """A stored config of a version this code cannot read."""


def moved_key_message(key: str) -> Optional[str]:
    """The error text for a version 1 key `key` (dotted path), or None if `key` did not move."""
    new = MOVED_KEYS.get(key)
    if new is None:
        return None
    return (f"key '{key}' is now '{new}' (config version {CONFIG_VERSION} gives each component its own "
            f"section); {NUM_CLASSES_NOTE}")


def _pop_path(tree: dict, parts: list[str]):
    node = tree
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return False, None
    if parts[-1] not in node:
        return False, None
    return True, node.pop(parts[-1])


def _set_path(tree: dict, parts: list[str], value) -> None:
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def upgrade_stored_config(raw: dict) -> dict:
    """A stored resolved config of any known version -> version 2 (`raw` itself is never modified).

    No `config_version`: version 1 (every file written before version 2). Its keys are moved
    (MOVED_KEYS) and its model.num_classes, which counted the background, is lowered by one.
    """
    version = raw.get(VERSION_KEY, 1)
    if version == CONFIG_VERSION:
        return raw
    if version != 1:
        raise ConfigVersionError(f"config_version {version!r} is not known to this code (it reads versions 1 "
                                 f"to {CONFIG_VERSION}): the model was saved by a newer version")
    out = copy.deepcopy(raw)
    for old, new in MOVED_KEYS.items():
        found, value = _pop_path(out, old.split("."))
        if found:
            _set_path(out, new.split("."), value)
    model = out.get("model")
    if isinstance(model, dict) and isinstance(model.get("num_classes"), int):
        model["num_classes"] -= 1
    out[VERSION_KEY] = CONFIG_VERSION
    return out


def sidecar_num_classes(meta: dict) -> Optional[int]:
    """The object-class count an export sidecar records (its `num_classes` counted the background
    before version 2), or None when it records none."""
    if "num_classes" not in meta:
        return None
    return int(meta["num_classes"]) - (0 if meta.get(VERSION_KEY, 1) >= CONFIG_VERSION else 1)
