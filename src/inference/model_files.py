"""A model file (checkpoint or MINDIR) -> the config and class names it carries (src/model_info.py).

    cfg, info = open_model("run/m2det_lite_epoch0030.ckpt")            # config stored in the file
    cfg, info = open_model("m.mindir", config_path="configs/x.yaml")    # an explicit config wins
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

from src.inference.names import load_class_names
from src.model_info import ModelInfo, class_names_for, info_from_checkpoint, info_from_sidecar, read_sidecar, resolve_config
from src.training.checkpoint import CheckpointError, read_checkpoint

MINDIR_SUFFIX = ".mindir"


def is_mindir(path: str) -> bool:
    return path.lower().endswith(MINDIR_SUFFIX)


def model_info(path: str) -> ModelInfo:
    """What `path` carries: a checkpoint's entries, or a MINDIR's sidecar (path.json)."""
    if is_mindir(path):
        return info_from_sidecar(read_sidecar(path), path)
    return info_from_checkpoint(read_checkpoint(path), path)


def open_model(path: str, config_path: Optional[str] = None, overrides: Iterable[str] = ()):
    """(config, ModelInfo) of a model file; ConfigError when it has no config and none is given."""
    if not os.path.isfile(path):
        raise CheckpointError(f"model file not found: {path}")
    info = model_info(path)
    return resolve_config(info, config_path, overrides), info


def class_names(cfg, info: ModelInfo, names_file: Optional[str] = None, ann_file: Optional[str] = None) -> list:
    """Names by dataset label: --names / --ann when given, else those stored with the model, else class_N."""
    if names_file or ann_file:
        return load_class_names(cfg.model.num_classes, names_file, ann_file)
    stored = class_names_for(info, cfg.model.num_classes)
    return stored if stored is not None else load_class_names(cfg.model.num_classes)
