"""The YAML config loader: _base_ chains, schema errors, overrides."""
import os

import pytest

from src.config import ConfigError, load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def write(path, text):
    path.write_text(text)
    return str(path)


def test_base_chain_three_deep():
    # m2det512_resnet101 -> m2det512_vgg -> base
    cfg = load_config(os.path.join(CONFIGS, "m2det512_resnet101.yaml"))
    assert cfg.model.backbone.name == "resnet101"        # from the leaf
    assert cfg.model.input_size == 512                   # from the middle
    assert cfg.priors.steps == [8, 16, 32, 64, 128, 256]
    assert cfg.model.neck.num_levels == 8                # from base.yaml
    assert cfg.config_name == "m2det512_resnet101"


def test_chain_in_tmp_dir(tmp_path):
    base = os.path.join(CONFIGS, "base.yaml")
    write(tmp_path / "a.yaml", f"_base_: {base}\nmodel:\n  num_classes: 21\n  input_size: 512\n")
    leaf = write(tmp_path / "b.yaml", "_base_: a.yaml\nmodel:\n  num_classes: 11\n")
    cfg = load_config(leaf)
    assert cfg.model.num_classes == 11 and cfg.model.input_size == 512
    assert cfg["model"]["neck"]["planes"] == 256


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "_base_: %s\nmodel:\n  neck:\n    num_levls: 4\n"
                 % os.path.join(CONFIGS, "base.yaml"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.neck.num_levls" in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path / "typo.yaml", "model:\n  input_size: big\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "model.input_size" in msg and "typo.yaml" in msg and "'big'" in msg


def test_float_given_for_int_is_an_error(tmp_path):
    path = write(tmp_path / "f.yaml", "model:\n  neck:\n    num_levels: 2.5\n")
    with pytest.raises(ConfigError, match="num_levels"):
        load_config(path)


def test_int_for_float_is_allowed(tmp_path):
    path = write(tmp_path / "i.yaml", "train:\n  lr: 1\nmodel:\n  backbone:\n    width: 1\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.model.backbone.width, float)


def test_overrides():
    cfg = load_config(os.path.join(CONFIGS, "m2det320_vgg.yaml"),
                      ["model.neck.num_levels=4", "train.lr=2", "model.neck.sfam=true",
                       "priors.steps=[8, 16, 32, 64, 100, 300]"])
    assert cfg.model.neck.num_levels == 4
    assert cfg.train.lr == 2.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.neck.sfam is True
    assert cfg.priors.steps == [8, 16, 32, 64, 100, 300]


def test_bad_overrides():
    path = os.path.join(CONFIGS, "m2det320_vgg.yaml")
    with pytest.raises(ConfigError, match="model.neck.levels"):
        load_config(path, ["model.neck.levels=4"])
    with pytest.raises(ConfigError, match="model.neck.num_levels"):
        load_config(path, ["model.neck.num_levels=four"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["model.neck.num_levels"])


def test_all_shipped_configs_load():
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".yaml"):
            cfg = load_config(os.path.join(CONFIGS, name))
            assert cfg.model.num_classes >= 2
