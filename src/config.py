"""YAML configuration: `_base_` inheritance, schema checking and dotted overrides.

Every config ultimately inherits `configs/base.yaml`, which lists every key the
project understands together with its default value. That file *is* the schema:
a key that is not in it is an error, and a value whose type differs from the
default's type is an error. Both messages name the key and the file that set it.

    cfg = load_config("configs/m2det320_vgg.yaml", overrides=["train.epochs=2"])
    cfg.model.neck.mlfpn.num_levels   # attribute access
    cfg["train"]["lr"]          # or plain dict access

No Python is ever executed from a config: files are read with `yaml.safe_load`
and override values are parsed the same way.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Iterable

import yaml

from src.config_upgrade import CONFIG_VERSION, NUM_CLASSES_NOTE, VERSION_KEY, moved_key_message, upgrade_stored_config

BASE_KEY = "_base_"
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SCHEMA_FILE = os.path.join(CONFIG_DIR, "base.yaml")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


# YAML 1.1 (PyYAML) reads `1e-3` as a string: its floats need a dot and a signed exponent
FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

# smallest sensible value of keys where a smaller one fails far from the config (model keys are
# checked by src.builder.check_config)
MINIMUM = {
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.save_every": 1,
    "train.log_every": 1,
    "train.keep_checkpoints": 1,
    "train.base_batch_size": 1,
    "data.num_workers": 0,
    "train.save_every_steps": 0,
    "train.eval_every": 0,
    "train.lr": 0.0,
    "train.weight_decay": 0.0,
    "train.warmup_epochs": 0.0,
}


class Config(dict):
    """A dict whose keys can also be read as attributes (recursively)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(f"config has no key '{name}'") from exc

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo):
        return Config({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def _to_config(value: Any) -> Any:
    if isinstance(value, dict):
        return Config({k: _to_config(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_to_config(v) for v in value]
    return value


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_type(key: str, value: Any, default: Any, source: str) -> Any:
    """Return `value` converted to the default's type where that is lossless."""
    if default is None or value is None:
        # null default = optional value of any scalar/list type; null value = "unset"
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            if default:
                return [_check_type(f"{key}[{i}]", v, default[0], source) for i, v in enumerate(value)]
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(
        f"{source}: key '{key}' must be {_type_name(default)} (like the default {default!r}), "
        f"got {_type_name(value)} {value!r}"
    )


def _check_minimum(key: str, value: Any, source: str) -> None:
    low = MINIMUM.get(key)
    if low is not None and isinstance(value, (int, float)) and value < low:
        raise ConfigError(f"{source}: key '{key}' must be >= {low}, got {value!r}")


def _merge(base: dict, child: dict, source: str, schema: dict | None, prefix: str = "") -> dict:
    """Merge `child` into a copy of `base`, checking keys and types against `schema`."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if key == BASE_KEY:
            continue
        full = f"{prefix}{key}"
        if schema is not None and key not in schema:
            moved = moved_key_message(full)
            if moved is not None:
                raise ConfigError(f"{source}: {moved}")
            known = ", ".join(sorted(schema)) or "(none)"
            raise ConfigError(f"{source}: unknown key '{full}' (known keys here: {known})")
        sub_schema = schema.get(key) if schema is not None else None
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, source, sub_schema if isinstance(sub_schema, dict) else None,
                              prefix=f"{full}.")
        else:
            if schema is not None:
                value = _check_type(full, value, sub_schema, source)
                _check_minimum(full, value, source)
            out[key] = copy.deepcopy(value)
    return out


def _load_chain(path: str, schema: dict | None, seen: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: circular _base_ chain: {' -> '.join(seen + (path,))}")
    data = _read_yaml(path)
    bases = data.get(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name or a list of them")
    merged: dict = {}
    for base in bases:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        merged = _merge(merged, _load_chain(base_path, schema, seen + (path,)), base_path, schema)
    return _merge(merged, data, path, schema)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (['a','b','c'], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    return key.split("."), value


def apply_overrides(cfg: dict, overrides: Iterable[str], schema: dict | None) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        cfg = _merge(cfg, nested, f"--set {text}", schema)
    return cfg


def load_schema() -> dict:
    return _read_yaml(SCHEMA_FILE)


def load_config(path: str, overrides: Iterable[str] = ()) -> Config:
    """Load `path` with its `_base_` chain on top of configs/base.yaml, then apply overrides."""
    schema = load_schema()
    cfg = _merge(schema, _load_chain(path, schema), path, schema)
    cfg = apply_overrides(cfg, overrides, schema)
    if cfg.get(VERSION_KEY) != CONFIG_VERSION:
        # files are not upgraded (their num_classes may or may not count the background)
        raise ConfigError(f"{path}: {VERSION_KEY} {cfg.get(VERSION_KEY)!r}: config files must be version "
                          f"{CONFIG_VERSION} (configs/base.yaml); {NUM_CLASSES_NOTE}, and the neck and head keys "
                          "moved into their own sections (README, \"Configs\")")
    cfg = _to_config(cfg)
    cfg["config_name"] = os.path.splitext(os.path.basename(path))[0]
    return cfg


def config_from_dict(data: dict, name: str, overrides: Iterable[str] = (), source: str = "stored config") -> Config:
    """A config from an already resolved mapping (as stored in a checkpoint or an export sidecar),
    checked against the schema like a file; `name` becomes `config_name`. A config stored before
    the current `config_version` is upgraded first (src/config_upgrade.py)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the stored config must be a mapping, got {type(data).__name__}")
    try:
        data = upgrade_stored_config(data)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    data = {k: v for k, v in data.items() if k != "config_name"}
    schema = load_schema()
    cfg = apply_overrides(_merge(schema, data, source, schema), overrides, schema)
    cfg = _to_config(cfg)
    cfg["config_name"] = name
    return cfg


def config_to_yaml(cfg: dict) -> str:
    """The resolved config as YAML text (without `config_name`), readable by config_from_dict."""
    plain = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    plain.pop("config_name", None)
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None)
