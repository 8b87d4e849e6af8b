"""export.py: BatchNorm folding, the ONNX rewrites, MINDIR (mindspore.load + GraphCell) and ONNX
(onnxruntime) files that reproduce the network, decoding in the graph, clear refusals.

Networks are tests/configs/tiny.yaml (the lite config shrunk to a 128 input) and a tiny ResNet
variant; BatchNorm statistics are set near the real ones, as in a trained network.
"""
import copy
import json
import os

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
import onnxruntime as ort
import pytest

import export
from heads.box_coder import SSDBoxCoder
from src.builder import build_detector, build_priors
from m2det.detector import Detector
from src.config import load_config
from src.export import ExportError, build_export_network, export_detector, fold_batchnorm
from src.export.onnx_compat import EdgePadMaxPool2d, ExportableGroupNorm, exportable_max_pool, make_onnx_compatible
from src.training.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
RESNET_SFAM = f"""_base_: {os.path.join(ROOT, "tests", "configs", "lite256.yaml")}
model:
  num_classes: 4
  input_size: 128
  backbone: {{name: resnet50, width: 0.0625}}
  neck: {{mlfpn: {{base_channels: [16, 32], planes: 32, num_levels: 2, num_scales: 4, shared_leach: false, sfam: true}}}}
priors:
  steps: [8, 16, 32, 64]
  size_pattern: [0.1, 0.25, 0.45, 0.7, 0.95]
  aspect_ratios: [[2, 3], [2, 3], [2, 3], [2, 3]]
"""


def images(batch=1, size=128, seed=1):
    return np.random.default_rng(seed).uniform(-120, 120, (batch, 3, size, size)).astype(np.float32)


def calibrate(net: nn.Cell, x: np.ndarray, seed: int = 0) -> nn.Cell:
    """BatchNorm statistics near each BN's real input statistics (perturbed), random affines and biases.

    Activations then stay O(1) as in a trained network and no BN is an identity. The last BN of
    each ResNet bottleneck gets a small gamma (as trained ResNets' residual branches have, and as
    zero-init-residual training starts): with unit gains a random 16-block ResNet amplifies float32
    rounding ~1000x, so no float32 rewrite could be checked to 1e-4 on it.
    """
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        leaf = p.name.rsplit(".", 1)[-1]
        if leaf in ("beta", "bias"):
            p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
        elif leaf == "gamma":
            low, high = (0.1, 0.3) if ".bn3." in p.name else (0.5, 1.5)
            p.set_data(ms.Tensor(rng.uniform(low, high, p.shape).astype(np.float32)))

    def set_statistics(cell, inputs):
        a = inputs[0].asnumpy().astype(np.float64)
        mean, var = a.mean((0, 2, 3)), a.var((0, 2, 3))
        var = var + 0.1 * var.mean() + 1e-3   # nearly dead channels must not be scaled up 30x
        cell.moving_mean.set_data(ms.Tensor((mean + rng.normal(0, 0.2, mean.shape) * np.sqrt(var)).astype(np.float32)))
        cell.moving_variance.set_data(ms.Tensor((var * rng.uniform(0.5, 1.5, var.shape)).astype(np.float32)))

    handles = [c.register_forward_pre_hook(set_statistics) for _, c in net.cells_and_names()
               if isinstance(c, nn.BatchNorm2d)]
    net.set_train(False)
    net(ms.Tensor(x))
    for h in handles:
        h.remove()
    return net


def outputs(net, x):
    return [o.asnumpy() for o in net(ms.Tensor(x))]


def assert_close(expected, got, tol=1e-4):
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        b = np.asarray(b)
        assert a.shape == b.shape
        err = float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))
        assert err <= tol, f"relative error {err}"


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(TINY)
    detector = calibrate(build_detector(cfg), images(2))
    return cfg, detector


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "resnet_sfam.yaml"
    path.write_text(RESNET_SFAM)
    cfg = load_config(str(path))
    return cfg, calibrate(build_detector(cfg), images(2))


def bn_paths(net):
    return sorted(name for name, c in net.cells_and_names() if isinstance(c, nn.BatchNorm2d))


def test_folded_copy_matches_and_leaves_the_original(tiny):
    cfg, detector = tiny
    before = {p.name: p.asnumpy().copy() for p in detector.get_parameters()}
    network, changes = build_export_network(detector, cfg, "MINDIR")
    assert bn_paths(network) == ["neck.norm"]   # the BN on a concatenation has no conv to fold into
    assert len(changes["folded_bn"]) == len(bn_paths(detector)) - 1 == 23
    x = images(2)
    assert_close(outputs(detector, x), outputs(network, x))
    assert bn_paths(detector) == sorted(changes["folded_bn"] + ["neck.norm"])
    for p in detector.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), before[p.name])


def test_fold_resnet_including_downsample(resnet):
    cfg, detector = resnet
    network = copy.deepcopy(detector)
    folded = fold_batchnorm(network)
    assert "backbone.layer1.0.downsample.1" in folded and "backbone.bn1" in folded
    assert bn_paths(network) == ["neck.norm"]
    x = images(2)
    network.set_train(False)
    assert_close(outputs(detector, x), outputs(network, x))


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 2, 7, 9)])
def test_exportable_pools_are_exact(shape):
    x = ms.Tensor(np.random.default_rng(2).normal(-3, 1, shape).astype(np.float32))   # mostly negative
    for pool in (nn.MaxPool2d(2, 2, pad_mode="pad", ceil_mode=True),            # VGG pool 16
                 nn.MaxPool2d(3, 1, pad_mode="pad", padding=1),                 # VGG pool5
                 nn.MaxPool2d(3, 2, pad_mode="pad", padding=1)):                # ResNet stem
        np.testing.assert_array_equal(exportable_max_pool(pool, "p")(x).asnumpy(), pool(x).asnumpy())
    assert isinstance(exportable_max_pool(nn.MaxPool2d(3, 2, pad_mode="pad", padding=1), "p"), EdgePadMaxPool2d)


class GroupNormTower(nn.Cell):
    """conv -> GroupNorm -> ReLU, as the dense heads' towers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, has_bias=False)
        self.norm = nn.GroupNorm(4, 8)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.norm(self.conv(x)))


def test_group_norm_rewrite_exports_to_onnx(tmp_path):
    tower = GroupNormTower()
    rng = np.random.default_rng(3)
    tower.norm.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, 8).astype(np.float32)))
    tower.norm.beta.set_data(ms.Tensor(rng.normal(0, 0.2, 8).astype(np.float32)))
    x = rng.normal(5, 3, (2, 3, 12, 10)).astype(np.float32)
    tower.set_train(False)
    expected = [tower(ms.Tensor(x)).asnumpy()]
    rewritten = copy.deepcopy(tower)
    assert make_onnx_compatible(rewritten) == ["norm"] and isinstance(rewritten.norm, ExportableGroupNorm)
    assert_close(expected, [rewritten(ms.Tensor(x)).asnumpy()], 1e-5)
    ms.export(rewritten, ms.Tensor(x), file_name=str(tmp_path / "gn"), file_format="ONNX")
    assert_close(expected, onnx_outputs(tmp_path / "gn.onnx", x), 1e-5)


def test_mindir_graphcell_matches_network(tiny, tmp_path):
    cfg, detector = tiny
    out = tmp_path / "tiny.mindir"
    meta = export_detector(detector, cfg, str(out), "MINDIR", batch_size=2)
    assert out.exists() and meta["input_shape"] == [2, 3, 128, 128] and not meta["with_decode"]
    assert max(meta["max_relative_error"].values()) <= 1e-4
    assert json.loads((tmp_path / "tiny.mindir.json").read_text())["output_shapes"] == [[2, 1520, 4], [2, 1520, 6]]
    # 5 object classes + the background column; the description says which num_classes it means
    assert meta["num_classes"] == 5 and meta["config_version"] == 2
    x = images(2, seed=5)
    cell = nn.GraphCell(ms.load(str(out)))
    assert_close(outputs(detector, x), [o.asnumpy() for o in cell(ms.Tensor(x))])


def onnx_outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_onnx_with_decode_gives_boxes_in_unit_square(tiny, tmp_path):
    cfg, detector = tiny
    out = tmp_path / "tiny_decoded.onnx"
    meta = export_detector(detector, cfg, str(out), "ONNX", batch_size=1, with_decode=True)
    assert meta["with_decode"] and "neck.tums.0" in meta["rewritten_cells"]
    x = images(1, seed=6)
    loc, scores = outputs(detector, x)
    boxes = np.clip(SSDBoxCoder(cfg.priors.variance).decode(loc, build_priors(cfg).boxes()), 0, 1)
    got = onnx_outputs(out, x)
    assert_close([boxes, scores], got)
    assert got[0].min() >= 0 and got[0].max() <= 1


def test_export_cli_onnx_from_checkpoint(tiny, tmp_path, capsys):
    cfg, detector = tiny
    ckpt = save_checkpoint(str(tmp_path / "tiny.ckpt"), detector)
    out = tmp_path / "tiny_raw.onnx"
    assert export.main(["--config", TINY, "--checkpoint", ckpt, "--file_format", "onnx", "--out", str(out)]) == 0
    assert '"format": "ONNX"' in capsys.readouterr().out
    x = images(1, seed=7)
    assert_close(outputs(detector, x), onnx_outputs(out, x))


def test_export_cli_refuses_a_checkpoint_of_another_config(tiny, tmp_path, capsys):
    cfg, detector = tiny
    ckpt = save_checkpoint(str(tmp_path / "tiny.ckpt"), detector)
    code = export.main(["--config", os.path.join(ROOT, "tests", "configs", "lite256.yaml"), "--checkpoint", ckpt,
                        "--out", str(tmp_path / "x.mindir")])
    err = capsys.readouterr().err
    assert code == 1 and "shape mismatches" in err and "backbone.layers.0.weight" in err


def test_resnet_sfam_onnx(resnet, tmp_path):
    cfg, detector = resnet
    out = tmp_path / "resnet.onnx"
    meta = export_detector(detector, cfg, str(out), "ONNX", batch_size=1)
    assert "backbone.maxpool" in meta["rewritten_cells"]
    x = images(1, seed=8)
    assert_close(outputs(detector, x), onnx_outputs(out, x))


class ResizingHead(nn.Cell):
    """A head built on an op MindSpore 2.8 cannot convert to ONNX (ResizeNearestNeighborV2)."""

    def __init__(self, head):
        super().__init__()
        self.head = head
        self.pool = nn.MaxPool2d(2, 2)

    def construct(self, features):
        first = features[0]
        first = self.pool(ops.interpolate(first, size=(first.shape[2] * 2, first.shape[3] * 2), mode="nearest"))
        return self.head((first,) + features[1:])

    def predict(self, outputs):
        return self.head.predict(outputs)


def test_a_head_that_cannot_export_says_so(tiny, tmp_path):
    cfg, detector = tiny
    parts = copy.deepcopy(detector)
    odd = Detector(parts.backbone, parts.neck, ResizingHead(parts.head))
    with pytest.raises(ExportError, match=r"--with_decode is not supported for the head ResizingHead"):
        export_detector(odd, cfg, str(tmp_path / "odd"), "MINDIR", with_decode=True)
    with pytest.raises(ExportError, match=r"cannot export to ONNX: .* no ONNX converter for the operator "
                                          r"ResizeNearestNeighborV2 \(in the head: ResizingHead\)"):
        export_detector(odd, cfg, str(tmp_path / "odd.onnx"), "ONNX", verify=False)
    assert not (tmp_path / "odd.onnx").exists()
