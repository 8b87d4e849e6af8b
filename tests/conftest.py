"""Fixtures shared by the test modules.

    default_mode        module scope, automatic: every module starts in MindSpore's default
                        PyNative mode (no graph compilation for a few forward passes), whatever
                        the module before it left (the order of modules differs between a plain
                        run and `pytest -n` workers); a test that needs graph mode sets it
    tiny_checkpoint     (cfg, detector in inference mode, checkpoint path) of tests/configs/tiny.yaml
                        with seeded random weights; `make_tiny_checkpoint` for another seed or config
    synthetic_16        session scope: a synthetic COCO-format set (16 train, 2 val images, seed 0)
                        for the tests that train a few steps in a subprocess (read-only)

Markers: `slow` (registered in pyproject.toml) for tests that build, install or train for more
than about a minute.
"""
import os

import mindspore as ms
import pytest

from src.builder import build_detector
from src.config import load_config
from src.data.synthetic import make_synthetic_coco
from src.training.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


@pytest.fixture(scope="module", autouse=True)
def default_mode():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


def make_tiny_checkpoint(folder, seed: int, config: str = TINY, name: str = "tiny.ckpt"):
    """(cfg, detector in inference mode, path of its checkpoint in `folder`), weights from `seed`."""
    ms.set_seed(seed)
    cfg = load_config(config)
    detector = build_detector(cfg)
    detector.set_train(False)
    return cfg, detector, save_checkpoint(os.path.join(str(folder), name), detector)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=3)


@pytest.fixture(scope="session")
def synthetic_16(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_16")
    make_synthetic_coco(str(out), num_train=16, num_val=2, seed=0)
    return str(out)
