"""train.load_from: a whole detector with another class count into a fresh network.

For the multibox head and every dense head on MLFPN, and one dense head on a ResNet-FPN:
matching tensors equal the file's after loading, the class-dependent layers keep a fresh
network's initialisation (sigmoid heads: bias = -log(99), the focal prior; multibox: zero
bias) and differ from the file, the counts add up, and a file of another architecture is
refused naming the first mismatching layer. Also from a convert.py file (mmdetection GFL)."""
import math
import os

import mindspore as ms
import numpy as np
import pytest
import torch

from src.builder import build_detector, class_dependent_names
from src.config import load_config
from src.convert import convert_mmdet
from src.training.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from src.training.load_from import load_pretrained
from tests.test_convert_mmdet import mmdet_state, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
DENSE = ["model.head.dense.feat_channels=16", "model.head.dense.stacked_convs=1"]
FPN = ["model.backbone.name=resnet50", "model.backbone.width=0.125", "model.neck.name=fpn",
       "model.neck.fpn.out_channels=16", "data.resize_mode=keep_ratio", "model.input_size=64", "data.max_size=96"]
# (head, extra overrides, class-dependent parameter names of the network)
CASES = [
    ("multibox", [], [f"head.conf_convs.{i}.{k}" for i in range(4) for k in ("weight", "bias")]),
    ("retina", DENSE, ["head.retina_cls.weight", "head.retina_cls.bias"]),
    ("atss", DENSE, ["head.atss_cls.weight", "head.atss_cls.bias"]),
    ("umop", DENSE, ["head.atss_cls.weight", "head.atss_cls.bias"]),
    ("gfl", DENSE, ["head.gfl_cls.weight", "head.gfl_cls.bias"]),
    ("vfnet", DENSE, ["head.vfnet_cls.weight", "head.vfnet_cls.bias"]),
    ("gfl", DENSE + FPN, ["head.gfl_cls.weight", "head.gfl_cls.bias"]),
]
IDS = ["multibox", "retina", "atss", "umop", "gfl", "vfnet", "gfl-fpn"]



def load(detector, cfg, params, source):
    """What the trainer does with train.load_from."""
    return load_pretrained(detector, params, source, class_dependent=class_dependent_names(cfg, detector),
                           config_name=cfg.config_name)

def config(head, extra, num_classes):
    return load_config(TINY, [f"model.head.name={head}", f"model.num_classes={num_classes}", *extra])


def perturbed_checkpoint(detector, path):
    """Save `detector` with every tensor moved off its initial value (a 'trained' file)."""
    rng = np.random.default_rng(0)
    for p in detector.get_parameters():
        value = p.asnumpy()
        p.set_data(ms.Tensor((value + rng.normal(0.5, 0.1, value.shape)).astype(value.dtype)))
    return save_checkpoint(path, detector, epoch=3, step=12, config_name="source")


@pytest.mark.parametrize("head,extra,expected", CASES, ids=IDS)
def test_load_from_another_class_count(tmp_path, head, extra, expected):
    ms.set_seed(0)
    source = build_detector(config(head, extra, 8))            # 8 classes, e.g. a pretrained model
    path = perturbed_checkpoint(source, str(tmp_path / "source.ckpt"))
    params = read_checkpoint(path)

    cfg = config(head, extra, 4)                                # 4 classes of one's own
    ms.set_seed(0)
    detector = build_detector(cfg)
    ms.set_seed(0)
    fresh = {p.name: p.asnumpy().copy() for p in build_detector(cfg).get_parameters()}
    assert sorted(class_dependent_names(cfg, detector)) == sorted(expected)

    report = load(detector, cfg, params, path)
    assert sorted(report.reinitialised) == sorted(expected)
    names = [p.name for p in detector.get_parameters()]
    assert len(report.loaded) + len(report.reinitialised) == len(names)
    file_tensors = [k for k, v in params.items() if hasattr(v, "asnumpy")]
    assert set(report.left_out) == set(params) - set(report.loaded)
    assert len(report.left_out) >= len(expected)              # the file's own class layers at least
    assert set(file_tensors) >= set(report.loaded)
    for p in detector.get_parameters():
        if p.name in expected:
            np.testing.assert_array_equal(p.asnumpy(), fresh[p.name], err_msg=p.name)
            assert p.shape != params[p.name].shape
        else:
            np.testing.assert_array_equal(p.asnumpy(), params[p.name].asnumpy(), err_msg=p.name)
    bias = [p for p in detector.get_parameters() if p.name in expected and p.name.endswith("bias")]
    prior = 0.0 if head == "multibox" else -math.log(99.0)      # the fresh model's class bias
    for p in bias:
        np.testing.assert_allclose(p.asnumpy(), prior, rtol=1e-6, atol=1e-7)


def test_same_class_count_loads_everything(tmp_path):
    source = build_detector(config("atss", DENSE, 4))
    params = read_checkpoint(perturbed_checkpoint(source, str(tmp_path / "s.ckpt")))
    cfg = config("atss", DENSE, 4)
    detector = build_detector(cfg)
    report = load(detector, cfg, params, "s.ckpt")
    assert report.reinitialised == []
    for p in detector.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), params[p.name].asnumpy())


def test_another_architecture_is_refused_naming_the_layer(tmp_path):
    # a ResNet-FPN detector into the VGG/MLFPN config: the first network tensor is not in the file
    source = build_detector(config("gfl", DENSE + FPN, 8))
    params = read_checkpoint(perturbed_checkpoint(source, str(tmp_path / "resnet.ckpt")))
    cfg = config("gfl", DENSE, 4)
    detector = build_detector(cfg)
    before = {p.name: p.asnumpy().copy() for p in detector.get_parameters()}
    first = next(p for p in detector.get_parameters())
    with pytest.raises(CheckpointError) as info:
        load(detector, cfg, params, "resnet.ckpt")
    message = str(info.value)
    assert f"first mismatching layer '{first.name}'" in message and "resnet.ckpt" in message
    for p in detector.get_parameters():                         # nothing was loaded
        np.testing.assert_array_equal(p.asnumpy(), before[p.name])


def test_wider_tower_is_refused_naming_the_layer(tmp_path):
    # same layout, another head width: a non-class tensor of another shape
    source = build_detector(config("retina", ["model.head.dense.feat_channels=24", "model.head.dense.stacked_convs=1"], 4))
    params = read_checkpoint(perturbed_checkpoint(source, str(tmp_path / "wide.ckpt")))
    cfg = config("retina", DENSE, 4)
    with pytest.raises(CheckpointError, match=r"first mismatching layer 'head\.cls_convs\.0\.[\w.]+': file "
                                              r"\(24, "):
        load(build_detector(cfg), cfg, params, "wide.ckpt")


def test_extra_layers_in_the_file_are_refused(tmp_path):
    # a ResNet-101 detector into a ResNet-50 config: every network tensor fits, the file has more blocks
    deeper = [o.replace("resnet50", "resnet101") for o in FPN]
    source = build_detector(config("gfl", DENSE + deeper, 4))
    params = read_checkpoint(perturbed_checkpoint(source, str(tmp_path / "deep.ckpt")))
    cfg = config("gfl", DENSE + FPN, 4)
    with pytest.raises(CheckpointError, match=r"first mismatching layer 'backbone\.layer3\.6\.[\w.]+' in the file "
                                              r"is a layer the network does not have"):
        load(build_detector(cfg), cfg, params, "deep.ckpt")


def test_from_a_convert_py_mmdetection_file(tmp_path):
    """convert.py's output of an mmdetection GFL checkpoint (3 classes) into a 5-class fine-tuning config."""
    head = "gfl"
    path, overrides, cfg = tiny(head)
    pth, out = tmp_path / "mmdet.pth", tmp_path / "converted.ckpt"
    torch.save({"state_dict": mmdet_state(cfg)}, pth)
    convert_mmdet(str(pth), cfg, str(out))
    params = read_checkpoint(str(out))
    target = load_config(path, overrides + ["model.num_classes=5"])
    detector = build_detector(target)
    report = load(detector, target, params, str(out))
    assert sorted(report.reinitialised) == [f"head.{head}_cls.bias", f"head.{head}_cls.weight"]
    assert len(report.loaded) == len(params) - 2 and sorted(report.left_out) == sorted(report.reinitialised)
    for p in detector.get_parameters():
        if p.name not in report.reinitialised:
            np.testing.assert_array_equal(p.asnumpy(), params[p.name].asnumpy(), err_msg=p.name)
