"""Class names and the resolved config stored with a model (src/model_info.py): round trips,
and clear errors for files that carry none or carry something that does not fit."""
import os

import pytest
import yaml

import infer
from src.builder import build_detector
from src.config import ConfigError, config_from_dict, config_to_yaml, load_config
from src.model_info import (ModelInfo, ModelInfoError, checkpoint_entries, class_names_for, dataset_classes,
                            info_from_checkpoint, info_from_sidecar, resolve_config, write_resolved_config)
from src.training.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(TINY, ["train.lr=0.5", "model.num_classes=3"])
    again = config_from_dict(yaml.safe_load(config_to_yaml(cfg)), "tiny")
    assert again == cfg                                  # every key, config_name included
    path = write_resolved_config(str(tmp_path), cfg)
    assert load_config(path).to_dict() | {"config_name": "tiny"} == cfg.to_dict()


def test_stored_config_is_checked_against_the_schema():
    with pytest.raises(ConfigError, match=r"m\.ckpt \(stored config\): unknown key 'train\.nope'"):
        resolve_config(ModelInfo("m.ckpt", config_text="train:\n  nope: 1\n"), None)
    with pytest.raises(ConfigError, match=r"m\.ckpt carries no config .*pass --config"):
        resolve_config(ModelInfo("m.ckpt"), None)
    info = ModelInfo("m.ckpt", config_text=config_to_yaml(load_config(TINY)))
    assert resolve_config(info, None, ["train.lr=0.25"]).train.lr == 0.25
    assert resolve_config(info, TINY, ["model.num_classes=9"]).model.num_classes == 9   # --config wins


def test_classes_in_checkpoint_entries_and_sidecar():
    cfg = load_config(TINY)
    classes = dataset_classes([1, 2, 4, 5, 7], ["circle", "rectangle", "triangle", "star", "cross"])
    entries = checkpoint_entries(cfg, classes)
    info = info_from_checkpoint(entries, "k.ckpt")
    assert info.names == ["circle", "rectangle", "triangle", "star", "cross"]
    assert info.category_ids == [1, 2, 4, 5, 7]
    assert class_names_for(info, cfg.model.num_classes) == info.names
    with pytest.raises(ModelInfoError, match=r"k\.ckpt names 5 classes but the config has model\.num_classes=4"):
        class_names_for(info, 4)
    assert info_from_sidecar({"classes": classes}, "m.mindir.json").names == info.names
    with pytest.raises(ModelInfoError, match=r"field 'class_names' is not valid JSON"):
        info_from_checkpoint({"class_names": "[{"}, "k.ckpt")
    with pytest.raises(ModelInfoError, match=r"field 'classes' must be a list"):
        info_from_sidecar({"classes": ["a", "b"]}, "m.mindir.json")
    assert info_from_checkpoint({}, "old.ckpt").names is None


def test_infer_without_config_on_an_old_checkpoint_is_a_clear_error(tmp_path, capsys):
    ckpt = save_checkpoint(str(tmp_path / "old.ckpt"), build_detector(load_config(TINY)))
    code = infer.main(["--checkpoint", ckpt, "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "old.ckpt carries no config" in capsys.readouterr().err
