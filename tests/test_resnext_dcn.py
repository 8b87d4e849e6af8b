"""ResNet/ResNeXt options for the FPN detectors: counts, DCNv2 stages, frozen stages, norm_eval (REFERENCE 2.1, 2.7)."""
import mindspore as ms
import numpy as np
import pytest
import torch

from m2det.backbones import ResNet
from m2det.detector import count_params
from tests.reference import torch_fpn as ref

C3_C5 = (2, 3, 4)
DCN_C3_C5 = (False, True, True, True)
BN_SUFFIX = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)
    torch.manual_seed(0)


def reference_count(**kwargs) -> int:
    with torch.device("meta"):      # shapes only: no memory, no init
        return sum(p.numel() for p in ref.ResNet(**kwargs).parameters())


@pytest.mark.parametrize("kwargs, expected", [
    # torchvision's counts minus the 1000-way fc (2,049,000): resnet50 25,557,032, resnext101_64x4d
    # 83,455,272; ResNeXt-101 32x4d (the mmdetection/FAIR model, not in torchvision) 44,177,704
    (dict(depth=50), 23_508_032),
    (dict(depth=101, groups=64, width_per_group=4), 81_406_272),
    (dict(depth=101, groups=32, width_per_group=4), 42_128_704),
    # + one conv_offset (width*27*9 + 27) per bottleneck of layer2-4 (widths 128, 256, 512; 13 blocks)
    (dict(depth=50, dcn_stages=DCN_C3_C5), 23_508_032 + 243 * (4 * 128 + 6 * 256 + 3 * 512) + 27 * 13),
])
def test_parameter_counts(kwargs, expected):
    assert reference_count(**kwargs) == expected
    net = ResNet(layer_strides=(1, 2, 2, 2), out_layers=C3_C5, **kwargs)
    assert count_params(net) == expected
    assert net.output_levels == [(512, 8), (1024, 16), (2048, 32)]
    shapes = {p.name: p.shape for p in net.get_parameters()}
    groups, per_group = kwargs.get("groups", 1), kwargs.get("width_per_group", 64)
    width = 64 * per_group // 64 * groups            # layer1's 3x3 width
    assert shapes["layer1.0.conv1.weight"] == (width, 64, 1, 1)
    assert shapes["layer1.0.conv2.weight"] == (width, width // groups, 3, 3)
    assert shapes["layer4.2.conv3.weight"] == (2048, 8 * width, 1, 1)
    if "dcn_stages" in kwargs:
        assert shapes["layer2.0.conv2.conv_offset.weight"] == (27, 128, 3, 3)
        assert shapes["layer4.2.conv2.conv_offset.bias"] == (27,)
        assert "layer1.0.conv2.conv_offset.weight" not in shapes


def copy_to_torch(ours: ResNet, theirs: torch.nn.Module) -> None:
    params = {p.name: p for p in ours.get_parameters()}
    state, used = {}, set()
    for key, value in theirs.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
            continue
        name = key
        if name not in params:
            head, _, last = name.rpartition(".")
            name = f"{head}.{BN_SUFFIX[last]}"
        data = params[name].asnumpy()
        assert tuple(data.shape) == tuple(value.shape), key
        state[key] = torch.from_numpy(data.copy())
        used.add(name)
    theirs.load_state_dict(state, strict=True)
    assert used == set(params)


def randomize(net: ResNet, seed: int) -> None:
    """Non-trivial BN statistics/affines, and offset convs that actually deform (they start at 0)."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        leaf = p.name.rsplit(".", 1)[-1]
        if leaf in ("moving_mean", "beta") or p.name.endswith("conv_offset.bias"):
            value = rng.normal(0, 0.2, p.shape)
        elif leaf in ("moving_variance", "gamma"):
            value = rng.uniform(0.5, 1.5, p.shape)
        elif p.name.endswith("conv_offset.weight"):
            value = rng.normal(0, 0.1, p.shape)
        else:
            continue
        p.set_data(ms.Tensor(value.astype(np.float32)))


def test_narrow_resnext_dcn_matches_reference():
    """Grouped conv2 (4 groups) and DCNv2 in layer2-4 with offsets of a few pixels, inference mode."""
    kwargs = dict(depth=50, layer_strides=(1, 2, 2, 2), width=0.125, groups=4, width_per_group=16,
                  dcn_stages=DCN_C3_C5)
    ours = ResNet(out_layers=C3_C5, **kwargs)
    theirs = ref.ResNet(**kwargs)
    randomize(ours, 0)
    copy_to_torch(ours, theirs)
    assert ours.layer3[0].conv2.weight.shape == (32, 8, 3, 3)   # planes 32: int(32 * 16 / 64) * 4
    ours.set_train(False)
    theirs.eval()
    x = np.random.default_rng(1).normal(size=(1, 3, 64, 48)).astype(np.float32)
    outs = ours(ms.Tensor(x))
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x), out_layers=C3_C5)
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 8, 6), (128, 4, 3), (256, 2, 2)]
    for o, e in zip(outs, expected):
        scale = max(1.0, float(e.abs().max()))
        assert np.abs(o.asnumpy() - e.numpy()).max() <= 1e-4 * scale


def _stats(net: ResNet) -> dict:
    return {p.name: p.asnumpy().copy() for p in net.get_parameters() if "moving" in p.name}


def test_frozen_stages_and_norm_eval():
    x = ms.Tensor(np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32))
    frozen = ResNet(50, (1, 2, 2, 2), C3_C5, width=0.0625, frozen_stages=1)
    for p in frozen.get_parameters():
        stem_or_layer1 = p.name.split(".")[0] in ("conv1", "bn1", "layer1")
        assert p.requires_grad == (not stem_or_layer1 and "moving" not in p.name), p.name
    assert frozen.bn1.use_batch_statistics is False
    assert frozen.layer1[0].downsample[1].use_batch_statistics is False
    assert frozen.layer2[0].bn1.use_batch_statistics is None
    before = _stats(frozen)
    frozen.set_train(True)
    frozen(x)
    after = _stats(frozen)
    for name in before:
        moved = not np.array_equal(before[name], after[name])
        assert moved == (name.split(".")[0] not in ("bn1", "layer1")), name

    # norm_eval: every BN keeps its statistics, so training-mode output = inference output
    evalnorm = ResNet(50, (1, 2, 2, 2), C3_C5, width=0.0625, norm_eval=True)
    randomize(evalnorm, 3)
    before = _stats(evalnorm)
    evalnorm.set_train(True)
    train_out = evalnorm(x)
    evalnorm.set_train(False)
    infer_out = evalnorm(x)
    for a, b in zip(train_out, infer_out):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-6)
    assert all(np.array_equal(before[k], v) for k, v in _stats(evalnorm).items())
    assert count_params(evalnorm) == count_params(ResNet(50, (1, 2, 2, 2), C3_C5, width=0.0625))

    with pytest.raises(ValueError, match="frozen_stages"):
        ResNet(50, frozen_stages=5)
    with pytest.raises(ValueError, match="dcn_stages"):
        ResNet(50, dcn_stages=(True, True))
    with pytest.raises(ValueError, match="no channels"):
        ResNet(50, width=0.0625, groups=32, width_per_group=4)


def test_frozen_dcn_backbone_trains():
    """mmdetection's X-101 DCN recipe in miniature: frozen stem + layer1, norm_eval, DCNv2 in layer2-4.
    The gradient reaches every trainable parameter (offset convs included) and nothing frozen."""
    net = ResNet(50, (1, 2, 2, 2), C3_C5, width=0.0625, groups=2, width_per_group=32, frozen_stages=1,
                 norm_eval=True, dcn_stages=DCN_C3_C5)
    net.set_train(True)
    params = net.trainable_params()
    assert not any(p.name.startswith(("conv1.", "bn1.", "layer1.")) for p in params)
    x = ms.Tensor(np.random.default_rng(4).normal(size=(1, 3, 32, 32)).astype(np.float32))

    def loss(inp):
        return sum((o ** 2).mean() for o in net(inp))

    grads = ms.grad(loss, grad_position=None, weights=params)(x)
    by_name = {p.name: g.asnumpy() for p, g in zip(params, grads)}
    assert all(np.isfinite(g).all() for g in by_name.values())
    assert np.abs(by_name["layer4.2.conv2.conv_offset.weight"]).max() > 0
    assert np.abs(by_name["layer2.0.conv2.weight"]).max() > 0
