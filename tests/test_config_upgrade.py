"""Config version 2 (src/config_upgrade.py): model.num_classes counts the object classes in every
head, and checkpoints / export sidecars written with version 1 configs (num_classes with the
background, neck and head keys flat) still load, to the same network and outputs."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
import yaml

from src.builder import build_detector, build_priors
from src.config import ConfigError, config_from_dict, config_to_yaml, load_config
from src.config_upgrade import CONFIG_VERSION, upgrade_stored_config
from src.inference.model_files import class_names, expected_model, open_model
from src.inference.predictor import PredictorError, check_mindir_fits
from src.model_info import dataset_classes
from src.training.checkpoint import load_detector_weights, read_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
NAMES = ["circle", "rectangle", "triangle", "star", "cross"]


def v1_resolved(cfg) -> dict:
    """The resolved config as train.py / export.py stored it before config_version 2."""
    d = yaml.safe_load(config_to_yaml(cfg))
    del d["config_version"]
    model = d["model"]
    model["num_classes"] += 1                                    # counted the background
    neck, head = model["neck"], model["head"]
    neck.update(neck.pop("fpn"))
    neck.update(neck.pop("mlfpn"))
    multibox = head.pop("multibox")
    head.update(head.pop("dense"))
    head.update(head.pop("gfl"))
    d["data"]["match_threshold"] = multibox["match_threshold"]
    d["train"]["neg_pos_ratio"] = multibox["neg_pos_ratio"]
    d["train"]["empty_image_negatives"] = multibox["empty_image_negatives"]
    return d


def test_v1_dict_becomes_v2():
    raw = {"model": {"num_classes": 81, "input_size": 320,
                     "neck": {"name": "fpn", "num_levels": 8, "out_channels": 256, "tum_norm": "gn"},
                     "head": {"name": "gfl", "feat_channels": 64, "stacked_convs": 2, "reg_max": 16}},
           "data": {"root": "d", "match_threshold": 0.45},
           "train": {"lr": 0.1, "neg_pos_ratio": 3, "empty_image_negatives": 0}}
    kept = json.dumps(raw, sort_keys=True)
    assert upgrade_stored_config(raw) == {
        "config_version": 2,
        "model": {"num_classes": 80, "input_size": 320,
                  "neck": {"name": "fpn", "mlfpn": {"num_levels": 8, "tum_norm": "gn"}, "fpn": {"out_channels": 256}},
                  "head": {"name": "gfl", "dense": {"feat_channels": 64, "stacked_convs": 2}, "gfl": {"reg_max": 16},
                           "multibox": {"match_threshold": 0.45, "neg_pos_ratio": 3, "empty_image_negatives": 0}}},
        "data": {"root": "d"},
        "train": {"lr": 0.1}}
    assert json.dumps(raw, sort_keys=True) == kept                 # the input is not modified


def test_v2_is_kept_and_an_unknown_version_is_refused():
    v2 = {"config_version": 2, "model": {"num_classes": 80}}
    assert upgrade_stored_config(v2) == {"config_version": 2, "model": {"num_classes": 80}}
    with pytest.raises(ConfigError, match=r"m\.ckpt \(stored config\): config_version 3 is not known"):
        config_from_dict({"config_version": 3}, "m", source="m.ckpt (stored config)")


def test_every_v1_resolved_config_resolves_as_the_shipped_v2_one():
    for name in ("m2det320_vgg.yaml", "m2det_lite.yaml", "m2det_lite_gfl.yaml", "retinanet_r50_fpn_1x.yaml",
                 "vfnet_r50_fpn_1x.yaml"):
        cfg = load_config(os.path.join(ROOT, "configs", name))
        stored = config_from_dict(v1_resolved(cfg), cfg.config_name)
        assert stored == cfg, name
    assert load_config(os.path.join(ROOT, "configs", "m2det320_vgg.yaml")).model.num_classes == 80
    assert load_config(os.path.join(ROOT, "configs", "m2det_lite.yaml")).model.num_classes == 5


def test_a_checkpoint_written_with_a_v1_config_loads_unchanged(tmp_path):
    cfg = load_config(TINY)
    ms.set_seed(5)
    detector = build_detector(cfg)
    classes = dataset_classes([1, 2, 4, 5, 7], NAMES)
    path = save_checkpoint(str(tmp_path / "old.ckpt"), detector, config=yaml.safe_dump(v1_resolved(cfg)),
                           class_names=json.dumps(classes))
    assert yaml.safe_load(read_checkpoint(path)["config"])["model"]["num_classes"] == 6

    stored, info = open_model(path)
    assert stored.model.num_classes == 5 and stored.config_version == CONFIG_VERSION
    assert stored.model.neck.mlfpn.num_levels == 2 and stored.model.head.multibox.neg_pos_ratio == 3
    assert class_names(stored, info) == NAMES
    again = build_detector(stored)
    load_detector_weights(again, read_checkpoint(path))
    assert [(p.name, p.shape) for p in again.get_parameters()] == [(p.name, p.shape) for p in detector.get_parameters()]
    x = ms.Tensor(np.random.default_rng(0).uniform(-100, 100, (1, 3, 128, 128)).astype(np.float32))
    detector.set_train(False)
    again.set_train(False)
    for theirs, ours in zip(detector(x), again(x)):
        np.testing.assert_array_equal(ours.asnumpy(), theirs.asnumpy())


def test_a_sidecar_written_with_a_v1_config_fits_its_config(tmp_path):
    cfg = load_config(TINY)
    priors = int(np.asarray(build_priors(cfg).boxes()).shape[0])
    mindir = tmp_path / "old.mindir"
    mindir.write_bytes(b"not loaded here")
    old_meta = {"config": "tests/configs/tiny.yaml", "config_name": "tiny", "input_shape": [1, 3, 128, 128],
                "num_classes": 6, "num_priors": priors, "output_shapes": [[1, priors, 4], [1, priors, 6]],
                "classes": dataset_classes([1, 2, 4, 5, 7], NAMES),
                "resolved_config": yaml.safe_dump(v1_resolved(cfg))}
    (tmp_path / "old.mindir.json").write_text(json.dumps(old_meta))
    stored, info = open_model(str(mindir))
    assert stored.model.num_classes == 5 and class_names(stored, info) == NAMES
    check_mindir_fits(str(mindir), old_meta, expected_model(stored))        # 6 with the background = 5 classes
    new_meta = dict(old_meta, config_version=2)                   # a v2 sidecar's 6 means 6 classes
    with pytest.raises(PredictorError, match=r"model\.num_classes 6 vs 5"):
        check_mindir_fits(str(mindir), new_meta, expected_model(stored))


def test_num_classes_counts_object_classes_in_every_head():
    """One config, C = 3: the multibox head has C + 1 softmax columns (background first), the
    sigmoid heads C score columns; the class count and names agree."""
    x = ms.Tensor(np.zeros((1, 3, 128, 128), np.float32))
    multibox = build_detector(load_config(TINY, ["model.num_classes=3"]))
    assert multibox.head.num_classes == 3
    multibox.set_train(False)
    loc, scores = multibox(x)
    assert scores.shape[-1] == 3 + 1
    np.testing.assert_allclose(scores.asnumpy().sum(-1), 1.0, atol=1e-5)
    for head in ("gfl", "retina"):
        dense = build_detector(load_config(TINY, ["model.num_classes=3", f"model.head.name={head}",
                                                  "model.head.dense.feat_channels=8",
                                                  "model.head.dense.stacked_convs=1"]))
        assert dense.head.num_classes == 3
        dense.set_train(False)
        assert dense(x)[1].shape[-1] == 3, head
