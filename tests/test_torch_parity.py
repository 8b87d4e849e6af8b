"""Our MindSpore M2Det against the PyTorch reference (tests/reference/torch_m2det.py) with the
same weights: pins the upsample mode, paddings, concat orders and the BatchNorm semantics.

The reference -> ours name map below is what checkpoint conversion needs as well.
"""
import re

import mindspore as ms
import mindspore.nn as msnn
import numpy as np
import pytest
import torch
import torch.nn as tnn

from heads.multibox_head import MultiBoxHead
from m2det.backbones import ResNet
from m2det.detector import Detector
from m2det.necks import FFMv1, MLFPN, TUM
from src.summary import count_flops
from src.config import load_config
from src.builder import build_detector
from tests.reference import torch_m2det as ref
from tests.reference.compare import assert_close as close, assert_same_forward

BN_SUFFIX = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def reference_to_ours(key: str, shared_leach: bool = True) -> str:
    """Official PyTorch M2Det state_dict key -> our parameter name (BN suffix not yet renamed)."""
    rules = [
        (r"^base\.(\d+)\.", r"backbone.layers.\1."),                  # VGG flat indices
        (r"^base\.", "backbone."),                                   # ResNet (torchvision names)
        (r"^reduce\.", "neck.ffm1.reduce_shallow."),
        (r"^up_reduce\.", "neck.ffm1.reduce_deep."),
        (r"^leach\.(\d+)\.", (lambda m: "neck.ffm2.0.reduce.") if shared_leach
         else (lambda m: f"neck.ffm2.{m[1]}.reduce.")),
        (r"^unet(\d+)\.", lambda m: f"neck.tums.{int(m[1]) - 1}."),
        (r"^sfam_module\.fc1\.\d+\.", "neck.sfam.squeeze."),
        (r"^sfam_module\.fc2\.\d+\.", "neck.sfam.expand."),
        (r"^Norm\.", "neck.norm."),
        (r"^loc\.", "head.loc_convs."),
        (r"^conf\.", "head.conf_convs."),
        (r"(^|\.)layers\.", r"\1encoder."),                          # inside a TUM
        (r"(^|\.)toplayer\.0\.", r"\1top."),
        (r"(^|\.)latlayer\.", r"\1lateral."),
    ]
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n and pattern.startswith("^base"):
            break
    return key


def our_name(key: str, params, shared_leach: bool = True, strip: str = "") -> str:
    """`reference_to_ours` plus the BatchNorm suffix rename where `params` calls for it."""
    name = reference_to_ours(key, shared_leach)
    name = name[len(strip):] if strip and name.startswith(strip) else name
    if name not in params:
        head, _, last = name.rpartition(".")
        name = f"{head}.{BN_SUFFIX[last]}"
    return name


def copy_to_torch(ours: msnn.Cell, theirs: tnn.Module, shared_leach: bool = True, strip: str = "") -> None:
    """Load our weights (and BN statistics) into the reference module, checking every one is used."""
    params = {p.name: p for p in ours.get_parameters()}
    used, state = set(), {}
    for key, value in theirs.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
            continue
        name = our_name(key, params, shared_leach, strip)
        data = params[name].asnumpy()
        assert tuple(data.shape) == tuple(value.shape), (key, name)
        state[key] = torch.from_numpy(data.copy())
        used.add(name)
    theirs.load_state_dict(state, strict=True)
    assert used == set(params), set(params) - used


def randomize(cell: msnn.Cell, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics/affines and biases, so that none is a no-op."""
    rng = np.random.default_rng(seed)
    for p in cell.get_parameters():
        leaf = p.name.rsplit(".", 1)[-1]
        shape = p.shape
        if leaf == "moving_mean" or leaf in ("beta", "bias"):
            value = rng.normal(0, 0.2, shape)
        elif leaf == "moving_variance" or leaf == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            continue
        p.set_data(ms.Tensor(value.astype(np.float32)))




@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)
    torch.manual_seed(0)


@pytest.mark.parametrize("size, scales, first", [((40, 40), 6, True), ((50, 50), 6, False),
                                                 ((37, 45), 5, False), ((25, 25), 4, True)])
def test_tum(size, scales, first):
    half, planes = 8, 16
    in_ch = half if first else half + planes
    ours = TUM(in_ch, planes, scales)
    randomize(ours)
    ours.set_train(False)
    theirs = ref.TUM(first_level=first, input_planes=half, side_channel=planes, scales=scales).eval()
    copy_to_torch(ours, theirs)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (2, half, *size)).astype(np.float32)
    y = rng.normal(0, 1, (2, planes, *size)).astype(np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x), None if first else torch.from_numpy(y))
    got = ours(ms.Tensor(x if first else np.concatenate([x, y], 1)))
    assert len(got) == len(expected) == scales
    assert [tuple(g.shape[2:]) for g in got] == TUM.output_sizes(size, scales)
    for g, e in zip(got, expected):
        close(g, e)


@pytest.mark.parametrize("shallow_size", [40, 38])
def test_ffmv1(shallow_size):
    ours = FFMv1([(12, 8), (20, 16)], out_channels=(8, 16))
    randomize(ours)
    ours.set_train(False)
    holder = tnn.Module()
    holder.reduce = ref.BasicConv(12, 8, 3, 1, 1)
    holder.up_reduce = ref.BasicConv(20, 16, 1, 1)
    holder.eval()
    copy_to_torch(ours, holder, strip="neck.ffm1.")
    rng = np.random.default_rng(2)
    s = rng.normal(0, 1, (2, 12, shallow_size, shallow_size)).astype(np.float32)
    d = rng.normal(0, 1, (2, 20, shallow_size // 2, shallow_size // 2)).astype(np.float32)
    with torch.no_grad():
        expected = ref.M2DetReference.ffm1(holder, torch.from_numpy(s), torch.from_numpy(d))
    close(ours(ms.Tensor(s), ms.Tensor(d)), expected)




def lite_reference(phase):
    return ref.M2DetReference(backbone="vgg16", width=0.25, planes=64, num_levels=4, num_scales=5,
                              base_channels=(64, 128), num_classes=6, input_size=256, phase=phase)


def test_lite_network_inference():
    ours = build_detector(load_config("tests/configs/lite256.yaml"))
    randomize(ours)
    ours.set_train(False)
    theirs = lite_reference("test").eval()
    copy_to_torch(ours, theirs)
    x = np.random.default_rng(3).uniform(-120, 120, (2, 3, 256, 256)).astype(np.float32)
    assert_same_forward(ours, theirs, x)


def check_training_step(ours, theirs, x, shared_leach=True):
    """Training mode: batch statistics in both, and the same running-statistics update everywhere
    (BasicConv BN momentum 0.01, the reference's plain BNs 0.1 in PyTorch terms)."""
    ours.set_train(True)
    theirs.train()
    theirs.phase = "train"
    loc_t, conf_t = theirs(torch.from_numpy(x))
    loc, conf = ours(ms.Tensor(x))
    close(loc, loc_t, 1e-3)
    close(conf, conf_t, 1e-3)
    params = {p.name: p for p in ours.get_parameters()}
    checked = 0
    for key, value in theirs.state_dict().items():
        if "running_" in key:
            np.testing.assert_allclose(params[our_name(key, params, shared_leach)].asnumpy(), value.numpy(),
                                       rtol=1e-3, atol=1e-4, err_msg=key)
            checked += 1
    assert checked > 0


def test_lite_network_training_mode():
    ours = build_detector(load_config("tests/configs/lite256.yaml"))
    randomize(ours)
    theirs = lite_reference("train")
    copy_to_torch(ours, theirs)
    check_training_step(ours, theirs, np.random.default_rng(4).uniform(-120, 120, (2, 3, 256, 256)).astype(np.float32))


def test_resnet_sfam_per_level_network():
    """ResNet backbone, SFAM on and per-level FFMv2 weights, built from components."""
    backbone = ResNet(50, layer_strides=(1, 2, 1, 2), out_layers=(2, 4), width=0.0625)
    neck = MLFPN(backbone.output_levels, base_channels=(16, 32), planes=32, num_levels=3, num_scales=4,
                 shared_ffm2=False, sfam=True)
    head = MultiBoxHead(neck.output_levels, [6] * 4, num_classes=4)   # + background = the reference's 5
    ours = Detector(backbone, neck, head)
    randomize(ours)
    ours.set_train(False)
    theirs = ref.M2DetReference(backbone="resnet50", width=0.0625, planes=32, num_levels=3, num_scales=4,
                                base_channels=(16, 32), num_classes=5, sfam=True, shared_leach=False,
                                phase="test").eval()
    copy_to_torch(ours, theirs, shared_leach=False)
    x = np.random.default_rng(5).uniform(-120, 120, (2, 3, 128, 128)).astype(np.float32)
    assert_same_forward(ours, theirs, x)
    check_training_step(ours, theirs, x, shared_leach=False)


def test_flops_match_reference_hooks():
    ours = build_detector(load_config("tests/configs/lite256.yaml"))
    theirs = lite_reference("test").eval()
    total = [0]

    def hook(module, inputs, output):
        n, c, h, w = output.shape
        kh, kw = module.kernel_size
        total[0] += 2 * n * c * h * w * module.in_channels // module.groups * kh * kw

    for m in theirs.modules():
        if isinstance(m, tnn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        theirs(torch.zeros(1, 3, 256, 256))
    flops, head_inputs = count_flops(ours, 256)
    assert flops == total[0]
    assert head_inputs == [(256, 32, 32), (256, 16, 16), (256, 8, 8), (256, 4, 4), (256, 2, 2)]
