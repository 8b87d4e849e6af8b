"""A model file (checkpoint or MINDIR) -> the config and class names it carries (src/model_info.py),
and the Predictor that runs it with that config.

    cfg, info = open_model("run/m2det_lite_epoch0030.ckpt")            # config stored in the file
    cfg, info = open_model("m.mindir", config_path="configs/x.yaml")    # an explicit config wins
    predictor = predictor_from_checkpoint(cfg, "run/m2det_lite_epoch0030.ckpt", batch_size=2)
    predictor = predictor_from_mindir(cfg, "m.mindir")

This is where inference reads the config: the Predictor gets the objects built from it.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import mindspore as ms
import numpy as np

from src.builder import (build_detector, build_output_decoder, build_postprocessor, build_priors, build_test_input,
                         detection_settings, inference_options, input_policy, is_dense)
from src.inference.fast_network import inference_network
from src.inference.names import load_class_names
from src.inference.predictor import (DecodedBoxesDecoder, ExpectedModel, Predictor, check_custom_op_library,
                                     check_external_data, check_mindir_fits, load_mindir, read_mindir_description)
from src.model_info import ModelInfo, class_names_for, info_from_checkpoint, info_from_sidecar, read_sidecar, resolve_config
from src.postprocess import Postprocessor
from src.training.checkpoint import CheckpointError, load_detector_weights, read_checkpoint

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


def predictor_from_checkpoint(cfg, path: str, batch_size: int = 1) -> Predictor:
    """Build the config's detector and load `path`; a checkpoint that does not fit the config
    raises CheckpointError naming the first mismatching tensors."""
    detector = build_detector(cfg)
    load_detector_weights(detector, read_checkpoint(path), path)
    network = inference_network(detector, **inference_options(cfg))
    return Predictor(network, build_test_input(cfg), build_postprocessor(cfg, clip=True), batch_size,
                     f"checkpoint {path}")


def expected_model(cfg) -> ExpectedModel:
    """What `cfg` builds, for comparing with a MINDIR's description (src.inference.predictor.check_mindir_fits)."""
    num_priors = None if is_dense(cfg) else int(np.asarray(build_priors(cfg).boxes()).shape[0])
    return ExpectedModel(cfg.get("config_name"), input_policy(cfg).canvas(), cfg.model.num_classes, num_priors)


def predictor_from_mindir(cfg, path: str) -> Predictor:
    """Load a MINDIR written by export.py; its JSON description (`path`.json) gives the batch
    size and whether boxes are decoded in the graph (without it: batch 1, raw outputs). A
    description that does not fit `cfg` raises PredictorError naming both configs."""
    meta = read_mindir_description(path)
    shape = meta.get("input_shape", [1, 3, *input_policy(cfg).canvas()])
    check_mindir_fits(path, meta, expected_model(cfg))
    check_custom_op_library(path, meta, ms.get_context("device_target"))
    check_external_data(path, meta)
    cell = load_mindir(path)
    decoder = DecodedBoxesDecoder() if meta.get("with_decode") else build_output_decoder(cfg)
    postprocessor = Postprocessor(decoder, input_policy(cfg), detection_settings(cfg), clip=True)
    return Predictor(cell, build_test_input(cfg), postprocessor, int(shape[0]), f"MINDIR {path}")
