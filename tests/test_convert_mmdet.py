"""convert.py --mmdet_ckpt: mmdetection v2 checkpoints of the ResNet-FPN one-stage detectors.

The source state dicts come from a small PyTorch module tree written here with mmdetection v2's
attribute names (mmcv ConvModule `.conv` / `.gn`, mmcv Scale with a 0-d parameter, GFL's
`integral.project` buffer, VFNet's bias-free DeformConv2d); the backbone is
tests/reference/torch_fpn.ResNet, whose torchvision names (DCNv2 conv2: `conv2.conv_offset`) are
mmdetection's. The expected MindSpore name of every key is spelled out independently below.
Random values; no real weights are downloaded.
"""
import functools
import os

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convert
from src.builder import build_detector
from src.config import load_config
from src.convert import ConversionError, convert_mmdet, convert_state_dict
from src.convert.mmdet_names import adapt_mmdet_tensors, mmdet_layout_hints, mmdet_map
from src.training.checkpoint import load_detector_weights, read_checkpoint
from tests.reference import torch_fpn as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"retina": "retinanet_r50_fpn_1x.yaml", "atss": "atss_r50_fpn_1x.yaml", "umop": "umop_r50_fpn_1.5x.yaml",
           "gfl": "gfl_r50_fpn_1x.yaml", "vfnet": "vfnet_r50_fpn_1x.yaml"}
# 3 foreground classes, C3-C5 of 64/128/256 channels, 16-channel FPN and towers of 2 convs
TINY = ["model.input_size=64", "model.num_classes=3", "model.backbone.width=0.125", "model.neck.fpn.out_channels=16",
        "model.head.dense.feat_channels=16", "model.head.dense.stacked_convs=2"]
DCN_C5 = ["model.backbone.dcn_stages=[false,false,false,true]"]     # DCNv2 in layer4
RESNETS = {"resnet50": (50, 1, 64), "resnext101_32x4d": (101, 32, 4), "resnext101_64x4d": (101, 64, 4)}
BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
GN_LEAVES = {"weight": "gamma", "bias": "beta"}
PREDICTORS = {"retina_cls", "retina_reg", "atss_cls", "atss_reg", "atss_centerness", "gfl_cls", "gfl_reg",
              "vfnet_reg", "vfnet_reg_refine_dconv", "vfnet_reg_refine", "vfnet_cls_dconv", "vfnet_cls"}


# ------------------------------------------------------------------- mmdetection v2 module tree
def gn_groups(channels: int) -> int:
    return max(g for g in range(1, 33) if channels % g == 0)


class ConvModule(nn.Module):
    """mmcv ConvModule: `.conv`, plus `.gn` with GroupNorm (then the conv has no bias: bias='auto')."""

    def __init__(self, cin, cout, k=3, stride=1, gn=False, dcn=False):
        super().__init__()
        if dcn:     # mmdetection's dcn_on_last_conv: mmcv DCNv2 (ModulatedDeformConv2dPack, bias=False)
            self.conv = ref.ModulatedDeformConv2dPack(cin, cout, k, stride, k // 2)
        else:
            self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not gn)
        if gn:
            self.gn = nn.GroupNorm(gn_groups(cout), cout)


class Scale(nn.Module):
    """mmcv Scale: a 0-d parameter."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))


class DeformConv2d(nn.Module):
    """mmcv DeformConv2d (DCN v1, offsets passed in): `weight` only, bias unsupported."""

    def __init__(self, cin, cout, k=3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))


class Integral(nn.Module):
    """mmdetection GFLHead.integral: the bin positions as a (persistent) buffer."""

    def __init__(self, reg_max):
        super().__init__()
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))


class MMDetFPN(nn.Module):
    def __init__(self, in_channels, out, num_outs, extra_on_input):
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvModule(c, out, 1) for c in in_channels])
        extra = [ConvModule(in_channels[-1] if i == 0 and extra_on_input else out, out, 3, 2)
                 for i in range(num_outs - len(in_channels))]
        self.fpn_convs = nn.ModuleList([ConvModule(out, out, 3) for _ in in_channels] + extra)


class MMDetHead(nn.Module):
    def __init__(self, kind, cin, feat, stacked, num_classes, num_levels=5, reg_max=16, dcn_on_last_conv=False):
        super().__init__()
        gn = kind != "retina"

        def tower():
            return nn.ModuleList([ConvModule(cin if i == 0 else feat, feat, gn=gn,
                                             dcn=dcn_on_last_conv and i == stacked - 1) for i in range(stacked)])

        def conv(cout):
            return nn.Conv2d(feat, cout, 3, padding=1)

        self.cls_convs, self.reg_convs = tower(), tower()
        if kind == "retina":
            self.retina_cls, self.retina_reg = conv(9 * num_classes), conv(9 * 4)
        elif kind in ("atss", "umop"):
            self.atss_cls, self.atss_reg, self.atss_centerness = conv(num_classes), conv(4), conv(1)
        elif kind == "gfl":
            self.gfl_cls, self.gfl_reg = conv(num_classes), conv(4 * (reg_max + 1))
            self.integral = Integral(reg_max)
        else:
            self.vfnet_reg_conv = ConvModule(feat, feat, gn=True)
            self.vfnet_reg = conv(4)
            self.vfnet_reg_refine_dconv = DeformConv2d(feat, feat)
            self.vfnet_reg_refine = conv(4)
            self.vfnet_cls_dconv = DeformConv2d(feat, feat)
            self.vfnet_cls = conv(num_classes)
            self.scales_refine = nn.ModuleList([Scale() for _ in range(num_levels)])
        if kind != "retina":
            self.scales = nn.ModuleList([Scale() for _ in range(num_levels)])


class MMDetDetector(nn.Module):
    """backbone / neck / bbox_head of mmdetection's single-stage detector, from our config's values."""

    def __init__(self, cfg, dcn_on_last_conv=False, stacked_convs=None):
        super().__init__()
        m = cfg.model
        depth, groups, wpg = RESNETS[m.backbone.name]
        self.backbone = ref.ResNet(depth, (1, 2, 2, 2), m.backbone.width, groups, wpg,
                                   [bool(d) for d in m.backbone.dcn_stages])
        c3_c5 = [int(round(64 * 2 ** i * m.backbone.width)) * 4 for i in (1, 2, 3)]
        fpn, dense = m.neck.fpn, m.head.dense
        self.neck = MMDetFPN(c3_c5, fpn.out_channels, fpn.num_outs, fpn.add_extra_convs == "on_input")
        stacked = stacked_convs or (dense.stacked_convs if dense.stacked_convs >= 0 else
                                    {"vfnet": 3}.get(m.head.name, 4))
        self.bbox_head = MMDetHead(m.head.name, fpn.out_channels, dense.feat_channels, stacked,
                                   m.num_classes, fpn.num_outs, m.head.gfl.reg_max, dcn_on_last_conv)


def random_state(model: nn.Module, seed: int = 0) -> dict:
    """Every float tensor random (BN variances positive, DCN offsets of about a pixel)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.fill_(7)            # num_batches_tracked
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith("integral.project"):
            state[key] = value
        else:
            std = 0.3 if "bias" in key or "scale" in key or "bn" in key or "downsample.1" in key else 0.05
            state[key] = torch.randn(value.shape, generator=gen) * std + (1.0 if key.endswith("scale") else 0.0)
    return state


def mmdet_state(cfg, seed=0, **kw) -> dict:
    return random_state(MMDetDetector(cfg, **kw), seed)


# -------------------------------------------------------------- expected names, spelled out here
def expected_name(key: str, state: dict, head: str) -> str:
    parts = key.split(".")
    module, leaf = ".".join(parts[:-1]), parts[-1]
    if parts[0] == "backbone":
        return f"{module}.{BN_LEAVES[leaf]}" if module + ".running_mean" in state else key
    if parts[0] == "neck":                      # neck.lateral_convs.i.conv.weight
        assert parts[3] == "conv"
        return f"neck.{parts[1]}.{parts[2]}.{leaf}"
    assert parts[0] == "bbox_head"
    if parts[1] in ("cls_convs", "reg_convs"):   # [conv, GN, ReLU] per conv (RetinaNet: [conv, ReLU])
        per_conv = 2 if head == "retina" else 3
        i = int(parts[2])
        if parts[3] == "conv":
            return f"head.{parts[1]}.{per_conv * i}.{leaf}"
        return f"head.{parts[1]}.{per_conv * i + 1}.{GN_LEAVES[leaf]}"
    if parts[1] == "vfnet_reg_conv":
        return f"head.vfnet_reg_conv.0.{leaf}" if parts[2] == "conv" else f"head.vfnet_reg_conv.1.{GN_LEAVES[leaf]}"
    if parts[1] in ("scales", "scales_refine"):
        return f"head.{parts[1]}.{parts[2]}.scale"
    assert parts[1] in PREDICTORS and len(parts) == 3, key
    return f"head.{parts[1]}.{leaf}"


def skipped(key: str) -> bool:
    return key.endswith("num_batches_tracked") or key == "bbox_head.integral.project"


def check_every_tensor(network, params: dict, state: dict, head: str) -> None:
    """Every file tensor is in the ckpt, unchanged, under its name; every network parameter is filled."""
    used = set()
    for key, value in state.items():
        if skipped(key):
            continue
        name = expected_name(key, state, head)
        expected = value.numpy()
        if key.endswith(".scale"):
            assert expected.shape == ()
            expected = expected.reshape(1)      # mmcv's 0-d Scale, ours (1,)
        np.testing.assert_array_equal(params[name].asnumpy(), expected, err_msg=f"{key} -> {name}")
        used.add(name)
    assert used == {p.name for p in network.get_parameters()}


def tiny(head: str, extra=()):
    path = os.path.join(ROOT, "configs", CONFIGS[head])
    return path, TINY + list(extra), load_config(path, TINY + list(extra))


META = {"mmdet_version": "2.28.2", "CLASSES": ("cat", "dog", "bird"), "epoch": 12, "iter": 87_960,
        "config": "model = dict(type='GFL', ...)"}


# ----------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("head, extra", [
    ("retina", []),
    ("atss", []),
    ("umop", []),
    ("gfl", DCN_C5),            # + a DCNv2 backbone stage
    ("vfnet", DCN_C5),
])
def test_every_tensor_converts_unchanged(head, extra, tmp_path, capsys):
    """A `{"state_dict", "meta"}` file through the CLI: each tensor lands unchanged under our name."""
    path, overrides, cfg = tiny(head, extra)
    state = mmdet_state(cfg)
    pth, out = tmp_path / f"{head}.pth", tmp_path / f"{head}.ckpt"
    torch.save({"state_dict": state, "meta": META}, pth)
    assert convert.main(["--mmdet_ckpt", str(pth), "--config", path, "--set", *overrides, "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "unmapped" not in report and "missing" not in report
    assert f"dropped (no counterpart by design) ({len([k for k in state if skipped(k)])})" in report
    if head != "retina":
        assert "bbox_head.scales.0.scale: mmcv Scale () -> (1,)" in report

    network = build_detector(cfg)
    params = read_checkpoint(str(out))
    load_detector_weights(network, params)
    check_every_tensor(network, params, state, head)


def test_unknown_keys_are_reported_as_unmapped(tmp_path):
    """A bare state dict (no wrapper) with a key no rule knows: reported, left out, the rest converted."""
    _, _, cfg = tiny("atss")
    state = mmdet_state(cfg)
    state["bbox_head.loss_cls.foo"] = torch.ones(3)
    pth, out = tmp_path / "atss.pth", tmp_path / "atss.ckpt"
    torch.save(state, pth)
    report = convert_mmdet(str(pth), cfg, str(out))
    assert report.unmapped == ["bbox_head.loss_cls.foo"]
    assert "unmapped (left out) (1): bbox_head.loss_cls.foo" in report.summary()
    assert len(report.tensors) == len([k for k in state if not skipped(k)]) - 1
    network = build_detector(cfg)
    load_detector_weights(network, read_checkpoint(str(out)))


def test_shape_mismatch_is_an_error_and_writes_nothing(tmp_path, capsys):
    """A file trained for 4 classes into a 3-class config."""
    path, overrides, cfg = tiny("atss")
    pth, out = tmp_path / "atss.pth", tmp_path / "atss.ckpt"
    torch.save({"state_dict": mmdet_state(tiny("atss", ["model.num_classes=4"])[2]), "meta": META}, pth)
    code = convert.main(["--mmdet_ckpt", str(pth), "--config", path, "--set", *overrides, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and os.listdir(tmp_path) == ["atss.pth"]
    assert "shape mismatches (2)" in err
    assert "bbox_head.atss_cls.weight -> head.atss_cls.weight: file (4, 16, 3, 3) vs network (3, 16, 3, 3)" in err


@pytest.mark.parametrize("head, file_extra, file_kw, config_extra, listed, hint", [
    # the file has DCN in layer4, the config a plain conv: conv2.weight alone would load, silently wrong
    ("gfl", DCN_C5, {}, [], "layers the network does not have (6): backbone.layer4.0.conv2.conv_offset.bias",
     "deformable conv2 in layer4 (mmdetection's stage_with_dcn) where the network has plain convs"),
    ("gfl", [], {}, DCN_C5, "missing (6): backbone.layer4.0.conv2.conv_offset.weight",
     "the network has deformable conv2 in layer4 where the file has plain convs"),
    ("atss", [], {"stacked_convs": 3}, [], "bbox_head.cls_convs.2.conv.weight",
     "more tower convs: model.head.dense.stacked_convs"),
    ("vfnet", [], {"dcn_on_last_conv": True}, [], "bbox_head.cls_convs.1.conv.conv_offset.weight",
     "dcn_on_last_conv=True"),
])
def test_layers_that_do_not_correspond_are_refused(head, file_extra, file_kw, config_extra, listed, hint, tmp_path):
    """A file whose model differs from the config's in depth or conv type, though every shape the
    network has is in the file (or the other way round): an error with a hint, nothing written."""
    _, _, cfg = tiny(head, config_extra)
    pth, out = tmp_path / "x.pth", tmp_path / "x.ckpt"
    torch.save(mmdet_state(tiny(head, file_extra)[2], **file_kw), pth)
    with pytest.raises(ConversionError) as info:
        convert_mmdet(str(pth), cfg, str(out))
    assert listed in str(info.value) and hint in str(info.value)
    assert not out.exists()


def test_backbone_and_neck_compute_as_the_reference(tmp_path):
    """ResNet-50 (DCNv2 in layer4) + FPN (ReLU before P7, VFNet's) converted from mmdetection names give
    the outputs of tests/reference/torch_fpn.py loaded with the same file (`.conv.` removed)."""
    _, _, cfg = tiny("vfnet", DCN_C5)
    theirs = MMDetDetector(cfg)
    state = random_state(theirs, seed=3)
    pth, out = tmp_path / "vfnet.pth", tmp_path / "vfnet.ckpt"
    torch.save(state, pth)
    convert_mmdet(str(pth), cfg, str(out))
    ours = build_detector(cfg)
    load_detector_weights(ours, read_checkpoint(str(out)))
    ours.set_train(False)

    backbone = theirs.backbone
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    fpn = ref.FPN([64, 128, 256], 16, 5, relu_before_extra_convs=True)
    fpn.load_state_dict({k[len("neck."):].replace(".conv.", "."): v for k, v in state.items() if k.startswith("neck.")})
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        expected = fpn(backbone.eval()(torch.from_numpy(x)))
    got = ours.neck(ours.backbone(ms.Tensor(x)))
    assert len(got) == 5
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.asnumpy(), e.numpy(), rtol=1e-4, atol=1e-4)


def test_dcn_v1_offsets_become_dcnv2_with_unit_mask(tmp_path):
    """mmdetection's dcn=dict(type='DCN') (GFL X-101 dconv): conv_offset of 2K rows -> our DCNv2's 3K
    rows, mask logits 30 (sigmoid = 1.0): the converted layer computes DCN v1."""
    _, _, cfg = tiny("gfl", DCN_C5)
    state = mmdet_state(cfg)
    for key in [k for k in state if ".conv2.conv_offset." in k]:
        state[key] = state[key][:18].clone()         # mmcv DeformConv2dPack: 2 * 9 offset channels
    pth, out = tmp_path / "gfl_dcn1.pth", tmp_path / "gfl_dcn1.ckpt"
    torch.save(state, pth)
    report = convert_mmdet(str(pth), cfg, str(out))
    assert "backbone.layer4.0.conv2.conv_offset.weight: DCN v1 offsets (18, 64, 3, 3) -> DCNv2 (27, 64, 3, 3) " \
           "(mask = 1)" in report.adapted
    assert len(report.adapted) == 6 + 5      # 3 blocks x (weight, bias) + 5 scales

    ours = build_detector(cfg)
    load_detector_weights(ours, read_checkpoint(str(out)))
    x = np.random.default_rng(1).normal(size=(1, 64, 9, 7)).astype(np.float32)
    p = "backbone.layer4.0.conv2."
    t = torch.from_numpy(x)
    offset = F.conv2d(t, state[p + "conv_offset.weight"], state[p + "conv_offset.bias"], 2, 1)
    assert float(offset.abs().max()) > 0.5          # the sampling really moves
    expected = ref.deform_conv2d(t, offset, None, state[p + "weight"], stride=2, padding=1)
    got = ours.backbone.layer4[0].conv2(ms.Tensor(x))
    np.testing.assert_allclose(got.asnumpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def meta_source(cfg, **kw) -> dict:
    """Shapes of the full-size module tree (built on the meta device) as zero-stride arrays: no memory."""
    with torch.device("meta"):
        state = MMDetDetector(cfg, **kw).state_dict()
    return {k: np.broadcast_to(np.zeros((), np.float32 if v.is_floating_point() else np.int64), tuple(v.shape))
            for k, v in state.items()}


@functools.lru_cache(maxsize=None)
def full_size(config: str):
    """A shipped config and the parameter shapes of the network it builds (built once per config)."""
    cfg = load_config(os.path.join(ROOT, "configs", config))
    return cfg, {p.name: tuple(p.shape) for p in build_detector(cfg).get_parameters()}


@pytest.mark.parametrize("config, backbone_dcn_v1", [
    ("retinanet_r50_fpn_1x.yaml", False),
    ("atss_r50_fpn_1x.yaml", False),
    ("umop_r50_fpn_1.5x.yaml", False),
    ("gfl_r50_fpn_1x.yaml", False),
    ("vfnet_r50_fpn_1x.yaml", False),
    ("gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x.yaml", True),    # mmdetection's model: DCN v1 in c4-c5
    ("vfnet_x101-64x4d-mdconv-c3-c5_fpn_ms-2x.yaml", False),   # without its head DCN (see below)
])
def test_shipped_configs_take_the_full_size_layout(config, backbone_dcn_v1):
    """Names and shapes of mmdetection's full-size model of each shipped config map onto ours completely."""
    cfg, shapes = full_size(config)
    source = meta_source(cfg)
    if backbone_dcn_v1:
        source = {k: (v[:v.shape[0] // 3 * 2] if ".conv2.conv_offset." in k else v) for k, v in source.items()}
    name_map = mmdet_map(cfg.model.head.name)
    adapted, notes = adapt_mmdet_tensors(source, name_map, shapes)
    report = convert_state_dict(adapted, shapes, name_map, strict_layers=True)
    assert report.ok and not report.unmapped, report.summary()
    assert len(report.tensors) == len(shapes)
    dcn_blocks = sum(n for n, d in zip((3, 4, 23 if "x101" in config else 6, 3), cfg.model.backbone.dcn_stages) if d)
    scale_lists = {"retina": 0, "vfnet": 2}.get(cfg.model.head.name, 1)
    assert len(notes) == (2 * dcn_blocks if backbone_dcn_v1 else 0) + 5 * scale_lists


def test_vfnet_x101_mdconv_head_dcn_is_refused_with_the_reason():
    """mmdetection's VFNet X-101 mdconv model also has DCNv2 on the last tower conv (dcn_on_last_conv),
    which the heads here do not build: refused, not converted into plain convs."""
    cfg, shapes = full_size("vfnet_x101-64x4d-mdconv-c3-c5_fpn_ms-2x.yaml")
    source = meta_source(cfg, dcn_on_last_conv=True)
    report = convert_state_dict(source, shapes, mmdet_map("vfnet"), strict_layers=True)
    assert not report.ok and sorted(report.not_in_network) == [
        f"bbox_head.{t}_convs.2.conv.conv_offset.{leaf}" for t in ("cls", "reg") for leaf in ("bias", "weight")]
    assert any("dcn_on_last_conv" in h for h in mmdet_layout_hints(report.not_in_network, report.missing))


def test_config_and_arguments_are_checked(tmp_path, capsys):
    pth = tmp_path / "x.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(1)}, pth)
    lite = os.path.join(ROOT, "tests", "configs", "lite256.yaml")
    assert convert.main(["--mmdet_ckpt", str(pth), "--config", lite, "--out", str(tmp_path / "x.ckpt")]) == 1
    assert "this config has neck 'mlfpn' and head 'multibox'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.parse_args(["--mmdet_ckpt", str(pth)])
    assert "--mmdet_ckpt needs --config and --out" in capsys.readouterr().err
