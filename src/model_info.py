"""What travels with a model: its class names (dataset order, with category ids) and its resolved config.

A training checkpoint stores them as two string entries next to the weights:
    class_names   JSON list [{"id": category id, "name": ...}] in label order (label 0 first)
    config        the resolved config as YAML (every key, after `_base_` and `--set`)
The export sidecar (F.json) stores the same as "classes" (the list) and "resolved_config" (the
YAML text). eval.py, infer.py, serve.py and src.inference.api read them, so a model file needs
no --config, --names or --ann; an explicit --config still wins.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import yaml

from src.config import Config, ConfigError, config_from_dict, config_to_yaml, load_config
from src.utils.io import atomic_write

CLASSES_KEY = "class_names"
CONFIG_KEY = "config"
SIDECAR_CLASSES_KEY = "classes"
SIDECAR_CONFIG_KEY = "resolved_config"
RESOLVED_CONFIG_FILE = "config.yaml"


class ModelInfoError(ValueError):
    """Stored class names or config that cannot be read, or that do not fit the model."""


@dataclass
class ModelInfo:
    """Class names and config stored with a model (either may be None for older files)."""
    source: str
    classes: Optional[list] = None        # [{"id": int, "name": str}] in label order
    config_text: Optional[str] = None     # resolved config, YAML

    @property
    def names(self) -> Optional[list]:
        return None if self.classes is None else [c["name"] for c in self.classes]

    @property
    def category_ids(self) -> Optional[list]:
        return None if self.classes is None else [c["id"] for c in self.classes]


def dataset_classes(label_to_cat_id: Sequence[int], cat_names: Sequence[str]) -> list:
    """[{"id", "name"}] in label order, from a reader's label_to_cat_id and cat_names."""
    return [{"id": int(i), "name": str(n)} for i, n in zip(label_to_cat_id, cat_names)]


def checkpoint_entries(cfg, classes: Optional[list]) -> dict:
    """String metadata for save_checkpoint: the resolved config and (when known) the classes."""
    entries = {CONFIG_KEY: config_to_yaml(cfg)}
    if classes is not None:
        entries[CLASSES_KEY] = json.dumps(classes)
    return entries


def sidecar_entries(cfg, classes: Optional[list]) -> dict:
    entries = {SIDECAR_CONFIG_KEY: config_to_yaml(cfg)}
    if classes is not None:
        entries[SIDECAR_CLASSES_KEY] = list(classes)
    return entries


def _check_classes(classes, source: str, field: str) -> list:
    if not isinstance(classes, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
            for c in classes):
        raise ModelInfoError(f"{source}: field '{field}' must be a list of {{'id': int, 'name': str}}")
    return classes


def info_from_checkpoint(params: dict, source: str) -> ModelInfo:
    """The ModelInfo of a parameter dict read from a checkpoint (fields absent in older files: None)."""
    info = ModelInfo(source)
    text = params.get(CLASSES_KEY)
    if isinstance(text, str):
        try:
            info.classes = _check_classes(json.loads(text), source, CLASSES_KEY)
        except json.JSONDecodeError as exc:
            raise ModelInfoError(f"{source}: field '{CLASSES_KEY}' is not valid JSON: {exc}") from exc
    text = params.get(CONFIG_KEY)
    if isinstance(text, str):
        info.config_text = text
    return info


def info_from_sidecar(meta: dict, source: str) -> ModelInfo:
    """The ModelInfo of an export sidecar (the F.json dict)."""
    info = ModelInfo(source)
    if SIDECAR_CLASSES_KEY in meta:
        info.classes = _check_classes(meta[SIDECAR_CLASSES_KEY], source, SIDECAR_CLASSES_KEY)
    text = meta.get(SIDECAR_CONFIG_KEY)
    if isinstance(text, str):
        info.config_text = text
    return info


def read_sidecar(model_path: str) -> dict:
    """The export sidecar `model_path`.json as a dict ({} if there is none)."""
    path = model_path + ".json"
    if not os.path.isfile(path):
        return {}
    with open(path, "r", encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as exc:
            raise ModelInfoError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelInfoError(f"{path}: expected a JSON object")
    return meta


def resolve_config(info: ModelInfo, config_path: Optional[str], overrides: Iterable[str] = ()) -> Config:
    """--config when given, else the config stored with the model (upgraded when it predates the
    current config_version, src/config_upgrade.py); an error naming both when neither."""
    if config_path:
        return load_config(config_path, overrides)
    if info.config_text is None:
        raise ConfigError(f"{info.source} carries no config (saved before configs travelled with models, "
                          "or converted): pass --config")
    try:
        data = yaml.safe_load(info.config_text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{info.source}: the stored config is not valid YAML: {exc}") from exc
    name = os.path.splitext(os.path.basename(info.source))[0]
    return config_from_dict(data, name, overrides, source=f"{info.source} (stored config)")


def class_names_for(info: ModelInfo, num_classes: int) -> Optional[list]:
    """The stored names, checked against the config's class count (None when none are stored)."""
    if info.classes is None:
        return None
    if len(info.classes) != num_classes:
        raise ModelInfoError(f"{info.source} names {len(info.classes)} classes but the config has "
                             f"model.num_classes={num_classes} (object classes, background not counted)")
    return info.names


def write_resolved_config(directory: str, cfg) -> str:
    """Write DIRECTORY/config.yaml (atomically): the config the run used, every key resolved."""
    path = os.path.join(directory, RESOLVED_CONFIG_FILE)
    with atomic_write(path, "w") as f:
        f.write(f"# resolved config of {cfg.get('config_name', 'a run')}; load with --config {path}\n")
        f.write(config_to_yaml(cfg))
    return path
