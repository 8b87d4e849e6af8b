"""convert.py: PyTorch state dicts with the reference naming -> MindSpore ckpts that load and compute
the same as the reference (tests/reference/torch_m2det.py).

The state dicts are built here with the official key names and shapes (random values); no
real weights are downloaded.
"""
import os

import mindspore as ms
import numpy as np
import pytest
import torch

import convert
from src.builder import BACKBONES, build_detector
from src.config import load_config
from src.convert import ConversionError, convert_state_dict
from src.convert.names import m2det_release_map
from src.training.checkpoint import load_backbone_weights, load_detector_weights, read_checkpoint
from tests.reference import torch_m2det as ref
from tests.reference.compare import assert_close as close, assert_same_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LITE = os.path.join(ROOT, "tests", "configs", "lite256.yaml")
BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


@pytest.fixture(scope="module")
def detector320():
    """The M2Det-320 VGG network (132.6 M parameters), built once for the two tests that need it."""
    return build_detector(load_config(os.path.join(ROOT, "configs", "m2det320_vgg.yaml")))


def randomize_torch(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affines, non-zero biases, so no tensor is a no-op."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.2, generator=gen)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0, 0.2, generator=gen)
    return model




def expected_name(key: str, state: dict, shared_leach: bool = True) -> str:
    """Independent spelling of the release -> ours map, to check the converter's result."""
    parts = key.split(".")
    module, leaf = ".".join(parts[:-1]), parts[-1]
    if module + ".running_mean" in state:
        leaf = BN_LEAVES[leaf]
    head = parts[0]
    if head == "base":
        body = ("layers." + ".".join(parts[1:-1])) if parts[1].isdigit() else ".".join(parts[1:-1])
        return f"backbone.{body}.{leaf}"
    if head == "reduce":
        return f"neck.ffm1.reduce_shallow.{'.'.join(parts[1:-1])}.{leaf}"
    if head == "up_reduce":
        return f"neck.ffm1.reduce_deep.{'.'.join(parts[1:-1])}.{leaf}"
    if head == "leach":
        return f"neck.ffm2.{0 if shared_leach else parts[1]}.reduce.{'.'.join(parts[2:-1])}.{leaf}"
    if head.startswith("unet"):
        level = int(head[4:]) - 1
        part = {"layers": "encoder", "latlayer": "lateral", "smooth": "smooth"}.get(parts[1])
        rest = ".".join(parts[2:-1]) if part else ".".join(parts[3:-1])
        return f"neck.tums.{level}.{part or 'top'}.{rest}.{leaf}"
    if head == "sfam_module":
        return f"neck.sfam.{'squeeze' if parts[1] == 'fc1' else 'expand'}.{leaf}"
    if head == "Norm":
        return f"neck.norm.{leaf}"
    return f"head.{head}_convs.{parts[1]}.{leaf}"


def check_every_tensor(params: dict, state: dict, shared_leach: bool = True, network=None) -> None:
    used = set()
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("base.fc."):
            continue
        name = expected_name(key, state, shared_leach)
        np.testing.assert_array_equal(params[name].asnumpy(), value.numpy(), err_msg=f"{key} -> {name}")
        used.add(name)
    if network is not None:
        assert used == {p.name for p in network.get_parameters()}


def lite_reference(**kw):
    args = dict(backbone="vgg16", width=0.25, planes=64, num_levels=4, num_scales=5, base_channels=(64, 128),
                num_classes=6, input_size=256, phase="test")
    args.update(kw)
    return randomize_torch(ref.M2DetReference(**args)).eval()


def test_vgg_backbone_file(tmp_path, capsys, detector320):
    """vgg16_reducedfc.pth layout (30 bare-index tensors) -> vgg16_reducedfc.ckpt beside it."""
    state = {k: v for k, v in ref.vgg_reduced(1.0).state_dict().items()}
    assert len(state) == 30 and state["31.weight"].shape == (1024, 512, 3, 3)
    pth = tmp_path / "vgg16_reducedfc.pth"
    torch.save(state, pth)
    assert convert.main(["--backbone_path", str(pth)]) == 0
    ckpt = tmp_path / "vgg16_reducedfc.ckpt"
    params = read_checkpoint(str(ckpt))
    assert sorted(params) == sorted(f"layers.{k}" for k in state)
    backbone = detector320.backbone
    assert load_backbone_weights(backbone, str(ckpt)) == 30
    loaded = {p.name: p.asnumpy() for p in backbone.get_parameters()}
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[f"backbone.layers.{key}"], value.numpy())
    assert "30 tensors converted" in capsys.readouterr().out


def test_torchvision_resnet_backbone_file(tmp_path, capsys):
    """torchvision ResNet-50 ImageNet layout -> backbone ckpt; fc and num_batches_tracked dropped."""
    model = randomize_torch(ref.ResNetBase(50, layer_strides=(1, 2, 2, 2), with_fc=True))
    state = model.state_dict()
    pth = tmp_path / "resnet50.pth"
    torch.save(state, pth)
    out = tmp_path / "r50.ckpt"
    assert convert.main(["--backbone_path", str(pth), "--backbone", "resnet50", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "dropped" in report and "fc.weight" in report and "fc.bias" in report
    backbone = BACKBONES["resnet50"](1.0)
    assert load_backbone_weights(backbone, str(out)) == len(list(backbone.get_parameters()))
    loaded = {p.name: p.asnumpy() for p in backbone.get_parameters()}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        module, leaf = key.rsplit(".", 1)
        name = f"{module}.{BN_LEAVES[leaf]}" if module + ".running_mean" in state else key
        np.testing.assert_array_equal(loaded[name], value.numpy(), err_msg=key)


def test_lite_release_checkpoint(tmp_path):
    """A wrapped, DataParallel-prefixed release-style file -> ckpt: every tensor unchanged, same outputs."""
    theirs = lite_reference()
    state = theirs.state_dict()
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}
    pth = tmp_path / "m2det_lite.pth"
    torch.save(wrapped, pth)
    out = tmp_path / "m2det_lite.ckpt"
    assert convert.main(["--torch_ckpt", str(pth), "--config", LITE, "--out", str(out)]) == 0

    ours = build_detector(load_config(LITE))
    params = read_checkpoint(str(out))
    load_detector_weights(ours, params)
    check_every_tensor(params, state, network=ours)

    ours.set_train(False)
    x = np.random.default_rng(3).uniform(-120, 120, (1, 3, 256, 256)).astype(np.float32)
    assert_same_forward(ours, theirs, x)


def test_release_resnet_sfam_per_level_leach(tmp_path, capsys):
    """ResNet trunk with the release's unused fc, SFAM on, one leach per level."""
    cfg_file = tmp_path / "resnet_sfam.yaml"
    cfg_file.write_text(f"""_base_: {LITE}
model:
  num_classes: 4
  input_size: 128
  backbone: {{name: resnet50, width: 0.0625}}
  neck: {{mlfpn: {{base_channels: [16, 32], planes: 32, num_levels: 3, num_scales: 4, shared_leach: false, sfam: true}}}}
priors:
  steps: [8, 16, 32, 64]
  size_pattern: [0.1, 0.25, 0.45, 0.7, 0.95]
  aspect_ratios: [[2, 3], [2, 3], [2, 3], [2, 3]]
""")
    theirs = randomize_torch(ref.M2DetReference(
        backbone="resnet50", width=0.0625, planes=32, num_levels=3, num_scales=4, base_channels=(16, 32),
        num_classes=5, input_size=128, sfam=True, shared_leach=False, resnet_fc=True, phase="test")).eval()
    state = theirs.state_dict()
    pth = tmp_path / "m2det_resnet.pth"
    torch.save({"model": state}, pth)
    out = tmp_path / "m2det_resnet.ckpt"
    assert convert.main(["--torch_ckpt", str(pth), "--config", str(cfg_file), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "base.fc.weight" in report and "warning" not in report

    ours = build_detector(load_config(str(cfg_file)))
    params = read_checkpoint(str(out))
    load_detector_weights(ours, params)
    check_every_tensor(params, state, shared_leach=False, network=ours)
    ours.set_train(False)
    x = np.random.default_rng(5).uniform(-120, 120, (1, 3, 128, 128)).astype(np.float32)
    assert_same_forward(ours, theirs, x)


def _numpy_state(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _lite_shapes():
    return {p.name: tuple(p.shape) for p in build_detector(load_config(LITE)).get_parameters()}


def test_leach_copies_that_differ_warn_and_use_the_first():
    state = _numpy_state(lite_reference())
    shapes = _lite_shapes()
    report = convert_state_dict(state, shapes, m2det_release_map(shared_leach=True))
    assert report.ok and not report.warnings and not report.unmapped
    assert len([k for k in report.shared_copies if k.startswith("leach.")]) == 3 * 5   # 3 copies x 5 tensors
    state["leach.2.conv.weight"] = state["leach.2.conv.weight"] + 1.0
    report = convert_state_dict(state, shapes, m2det_release_map(shared_leach=True))
    assert len(report.warnings) == 1
    assert "leach" in report.warnings[0] and "leach.2.conv.weight" in report.warnings[0]
    np.testing.assert_array_equal(report.tensors["neck.ffm2.0.reduce.conv.weight"], state["leach.0.conv.weight"])


def test_shape_mismatch_is_refused_with_the_tensors_listed(tmp_path, capsys):
    pth = tmp_path / "lite.pth"
    torch.save(lite_reference().state_dict(), pth)
    out = tmp_path / "x.ckpt"
    code = convert.main(["--torch_ckpt", str(pth), "--config", LITE, "--set", "model.num_classes=2",
                         "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert "shape mismatches (10)" in err   # conf.0..4 weight and bias
    assert "conf.0.weight -> head.conf_convs.0.weight: file (36, 256, 3, 3) vs network (18, 256, 3, 3)" in err
    # 36 = 6 anchors x 6 columns: the release's num_classes 6 counts the background
    assert ("hint: the file's conf layers predict 6 softmax columns per prior (background + 5 classes): "
            "set model.num_classes=5 (the object classes; the config has 2)") in err


def test_missing_and_unmapped_keys_are_reported():
    state = _numpy_state(lite_reference())
    shapes = _lite_shapes()
    state["extra.weight"] = np.zeros(3, np.float32)
    report = convert_state_dict(state, shapes, m2det_release_map())
    assert report.ok and report.unmapped == ["extra.weight"]
    assert "unmapped (left out) (1): extra.weight" in report.summary()
    del state["Norm.running_var"]
    report = convert_state_dict(state, shapes, m2det_release_map())
    assert report.missing == ["neck.norm.moving_variance"]
    with pytest.raises(ConversionError, match=r"missing \(1\): neck.norm.moving_variance"):
        report.raise_for_problems("the lite network")


class NotATensor:
    """A custom class: unpickling it would need code from this module."""


class RunsACommand:
    """Unpickling this calls os.system: the classic hostile pickle."""

    def __reduce__(self):
        return (os.system, ("echo unpickled",))


def test_pickles_that_need_code_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"0.weight": torch.zeros(2)}, "payload": NotATensor()}, evil)
    assert convert.main(["--backbone_path", str(evil)]) == 1
    err = capsys.readouterr().err
    assert "refused to load" in err and "unpickling it would run code" in err and "NotATensor" in err
    assert "weights_only" not in err       # never the advice to load it unsafely
    hostile = tmp_path / "hostile.pth"
    torch.save({"w": torch.zeros(2), "payload": RunsACommand()}, hostile)
    assert convert.main(["--backbone_path", str(hostile)]) == 1
    err = capsys.readouterr().err
    assert "refused to load" in err and "unpickling it would run code (posix.system)" in err
    assert "weights_only" not in err and "corrupt" not in err and "Traceback" not in err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    assert convert.main(["--backbone_path", str(junk)]) == 1
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "evil.ckpt").exists() and not (tmp_path / "junk.ckpt").exists()


def test_m2det320_vgg_release_checkpoint(tmp_path, detector320):
    """The full M2Det-320 VGG: conversion of a release-layout file, then one image through both nets."""
    torch.manual_seed(0)
    theirs = randomize_torch(ref.M2DetReference(backbone="vgg16", input_size=320, phase="test")).eval()
    state = theirs.state_dict()
    assert sum(p.numel() for p in theirs.parameters()) == 132_633_140   # REFERENCE 1.6, shared leach counted once
    pth = tmp_path / "m2det320_vgg.pth"
    torch.save(state, pth)
    out = tmp_path / "m2det320_vgg.ckpt"
    cfg_path = os.path.join(ROOT, "configs", "m2det320_vgg.yaml")
    assert convert.main(["--torch_ckpt", str(pth), "--config", cfg_path, "--out", str(out)]) == 0
    os.remove(pth)

    ours = detector320
    params = read_checkpoint(str(out))
    load_detector_weights(ours, params)
    check_every_tensor(params, state, network=ours)
    del params
    ours.set_train(False)
    x = np.random.default_rng(7).uniform(-120, 120, (1, 3, 320, 320)).astype(np.float32)
    loc, conf = assert_same_forward(ours, theirs, x)
    assert loc.shape == (1, 12_810, 4) and conf.shape == (1, 12_810, 81)
