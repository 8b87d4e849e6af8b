"""M2Det structure: parameter counts, shapes, names, init, modes and config errors (REFERENCE 1.1-1.7)."""
import json
import math
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from heads.multibox_head import MultiBoxHead
from heads.utils import flatten_levels
from m2det.backbones import ResNet, VGG16Reduced
from src.builder import build_detector, build_priors, feature_map_sizes
from m2det.detector import count_params
from m2det.necks import MLFPN, SFAM
from src.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHVISION_RESNET_FC = 2048 * 1000 + 1000

# a narrow M2Det: same shapes as the reference at any input size, a tiny fraction of the work
NARROW = ["model.backbone.width=0.0625", "model.neck.mlfpn.base_channels=[16, 32]", "model.neck.mlfpn.planes=16",
          "model.neck.mlfpn.num_levels=2"]


def cfg_of(name, *overrides):
    return load_config(os.path.join(ROOT, "configs", f"{name}.yaml"), list(overrides))


def lite_cfg(*overrides):
    """The small M2Det the PyTorch reference also builds (tests/configs/lite256.yaml)."""
    return load_config(os.path.join(ROOT, "tests", "configs", "lite256.yaml"), list(overrides))


@pytest.mark.parametrize("name, maps, num_priors", [
    ("m2det320_vgg", [40, 20, 10, 5, 3, 1], 12810),
    ("m2det512_vgg", [64, 32, 16, 8, 4, 2], 32760),
    ("m2det800_vgg", [100, 50, 25, 13, 7, 5], 80208),
])
def test_reference_vgg_models(name, maps, num_priors):
    cfg = cfg_of(name)
    assert cfg.model.num_classes == 80
    net = build_detector(cfg)
    assert count_params(net) == 132_633_140
    assert count_params(net.backbone) == 20_483_904
    assert feature_map_sizes(cfg) == maps
    assert net.feature_sizes(cfg.model.input_size) == [(m, m) for m in maps]
    assert [c for c, _ in net.neck.output_levels] == [2048] * 6
    assert build_priors(cfg).num_priors() == num_priors


@pytest.mark.parametrize("input_size, maps", [(320, [40, 20, 10, 5, 3, 1]), (512, [64, 32, 16, 8, 4, 2]),
                                              (800, [100, 50, 25, 13, 7, 5])])
def test_shape_arithmetic_matches_forward(input_size, maps):
    ms.set_seed(0)
    cfg = cfg_of("m2det320_vgg", *NARROW, "model.num_classes=3")
    net = build_detector(cfg)
    net.set_train(False)
    features = net.neck(net.backbone(ms.Tensor(np.zeros((1, 3, input_size, input_size), np.float32))))
    assert [tuple(f.shape[2:]) for f in features] == [(m, m) for m in maps]
    assert [f.shape[1] for f in features] == [32] * 6
    assert net.feature_sizes(input_size) == [(m, m) for m in maps]


def test_resnet101_model_count_and_fc_quirk():
    net = build_detector(cfg_of("m2det320_resnet101"))
    # the reference's 157,222,684 includes torchvision's unused 1000-way fc, which we do not build
    assert 157_222_684 - TORCHVISION_RESNET_FC == 155_173_684
    assert count_params(net) == 155_173_684
    assert count_params(net.backbone) == 44_549_160 - TORCHVISION_RESNET_FC   # torchvision resnet101
    assert net.backbone.output_levels == [(512, 8), (2048, 16)]
    assert feature_map_sizes(cfg_of("m2det320_resnet101")) == [40, 20, 10, 5, 3, 1]
    assert feature_map_sizes(cfg_of("m2det512_resnet101")) == [64, 32, 16, 8, 4, 2]
    names = [p.name for p in net.backbone.get_parameters()]
    for name in ["conv1.weight", "bn1.gamma", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                 "layer3.0.downsample.1.moving_mean", "layer3.22.conv3.weight", "layer4.2.bn3.beta"]:
        assert "backbone." + name in names


def test_resnet_general_layouts():
    fpn = ResNet(50, layer_strides=(1, 2, 2, 2), out_layers=(2, 3, 4), width=0.125)
    assert fpn.output_levels == [(64, 8), (128, 16), (256, 32)]
    assert fpn.output_sizes(224) == [(28, 28), (14, 14), (7, 7)]
    outs = fpn(ms.Tensor(np.zeros((1, 3, 64, 96), np.float32)))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 8, 12), (128, 4, 6), (256, 2, 3)]
    assert fpn.output_sizes((64, 96)) == [(8, 12), (4, 6), (2, 3)]
    assert ResNet(50, layer_strides=(1, 2, 1, 2)).output_levels == [(512, 8), (2048, 16)]
    with pytest.raises(ValueError, match="34"):
        ResNet(34)


def test_vgg16_reduced():
    vgg = VGG16Reduced()
    assert count_params(vgg) == 20_483_904
    params = {p.name: p.shape for p in vgg.get_parameters()}
    conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33]
    assert sorted(params) == sorted(f"layers.{i}.{k}" for i in conv_indices for k in ("weight", "bias"))
    assert params["layers.31.weight"] == (1024, 512, 3, 3)
    assert params["layers.33.weight"] == (1024, 1024, 1, 1)
    assert vgg.output_levels == [(512, 8), (1024, 16)]
    assert VGG16Reduced(width=0.25).output_levels == [(128, 8), (256, 16)]
    # the ceil-mode pool (index 16) keeps odd maps: 300 -> 150 -> 75 -> 38 (not 37) -> 19
    assert VGG16Reduced.output_sizes(300) == [(38, 38), (19, 19)]
    small = VGG16Reduced(width=0.0625)
    shallow, deep = small(ms.Tensor(np.zeros((1, 3, 300, 300), np.float32)))
    assert shallow.shape == (1, 32, 38, 38) and deep.shape == (1, 64, 19, 19)


def test_sfam_param_count():
    assert count_params(SFAM(2048, reduction=16)) == 526_464
    narrow = cfg_of("m2det320_vgg", *NARROW)
    with_sfam = cfg_of("m2det320_vgg", *NARROW, "model.neck.mlfpn.sfam=true")
    channels = 16 * 2
    assert count_params(build_detector(with_sfam)) - count_params(build_detector(narrow)) == \
        2 * channels * (channels // 16) + channels // 16 + channels


def test_mlfpn_levels_from_backbone():
    neck = MLFPN([(128, 8), (256, 16)], base_channels=(64, 128), planes=64, num_levels=4, num_scales=5)
    assert neck.output_levels == [(256, 8), (256, 16), (256, 32), (256, 64), (256, 64)]
    assert neck.output_sizes([(32, 32), (16, 16)]) == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert MLFPN.scale_sizes((40, 40), 6) == [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3), (1, 1)]
    # the TUM inputs: planes // 2 for level 1, planes // 2 + planes after it
    assert neck.tums[0].encoder[0].conv.in_channels == 32
    assert neck.tums[1].encoder[0].conv.in_channels == 96
    assert neck.tums[1].lateral[-1].conv.in_channels == 96


def test_lite_param_names_and_shared_ffm2():
    cfg = lite_cfg()
    net = build_detector(cfg)
    names = [p.name for p in net.get_parameters()]
    for name in ["backbone.layers.0.weight", "backbone.layers.33.bias",
                 "neck.ffm1.reduce_shallow.conv.weight", "neck.ffm1.reduce_deep.bn.moving_mean",
                 "neck.ffm2.0.reduce.conv.weight", "neck.tums.0.encoder.0.conv.weight",
                 "neck.tums.3.top.bn.gamma", "neck.tums.1.lateral.3.bn.beta", "neck.tums.2.smooth.3.conv.weight",
                 "neck.norm.gamma", "neck.norm.moving_variance", "head.loc_convs.0.weight",
                 "head.conf_convs.4.bias"]:
        assert name in names
    assert not any(n.startswith("neck.ffm2.1.") for n in names)
    assert len(names) == len(set(names))
    # per-level FFMv2 weights: (levels - 1) more 1x1 BasicConvs of 192 -> 32 channels
    per_level = build_detector(lite_cfg("model.neck.mlfpn.shared_leach=false"))
    assert count_params(per_level) - count_params(net) == 3 * (192 * 32 + 2 * 32)
    assert count_params(net) == sum(p.size for p in net.trainable_params())


def test_init():
    ms.set_seed(1)
    net = build_detector(lite_cfg())
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    w = params["neck.tums.0.lateral.0.conv.weight"]             # 64 x 64 x 3 x 3, fan_out 576
    assert abs(w.std() / math.sqrt(2 / 576) - 1) < 0.05 and abs(w.mean()) < 0.01
    assert np.all(params["neck.tums.0.lateral.0.bn.gamma"] == 1)
    assert np.all(params["neck.tums.0.lateral.0.bn.beta"] == 0)
    assert np.all(params["head.loc_convs.0.bias"] == 0) and np.all(params["head.conf_convs.2.bias"] == 0)
    head_w = params["head.conf_convs.0.weight"]                  # PyTorch default: U(+-1/sqrt(fan_in))
    assert np.abs(head_w).max() <= 1 / math.sqrt(256 * 9) + 1e-7


def test_flatten_levels_order():
    n, a, k = 2, 3, 4
    maps = [np.arange(n * a * k * h * w, dtype=np.float32).reshape(n, a * k, h, w) for h, w in [(2, 3), (1, 1)]]
    out = flatten_levels([ms.Tensor(m) for m in maps], k).asnumpy()
    assert out.shape == (n, (6 + 1) * a, k)
    m = maps[0]
    for b, y, x, anchor, c in [(0, 0, 0, 0, 0), (1, 1, 2, 2, 3), (0, 0, 1, 1, 2), (1, 1, 0, 0, 1)]:
        assert out[b, (y * 3 + x) * a + anchor, c] == m[b, anchor * k + c, y, x]
    assert out[1, 6 * a + 2, 3] == maps[1][1, 2 * k + 3, 0, 0]


def test_train_and_inference_outputs():
    ms.set_seed(2)
    net = build_detector(lite_cfg())
    assert isinstance(net.head, MultiBoxHead)
    x = ms.Tensor(np.random.default_rng(0).uniform(-100, 100, (2, 3, 256, 256)).astype(np.float32))
    net.set_train(True)
    loc, logits = net(x)
    assert loc.shape == (2, 8184, 4) and logits.shape == (2, 8184, 6)
    assert logits.asnumpy().min() < 0
    net.set_train(False)
    loc, probs = net(x)
    assert probs.shape == (2, 8184, 6)
    np.testing.assert_allclose(probs.asnumpy().sum(-1), 1.0, atol=1e-5)
    assert probs.asnumpy().min() >= 0


GRAPH_VS_PYNATIVE = r"""
import json, sys
import numpy as np, mindspore as ms
sys.path.insert(0, {root!r})
from src.config import load_config
from heads.multibox_head import MultiBoxHead
from m2det.backbones import ResNet
from src.builder import build_detector
from m2det.detector import Detector
from m2det.necks import MLFPN
ms.set_seed(0)
backbone = ResNet(50, (1, 2, 1, 2), (2, 4), width=0.0625)
neck = MLFPN(backbone.output_levels, (16, 32), planes=32, num_levels=3, num_scales=4, shared_ffm2=False, sfam=True)
variant = Detector(backbone, neck, MultiBoxHead(neck.output_levels, [4, 6, 6, 4], 2))
nets = {{"lite": build_detector(load_config({root!r} + "/tests/configs/lite256.yaml")), "variant": variant}}
rng = np.random.default_rng(0)
results = {{}}
for name, net in nets.items():
    net.set_train(False)
    x = ms.Tensor(rng.uniform(-100, 100, (1, 3, 256, 256)).astype(np.float32))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    eager = [o.asnumpy() for o in net(x)]
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = [o.asnumpy() for o in net(x)]
    results[name] = [float(np.abs(a - b).max() / max(1.0, np.abs(a).max())) for a, b in zip(eager, graph)]
    results[name + "_shapes"] = [list(o.shape) for o in graph]
print("RESULT" + json.dumps(results))
"""


def test_graph_mode_matches_pynative():
    """Inference outputs of the lite config, and of a ResNet + per-level FFMv2 + SFAM variant,
    are the same compiled (GRAPH) and eager (PyNative). Runs in a subprocess to keep the
    execution mode of this test session untouched."""
    proc = subprocess.run([sys.executable, "-c", GRAPH_VS_PYNATIVE.format(root=ROOT)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert res["lite_shapes"] == [[1, 8184, 4], [1, 8184, 6]]
    assert max(res["lite"]) < 1e-4, res
    # 256 input: ResNet layer2 at 32, TUM maps 32/16/8/6 (the last conv is "valid")
    assert res["variant_shapes"] == [[1, (32 * 32 + 36) * 4 + (16 * 16 + 8 * 8) * 6, 4],
                                     [1, (32 * 32 + 36) * 4 + (16 * 16 + 8 * 8) * 6, 3]]
    assert max(res["variant"]) < 1e-4, res


# ---- build-time config errors ------------------------------------------------------------------

def test_error_unsupported_backbone():
    with pytest.raises(ValueError) as err:
        build_detector(cfg_of("m2det320_vgg", "model.backbone.name=mobilenet"))
    msg = str(err.value)
    assert "mobilenet" in msg and "vgg16" in msg and "resnet101" in msg and "resnet50" in msg


def test_error_input_too_small():
    with pytest.raises(ValueError) as err:
        build_priors(cfg_of("m2det320_vgg", "model.input_size=160", "priors.steps=[8, 16, 32, 64, 80, 160]"))
    msg = str(err.value)
    assert "160" in msg and "[20, 10, 5, 3, 2, 0]" in msg and "0x0" in msg


def test_error_steps_do_not_fit_input():
    with pytest.raises(ValueError) as err:
        build_detector(cfg_of("m2det320_vgg", "model.input_size=512"))
    msg = str(err.value)
    assert "[8, 16, 32, 64, 107, 320]" in msg and "512" in msg and "[64, 32, 16, 8, 4, 2]" in msg


def test_error_prior_lengths():
    with pytest.raises(ValueError) as err:
        build_priors(cfg_of("m2det320_vgg", "model.neck.mlfpn.num_scales=5"))
    msg = str(err.value)
    assert "num_scales = 5" in msg and "[8, 16, 32, 64, 107, 320]" in msg
    with pytest.raises(ValueError, match=r"size_pattern has 6 values .*needs num_scales \+ 1 = 7"):
        build_priors(cfg_of("m2det320_vgg", "priors.size_pattern=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]"))
    with pytest.raises(ValueError, match="aspect_ratios has 2 entries"):
        build_priors(cfg_of("m2det320_vgg", "priors.aspect_ratios=[[2], [2]]"))


def test_error_num_classes():
    with pytest.raises(ValueError, match=r"num_classes must be >= 1 \(the object classes, background not counted\), got 0"):
        build_detector(cfg_of("m2det320_vgg", "model.num_classes=0"))
    assert build_detector(cfg_of("m2det320_vgg", *NARROW, "model.num_classes=1")).head.num_columns == 2


def test_error_unsupported_neck_and_head():
    with pytest.raises(ValueError, match="neck 'bifpn'.*fpn, mlfpn"):
        build_detector(cfg_of("m2det320_vgg", "model.neck.name=bifpn"))
    with pytest.raises(ValueError, match="head 'yolo'.*multibox"):
        build_detector(cfg_of("m2det320_vgg", "model.head.name=yolo"))
    with pytest.raises(ValueError, match="fpn neck needs a ResNet"):
        build_detector(cfg_of("m2det320_vgg", "model.neck.name=fpn"))


def test_summary_cli(capsys):
    from src.summary import main

    assert main(["--config", os.path.join(ROOT, "tests", "configs", "lite256.yaml"), "--set", "model.num_classes=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_priors"] == 8184 and out["backbone_params"] == 1_281_744
    assert out["levels"] == [[256, 32, 32], [256, 16, 16], [256, 8, 8], [256, 4, 4], [256, 2, 2]]
    assert out["flops"] > 0 and out["params"] < 3_428_796     # fewer classes than the lite config's 6
    assert main(["--markdown", os.path.join(ROOT, "tests", "configs", "lite256.yaml"), "--no-flops"]) == 0
    table = capsys.readouterr().out
    assert "| lite256 | 256 | 3,428,796 | 8,184 | - |" in table
