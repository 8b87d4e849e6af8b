"""src/device.py: train.kernel_launch_group's checks and MindSpore's once-per-process rule (the
call into MindSpore is replaced here, so this process keeps launching one by one; the training
run with the setting: tests/test_train_e2e.py)."""
import logging

import mindspore as ms
import pytest

from src import device


@pytest.fixture
def launches(monkeypatch):
    calls = []
    monkeypatch.setattr(ms.runtime, "set_kernel_launch_group",
                        lambda thread_num, kernel_group_num: calls.append((thread_num, kernel_group_num)))
    monkeypatch.setattr(device, "_launch_group_set", None)
    return calls


def test_null_leaves_mindspore_alone(launches):
    device.set_kernel_launch_group(None)
    assert launches == []


def test_other_devices_keep_mindspore_launch(launches, caplog):
    with caplog.at_level(logging.INFO, logger="src.device"):
        device.set_kernel_launch_group([2, 8], "GPU")
    assert launches == [] and "applies on CPU only" in caplog.text
    with pytest.raises(ValueError, match="must be null or"):       # still checked
        device.set_kernel_launch_group([3, 8], "Ascend")


def test_threads_and_groups_are_passed_once(launches):
    device.set_kernel_launch_group([2, 8])
    device.set_kernel_launch_group((2, 8))          # the same again: nothing to do
    assert launches == [(2, 8)]
    with pytest.raises(RuntimeError, match=r"\[1, 4\].*launches with \[2, 8\] already"):
        device.set_kernel_launch_group([1, 4])
    assert launches == [(2, 8)]


@pytest.mark.parametrize("bad", [[3, 8], [0, 8], [2], [2, 8, 1], "2,8", [2.0, 8], [True, 8], [-2, 8]])
def test_refuses_what_mindspore_would_not_take(launches, bad):
    with pytest.raises(ValueError, match="train.kernel_launch_group must be null or"):
        device.set_kernel_launch_group(bad)
    assert launches == []
