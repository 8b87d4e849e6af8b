"""Checkpoint writing, rotation, loading and the errors for bad files."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.training.checkpoint import (CheckpointError, CheckpointManager, checkpoint_meta, load_backbone_weights,
                                     load_detector_weights, read_checkpoint, save_checkpoint)


class Backbone(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, has_bias=True)
        self.bn = nn.BatchNorm2d(4)


class Net(nn.Cell):
    def __init__(self, width=4):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Dense(4, width)


def test_save_is_atomic_and_loads_into_a_bare_network(tmp_path):
    net = Net()
    opt = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    path = save_checkpoint(str(tmp_path / "a.ckpt"), net, opt, epoch=3, step=30, config_name="x")
    assert os.listdir(tmp_path) == ["a.ckpt"]          # no temporary file left behind
    params = read_checkpoint(path)
    assert checkpoint_meta(params) == {"epoch": 3, "step": 30, "config_name": "x"}
    fresh = Net()
    load_detector_weights(fresh, params)
    for a, b in zip(net.get_parameters(), fresh.get_parameters()):
        assert a.name == b.name
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    assert any(k.startswith("moments.") for k in params)   # optimizer state travels too


def test_mismatched_checkpoint_names_the_tensors(tmp_path):
    path = save_checkpoint(str(tmp_path / "a.ckpt"), Net(width=4))
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(4, 4\) vs network \(5, 4\)"):
        load_detector_weights(Net(width=5), read_checkpoint(path))


def test_truncated_and_missing_files_give_clear_errors(tmp_path):
    path = save_checkpoint(str(tmp_path / "a.ckpt"), Net())
    data = open(path, "rb").read()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.ckpt"):
        read_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(str(tmp_path / "none.ckpt"))


def test_manager_keeps_the_newest(tmp_path):
    net = Net()
    manager = CheckpointManager(str(tmp_path), "m2det_tiny", keep=2)
    for epoch in (1, 2, 3, 10):
        manager.save(epoch, net, None)
    assert [os.path.basename(p) for p in manager.existing()] == ["m2det_tiny_epoch0003.ckpt",
                                                                "m2det_tiny_epoch0010.ckpt"]


def test_backbone_loading_accepts_bare_or_prefixed_names_and_lists_missing(tmp_path):
    source = Net()
    bare = [{"name": p.name.split(".", 1)[1], "data": p} for p in source.backbone.get_parameters()]
    ms.save_checkpoint(bare, str(tmp_path / "bare.ckpt"))
    target = Net()
    assert load_backbone_weights(target.backbone, str(tmp_path / "bare.ckpt")) == 6
    np.testing.assert_array_equal(target.backbone.conv.weight.asnumpy(), source.backbone.conv.weight.asnumpy())
    partial = [d for d in bare if not d["name"].startswith("bn.")]
    ms.save_checkpoint(partial, str(tmp_path / "partial.ckpt"))
    with pytest.raises(CheckpointError, match=r"missing \(4\): backbone.bn"):
        load_backbone_weights(Net().backbone, str(tmp_path / "partial.ckpt"))


def test_extra_network_tensors_in_the_checkpoint_are_an_error(tmp_path):
    """A checkpoint of a bigger model (e.g. VGG with BatchNorm) must not load into a smaller one."""
    class Bigger(Net):
        def __init__(self):
            super().__init__()
            self.head = nn.SequentialCell([nn.Dense(4, 4), nn.Dense(4, 4)])

    class Smaller(Net):
        def __init__(self):
            super().__init__()
            self.head = nn.SequentialCell([nn.Dense(4, 4)])

    path = save_checkpoint(str(tmp_path / "big.ckpt"), Bigger())
    with pytest.raises(CheckpointError, match=r"unexpected \(2\): head.1.weight, head.1.bias"):
        load_detector_weights(Smaller(), read_checkpoint(path))
