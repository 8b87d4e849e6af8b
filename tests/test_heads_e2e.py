"""Every dense head end to end on the synthetic dataset, on M2Det's MLFPN and on a ResNet-FPN:
config -> builder -> data pipeline targets -> jitted train step -> evaluator (COCO AP), and
train.py / eval.py for one head. Tiny widths and inputs; this is the heads' slow module."""
import csv
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from src.builder import (build_detector, build_output_decoder, build_postprocessor, build_priors, eval_data_settings,
                         train_data_settings)
from src.config import load_config
from src.data.pipeline import create_train_dataset
from src.data.synthetic import make_synthetic_coco
from src.evaluation.evaluator import evaluate
from src.postprocess import DenseOutputDecoder
from src.training.optimizer import build_sgd
from src.training.train_step import DetectorWithLoss, TrainStep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
HEADS = ["retina", "atss", "umop", "gfl", "vfnet"]
DENSE_TEST = ["test.score_threshold=0.05", "test.nms_method=nms", "test.nms_threshold=0.6", "test.keep_per_class=0",
              "data.pixel_offset=false", "test.nms_pre=100"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(str(out), num_train=16, num_val=6, seed=0)
    return str(out)


def tiny_cfg(data_dir, head, *extra):
    return load_config(TINY, [f"data.root={data_dir}", "data.augment=false", f"model.head.name={head}",
                              "model.head.dense.feat_channels=16", "model.head.dense.stacked_convs=1", *DENSE_TEST, *extra])


def level_anchors(detector, images, num_levels):
    detector.set_train(True)
    outputs = detector(ms.Tensor(images))
    return np.concatenate([a.asnumpy() for a in outputs[-num_levels:]])


@pytest.mark.parametrize("head", HEADS)
def test_head_trains_and_evaluates_on_mlfpn(data_dir, head):
    ms.set_seed(0)
    cfg = tiny_cfg(data_dir, head)
    detector = build_detector(cfg)
    layout = build_priors(cfg)
    dataset = create_train_dataset(train_data_settings(cfg), layout, batch_size=4, num_workers=1)
    images, labels, boxes = next(dataset.create_tuple_iterator(num_epochs=1))
    # the pipeline assigned against exactly the anchors the head builds in its graph
    ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(level_anchors(detector, images.asnumpy()[:1], 4), layout.anchors((128, 128))[0],
                               atol=1e-4)

    ms.set_context(mode=ms.GRAPH_MODE)
    optimizer = build_sgd(detector.trainable_params(), np.full(50, 0.02, np.float32), 0.9, 0.0)
    step = TrainStep(DetectorWithLoss(detector), optimizer, clip_grad_norm=4.0)
    step.set_train(True)
    history = [[float(v.asnumpy()) for v in step(images, labels, boxes)] for _ in range(10)]
    assert np.all(np.isfinite(history))
    assert len(history[0]) == 1 + len(detector.head.loss_names)
    assert history[-1][0] < 0.95 * history[0][0], history

    ms.set_context(mode=ms.PYNATIVE_MODE)
    detector.set_train(False)
    assert isinstance(build_output_decoder(cfg, layout), DenseOutputDecoder)
    metrics = evaluate(detector, eval_data_settings(cfg), build_postprocessor(cfg, layout))
    assert metrics["num_images"] == 6 and -1.0 <= metrics["AP"] <= 1.0


@pytest.mark.parametrize("head, extra_convs", [("vfnet", "on_output"), ("retina", "on_input")])
def test_head_on_resnet_fpn(data_dir, head, extra_convs):
    """Tiny ResNet-50-FPN (P3-P7) with keep-ratio input, DCNv2 in c3-c5 for VFNet."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    cfg = tiny_cfg(data_dir, head, "model.backbone.name=resnet50", "model.backbone.width=0.125",
                   "model.neck.name=fpn", "model.neck.fpn.out_channels=16", f"model.neck.fpn.add_extra_convs={extra_convs}",
                   f"model.neck.fpn.relu_before_extra_convs={str(head == 'vfnet').lower()}",
                   "model.backbone.dcn_stages=[false, true, true, true]" if head == "vfnet" else "data.augment=false",
                   "data.resize_mode=keep_ratio", "model.input_size=64", "data.max_size=96")
    detector = build_detector(cfg)
    assert [s for _, s in detector.neck.output_levels] == [8, 16, 32, 64, 128]
    layout = build_priors(cfg)
    dataset = create_train_dataset(train_data_settings(cfg), layout, batch_size=2, num_workers=1)
    images, labels, boxes = next(dataset.create_tuple_iterator(num_epochs=1))
    assert images.shape == (2, 3, 64, 96)
    np.testing.assert_allclose(level_anchors(detector, images.asnumpy()[:1], 5), layout.anchors((64, 96))[0],
                               atol=1e-4)
    detector.set_train(True)
    parts = detector.head.loss(detector(images), labels, boxes)
    assert all(np.isfinite(float(p.asnumpy())) for p in parts) and float(parts[0].asnumpy()) > 0
    detector.set_train(False)
    pred_boxes, scores = detector(images)
    assert pred_boxes.shape[:2] == scores.shape[:2] and scores.shape[2] == cfg.model.num_classes


def run_script(script, *args):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_train_and_eval_scripts_with_a_dense_head(data_dir, tmp_path):
    out = str(tmp_path / "gfl")
    sets = ["--set", "model.head.name=gfl", "model.head.dense.feat_channels=16", "model.head.dense.stacked_convs=1",
            *DENSE_TEST]
    code, log = run_script("train.py", "--config", TINY, "--data_dir", data_dir, "--output_dir", out,
                           "--device_target", "CPU", "--epochs", "1", *sets)
    assert code == 0, log
    with open(os.path.join(out, "train_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"cls", "box", "dfl"} <= set(rows[0])
    code, log = run_script("eval.py", "--config", TINY, "--checkpoint", os.path.join(out, "tiny_epoch0001.ckpt"),
                           "--data_dir", data_dir, "--output_dir", str(tmp_path / "eval"), *sets)
    assert code == 0, log
    with open(tmp_path / "eval" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 6 and -1.0 <= metrics["AP"] <= 1.0
