"""The YAML config loader: _base_ chains, schema errors, overrides."""
import os

import pytest

from src.config import ConfigError, load_config, load_schema
from src.config_upgrade import CONFIG_VERSION, MOVED_KEYS

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
    assert cfg.model.neck.mlfpn.num_levels == 8          # from base.yaml
    assert cfg.config_name == "m2det512_resnet101"


def test_chain_in_tmp_dir(tmp_path):
    base = os.path.join(CONFIGS, "base.yaml")
    write(tmp_path / "a.yaml", f"_base_: {base}\nmodel:\n  num_classes: 21\n  input_size: 512\n")
    leaf = write(tmp_path / "b.yaml", "_base_: a.yaml\nmodel:\n  num_classes: 11\n")
    cfg = load_config(leaf)
    assert cfg.model.num_classes == 11 and cfg.model.input_size == 512
    assert cfg["model"]["neck"]["mlfpn"]["planes"] == 256


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "_base_: %s\nmodel:\n  neck:\n    mlfpn:\n      num_levls: 4\n"
                 % os.path.join(CONFIGS, "base.yaml"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.neck.mlfpn.num_levls" in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path / "typo.yaml", "model:\n  input_size: big\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "model.input_size" in msg and "typo.yaml" in msg and "'big'" in msg


def test_float_given_for_int_is_an_error(tmp_path):
    path = write(tmp_path / "f.yaml", "model:\n  neck:\n    mlfpn:\n      num_levels: 2.5\n")
    with pytest.raises(ConfigError, match="num_levels"):
        load_config(path)


def test_int_for_float_is_allowed(tmp_path):
    path = write(tmp_path / "i.yaml", "train:\n  lr: 1\nmodel:\n  backbone:\n    width: 1\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.model.backbone.width, float)


def test_overrides():
    cfg = load_config(os.path.join(CONFIGS, "m2det320_vgg.yaml"),
                      ["model.neck.mlfpn.num_levels=4", "train.lr=2", "model.neck.mlfpn.sfam=true",
                       "priors.steps=[8, 16, 32, 64, 100, 300]"])
    assert cfg.model.neck.mlfpn.num_levels == 4
    assert cfg.train.lr == 2.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.neck.mlfpn.sfam is True
    assert cfg.priors.steps == [8, 16, 32, 64, 100, 300]


def test_bad_overrides():
    path = os.path.join(CONFIGS, "m2det320_vgg.yaml")
    with pytest.raises(ConfigError, match="model.neck.mlfpn.levels"):
        load_config(path, ["model.neck.mlfpn.levels=4"])
    with pytest.raises(ConfigError, match="model.neck.mlfpn.num_levels"):
        load_config(path, ["model.neck.mlfpn.num_levels=four"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["model.neck.mlfpn.num_levels"])


def test_all_shipped_configs_load():
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".yaml"):
            cfg = load_config(os.path.join(CONFIGS, name))
            assert cfg.model.num_classes in (5, 80) and cfg.config_version == CONFIG_VERSION


def _has_key(tree, dotted):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


@pytest.mark.parametrize("old, new", sorted(MOVED_KEYS.items()))
def test_moved_key_names_its_new_place(tmp_path, old, new):
    schema = load_schema()
    assert not _has_key(schema, old) and _has_key(schema, new)     # the table agrees with the schema
    path = os.path.join(CONFIGS, "m2det320_vgg.yaml")
    with pytest.raises(ConfigError, match=f"--set {old}=1: key '{old}' is now '{new}'.*num_classes now counts"):
        load_config(path, [f"{old}=1"])
    # in a file: the nested form of the same key
    *sections, leaf = old.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections)) + f"{'  ' * len(sections)}{leaf}: 1\n"
    old_file = write(tmp_path / "old.yaml", text)
    with pytest.raises(ConfigError, match=f"old.yaml: key '{old}' is now '{new}'"):
        load_config(old_file)


def test_file_of_another_config_version_is_refused(tmp_path):
    path = write(tmp_path / "v1.yaml", "config_version: 1\nmodel:\n  num_classes: 81\n")
    with pytest.raises(ConfigError, match=r"v1\.yaml: config_version 1: config files must be version 2.*"
                                          r"object classes only \(80 for COCO, not 81\)"):
        load_config(path)
