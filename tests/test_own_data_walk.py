"""The own-data walk in miniature (tiny M2Det, a few images): a VOC folder -> convert_dataset.py ->
train.py --load_from (another class count) -> eval.py, export.py, infer.py, serve-style loading and
the Python API, none of them given --config, --names or --ann; plus the refusals on the way
(--resume with --load_from, a fresh run into a folder with checkpoints, another architecture)."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import yaml

from src.builder import build_detector
from src.config import load_config
from src.data.coco import read_image
from src.data.synthetic import SyntheticConfig, make_synthetic_coco
from src.inference import load_detector
from src.training.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from src.training.trainer import TrainingError, TrainOptions, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
SIGNS = ["diamond", "hexagon", "arrow"]


def run(script, *args):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def coco_to_voc(root, split, ann_dir, img_dir):
    """Write a COCO split as VOC XML files (1-based inclusive corners) next to its images."""
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    for img in data["images"]:
        stem = f"{split}_{os.path.splitext(img['file_name'])[0]}"
        os.link(os.path.join(root, split, img["file_name"]), os.path.join(img_dir, stem + ".jpg"))
        objects = ""
        for a in (a for a in data["annotations"] if a["image_id"] == img["id"]):
            x, y, w, h = a["bbox"]
            objects += (f"<object><name>{names[a['category_id']]}</name><difficult>0</difficult><bndbox>"
                        f"<xmin>{x + 1:g}</xmin><ymin>{y + 1:g}</ymin><xmax>{x + w:g}</xmax><ymax>{y + h:g}</ymax>"
                        f"</bndbox></object>")
        with open(os.path.join(ann_dir, stem + ".xml"), "w") as f:
            f.write(f"<annotation><filename>{stem}.jpg</filename><size><width>{img['width']}</width>"
                    f"<height>{img['height']}</height></size>{objects}</annotation>")


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    base = tmp_path_factory.mktemp("walk")
    synthetic = str(base / "signs_coco")
    make_synthetic_coco(synthetic, num_train=8, num_val=4, seed=0,
                        spec=SyntheticConfig(kind="signs", min_side=128, max_side=192, min_size=16))
    ann_dir, img_dir = base / "voc" / "Annotations", base / "voc" / "JPEGImages"
    ann_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    for split in ("train", "val"):
        coco_to_voc(synthetic, split, str(ann_dir), str(img_dir))
    # a "pretrained" tiny detector of 5 classes (the default shapes), saved like convert.py's files
    ms.set_seed(0)
    pretrained = save_checkpoint(str(base / "pretrained.ckpt"), build_detector(load_config(TINY)))
    return {"base": base, "voc": (str(ann_dir), str(img_dir)), "pretrained": pretrained}


def test_convert_finetune_evaluate_export_infer_api(walk):
    base = walk["base"]
    data = str(base / "data")
    code, log = run("convert_dataset.py", "voc", "--annotations", walk["voc"][0], "--images", walk["voc"][1],
                    "--out", data, "--val_fraction", "0.34", "--seed", "0", "--classes", ",".join(SIGNS))
    assert code == 0, log
    assert "8 train / 4 val images, 3 classes" in log

    out = str(base / "run")
    # PyNative: the same training code without the graph compilation (60 s of this test otherwise)
    train_args = ["--config", TINY, "--data_dir", data, "--output_dir", out, "--epochs", "1",
                  "--mode", "pynative", "--set", "model.num_classes=3", "train.batch_size=4", "data.augment=false"]
    code, log = run("train.py", *train_args, "--load_from", walk["pretrained"])
    assert code == 0, log
    # tiny multibox head: 4 levels x (conf weight + bias) are the class-dependent tensors
    pretrained = read_checkpoint(walk["pretrained"])
    assert f"{len(pretrained) - 8} tensors loaded, 8 class-dependent tensors re-initialised" in log
    ckpt = os.path.join(out, "tiny_epoch0001.ckpt")
    params = read_checkpoint(ckpt)
    assert json.loads(params["class_names"]) == [{"id": i + 1, "name": n} for i, n in enumerate(SIGNS)]
    with open(os.path.join(out, "config.yaml")) as f:
        resolved = yaml.safe_load(f)
    assert resolved["model"]["num_classes"] == 3 and resolved["train"]["load_from"] == walk["pretrained"]
    assert yaml.safe_load(params["config"]) == resolved

    # nothing overwrites that run (refused before anything is built); --resume with --load_from is an error
    cfg = load_config(TINY, ["model.num_classes=3", f"data.root={data}"])
    with pytest.raises(TrainingError, match=r"already holds checkpoints of this config \(tiny_epoch0001.ckpt.*--overwrite"):
        train(cfg, TrainOptions(output_dir=out))
    code, log = run("train.py", *train_args, "--resume", "auto", "--load_from", walk["pretrained"])
    assert code == 2 and "give one of them" in log

    code, log = run("eval.py", "--checkpoint", ckpt, "--data_dir", data, "--output_dir", str(base / "eval"))
    assert code == 0, log
    with open(base / "eval" / "metrics.json") as f:
        assert json.load(f)["num_images"] == 4
    assert os.path.isfile(base / "eval" / "config.yaml")

    mindir = str(base / "model.mindir")
    code, log = run("export.py", "--checkpoint", ckpt, "--out", mindir, "--with_decode")
    assert code == 0, log
    with open(mindir + ".json") as f:
        sidecar = json.load(f)
    assert [c["name"] for c in sidecar["classes"]] == SIGNS
    assert yaml.safe_load(sidecar["resolved_config"])["model"]["num_classes"] == 3

    images = os.path.join(data, "val")
    code, log = run("infer.py", "--mindir", mindir, "--images", images, "--out", str(base / "infer"),
                    "--score_threshold", "0.0", "--no_pictures")
    assert code == 0, log
    with open(base / "infer" / "results.json") as f:
        results = json.load(f)
    labels = {b["label"] for r in results for b in r["boxes"]}
    assert len(results) == 4 and labels and labels <= set(SIGNS)
    assert os.path.isfile(base / "infer" / "config.yaml")

    # the Python API, from the checkpoint and from the MINDIR
    paths = sorted(os.path.join(images, n) for n in os.listdir(images))
    from_ckpt = load_detector(ckpt, score_threshold=0.0)
    from_mindir = load_detector(mindir, score_threshold=0.0)
    assert from_ckpt.class_names == SIGNS == from_mindir.class_names
    one = from_ckpt(paths[0])
    listed = from_ckpt([paths[0], read_image(paths[1])])
    assert len(listed) == 2 and len(one) > 0
    np.testing.assert_array_equal(one.boxes, listed[0].boxes)
    assert one.names == [SIGNS[k] for k in one.labels]
    exported = from_mindir(paths[0])
    np.testing.assert_allclose(exported.scores[:5], one.scores[:5], atol=1e-3)


def test_load_from_another_architecture_is_refused_before_training(walk, tmp_path):
    # the VGG/MLFPN tiny file into a ResNet-FPN config: refused before the data or the graph is built
    cfg = load_config(TINY, [f"data.root={tmp_path / 'no_data_needed'}", f"train.load_from={walk['pretrained']}",
                             "model.head.name=gfl", "model.head.dense.feat_channels=16", "model.head.dense.stacked_convs=1",
                             "model.backbone.name=resnet50", "model.backbone.width=0.125", "model.neck.name=fpn",
                             "model.neck.fpn.out_channels=16", "data.resize_mode=keep_ratio", "model.input_size=64",
                             "data.max_size=96", "model.num_classes=3"])
    with pytest.raises(CheckpointError, match=r"first mismatching layer 'backbone\.conv1\.weight'"):
        train(cfg, TrainOptions(output_dir=str(tmp_path / "r")))
    assert not [f for f in os.listdir(tmp_path / "r") if f.endswith(".ckpt")]


def test_a_dataset_of_another_class_count_is_refused_before_training(walk, tmp_path):
    cfg = load_config(TINY, [f"data.root={walk['base'] / 'signs_coco'}", "data.augment=false"])   # 5 vs 3 classes
    # the reader checks it (src/data/pipeline.py build_reader), before the network is compiled
    with pytest.raises(ValueError, match=r"has 3 categories, so model\.num_classes must be 3"):
        train(cfg, TrainOptions(output_dir=str(tmp_path / "c")))
