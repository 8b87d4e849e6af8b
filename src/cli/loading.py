"""Opening a model for the command-line programs: one place for the order of the checks and for
which failure gets which exit code (2: the config or the class names; 1: the model file or the
device), shared by eval, export, infer and serve.

    cfg, info, params = open_checkpoint(args.checkpoint, args.config, overrides, device_target)
    cfg, names = model_from_args(args, "inference failed")          # infer.py, serve.py
    predictor = predictor_from_args(cfg, args, "inference failed")

Each raises CliFailure(code, message); the programs print the message and return the code.
"""
from __future__ import annotations

from typing import Iterable, Optional

from src.config import ConfigError
from src.device import DeviceUnavailable, check_device, set_context
from src.inference import Predictor, PredictorError
from src.inference.model_files import class_names, open_model, predictor_from_checkpoint, predictor_from_mindir
from src.inference.names import NamesError
from src.model_info import ModelInfoError, class_names_for, info_from_checkpoint, resolve_config
from src.training.checkpoint import CheckpointError, read_checkpoint


class CliFailure(Exception):
    """A program cannot go on: `message` for stderr, `code` for the exit status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def open_checkpoint(path: str, config_path: Optional[str], overrides: Iterable[str], device_target: str,
                    failed: str):
    """(cfg, ModelInfo, params) of a training checkpoint, after checking the device (the
    environment first); the stored class names must fit the config. `failed` prefixes messages
    about the file or the device ("evaluation failed")."""
    try:
        check_device(device_target)
        params = read_checkpoint(path)
        info = info_from_checkpoint(params, path)
        cfg = resolve_config(info, config_path, overrides)
        class_names_for(info, cfg.model.num_classes)
    except (ConfigError, ModelInfoError) as exc:
        raise CliFailure(2, f"config error: {exc}") from None
    except (CheckpointError, DeviceUnavailable) as exc:
        raise CliFailure(1, f"{failed}: {exc}") from None
    return cfg, info, params


def open_model_files(model_path: str, *, config_path: Optional[str], overrides: Iterable[str],
                     names_file: Optional[str], ann_file: Optional[str], failed: str):
    """(cfg, class names) of a checkpoint or a MINDIR: the config and names it carries unless given."""
    try:
        cfg, info = open_model(model_path, config_path, overrides)
    except (ConfigError, ModelInfoError) as exc:
        raise CliFailure(2, f"config error: {exc}") from None
    except CheckpointError as exc:
        raise CliFailure(1, f"{failed}: {exc}") from None
    try:
        names = class_names(cfg, info, names_file, ann_file)
    except (NamesError, ModelInfoError) as exc:
        raise CliFailure(2, f"class names: {exc}") from None
    return cfg, names


def make_predictor(cfg, model_path: str, *, is_checkpoint: bool, device_target: str, mode: str, batch_size: int,
                   failed: str) -> Predictor:
    """The MindSpore context, then the Predictor of a checkpoint or a MINDIR."""
    try:
        set_context(device_target, mode)
        return (predictor_from_checkpoint(cfg, model_path, batch_size) if is_checkpoint
                else predictor_from_mindir(cfg, model_path))
    except (DeviceUnavailable, CheckpointError, PredictorError) as exc:
        raise CliFailure(1, f"{failed}: {exc}") from None


def model_from_args(args, failed: str):
    """open_model_files with the flags infer.py and serve.py share (--checkpoint | --mindir, --config,
    --set, --names, --ann)."""
    return open_model_files(args.checkpoint or args.mindir, config_path=args.config, overrides=args.overrides,
                            names_file=args.names, ann_file=args.ann, failed=failed)


def predictor_from_args(cfg, args, failed: str) -> Predictor:
    """make_predictor with the shared flags (--device_target, --mode, --batch_size)."""
    return make_predictor(cfg, args.checkpoint or args.mindir, is_checkpoint=bool(args.checkpoint),
                          device_target=args.device_target, mode=args.mode, batch_size=args.batch_size,
                          failed=failed)

