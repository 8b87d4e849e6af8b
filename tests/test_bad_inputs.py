"""Bad inputs to the data path and the CLIs (issue 15): each is a clear error naming the file or
field, or a counted, reported skip. Tiny config, PyNative, no graph compiled."""
import json
import logging
import os
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import eval as eval_cli
import export as export_cli
import train as train_cli
from src.builder import build_detector, build_postprocessor, build_priors, eval_data_settings, reader_settings
from src.config import ConfigError, load_config
from src.data.coco import CocoDetection, CocoFormatError
from src.data.pipeline import build_reader, check_readable
from src.data.synthetic import make_synthetic_coco
from src.evaluation.coco_eval import evaluate_coco
from src.evaluation.evaluator import evaluate
from src.inference import PredictorError
from src.inference.model_files import predictor_from_mindir
from src.training.checkpoint import CheckpointManager, save_checkpoint
from src.device import DeviceUnavailable, set_context
from src.training.trainer import TrainOptions, train
from src.utils.io import TEMP_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(str(out), num_train=8, num_val=5, seed=0)    # 5 categories
    return str(out)


def copy_data(data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    return root


def write_ann(path, images, annotations=(), categories=({"id": 1, "name": "a"},)):
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return str(path)


def img(i, name=None):
    return {"id": i, "file_name": name or f"{i}.jpg", "width": 20, "height": 20}


def box(i, image_id):
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 5, 5]}


# ---------------------------------------------------------------------- annotation files

def test_duplicate_image_ids_are_refused(tmp_path):
    ann = write_ann(tmp_path / "a.json", [img(7, "a.jpg"), img(7, "b.jpg")], [box(1, 7)])
    with pytest.raises(CocoFormatError, match=r"a\.json: duplicate image id 7 \(images\[0\] and images\[1\]\)"):
        CocoDetection(ann, str(tmp_path))


def test_duplicate_annotation_ids_are_refused(tmp_path):
    ann = write_ann(tmp_path / "a.json", [img(1), img(2)], [box(5, 1), box(5, 2)])
    with pytest.raises(CocoFormatError, match=r"a\.json: duplicate annotation id 5 \(annotations\[0\] and "
                                              r"annotations\[1\]\)"):
        CocoDetection(ann, str(tmp_path))


def test_an_annotation_file_without_images_is_refused(tmp_path):
    ann = write_ann(tmp_path / "val.json", [])
    with pytest.raises(CocoFormatError, match=r"val\.json: field 'images' is empty"):
        CocoDetection(ann, str(tmp_path))


def test_zero_byte_and_missing_images_are_skipped_with_their_reason(data_dir, tmp_path):
    root = copy_data(data_dir, tmp_path)
    reader = CocoDetection(str(root / "annotations/instances_val.json"), str(root / "val"))
    open(reader.image_path(1), "wb").close()            # zero bytes
    os.remove(reader.image_path(3))
    assert reader[0] is not None and reader[2] is not None
    assert reader[1] is None and reader[3] is None
    assert reader.skipped.count() == 2
    summary = reader.skip_summary()
    assert "2 unreadable image(s)" in summary and "1 missing, 1 zero-byte" in summary
    assert reader.file_names[1] in summary and reader.file_names[3] in summary


# ---------------------------------------------------------------------- categories vs model.num_classes

@pytest.mark.parametrize("num_classes", [4, 6, 9])
def test_categories_must_match_num_classes(data_dir, num_classes):
    cfg = load_config(TINY, [f"data.root={data_dir}", f"model.num_classes={num_classes}"])
    with pytest.raises(ValueError) as info:
        build_reader(reader_settings(cfg, "val"))
    message = str(info.value)
    assert "instances_val.json has 5 categories" in message
    assert "model.num_classes must be 5 (the object classes, background not counted)" in message
    assert f"model.num_classes={num_classes}" in message and "--set model.num_classes=5 " in message
    # 6 is what a config written before config_version 2 said for 5 categories
    assert ("configs before config_version 2 counted the background" in message) == (num_classes == 6)
    assert build_reader(reader_settings(load_config(TINY, [f"data.root={data_dir}"]), "val")).num_classes == 5


def test_train_cli_checks_categories_before_training(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_cli.main(["--config", TINY, "--data_dir", data_dir, "--output_dir", str(out), "--mode", "pynative",
                           "--epochs", "1", "--set", "model.num_classes=9", "data.num_workers=1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "instances_train.json has 5 categories" in err and "model.num_classes=9" in err
    assert "Traceback" not in err and not (out / "train_log.csv").exists()


@pytest.fixture(scope="module")
def four_class_checkpoint(tmp_path_factory):
    cfg = load_config(TINY, ["model.num_classes=4"])
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "four.ckpt"), build_detector(cfg))


def test_eval_cli_checks_categories(data_dir, four_class_checkpoint, tmp_path, capsys):
    code = eval_cli.main(["--config", TINY, "--checkpoint", four_class_checkpoint, "--data_dir", data_dir,
                          "--mode", "pynative", "--output_dir", str(tmp_path), "--set", "model.num_classes=4"])
    err = capsys.readouterr().err
    assert code == 1
    assert "instances_val.json has 5 categories" in err and "model.num_classes=4" in err
    assert not (tmp_path / "metrics.json").exists()


def test_eval_cli_on_an_empty_val_set(data_dir, four_class_checkpoint, tmp_path, capsys):
    root = copy_data(data_dir, tmp_path)
    write_ann(root / "annotations" / "instances_val.json", [])
    code = eval_cli.main(["--config", TINY, "--checkpoint", four_class_checkpoint, "--data_dir", str(root),
                          "--mode", "pynative", "--output_dir", str(tmp_path / "e"), "--set", "model.num_classes=4"])
    err = capsys.readouterr().err
    assert code == 1 and "instances_val.json: field 'images' is empty" in err and "Traceback" not in err


# ---------------------------------------------------------------------- skips in evaluation and training

@pytest.fixture(scope="module")
def tiny_detector():
    ms.set_seed(2)
    cfg = load_config(TINY)
    detector = build_detector(cfg)
    detector.set_train(False)
    return detector


def test_evaluation_leaves_unread_images_out(data_dir, tiny_detector, tmp_path):
    root = copy_data(data_dir, tmp_path)
    cfg = load_config(TINY, [f"data.root={root}", "data.num_workers=1", "test.score_threshold=0.0"])
    reader = build_reader(reader_settings(cfg, "val"))
    zero_id, missing_id = reader.image_ids[0], reader.image_ids[3]
    open(reader.image_path(0), "wb").close()
    os.remove(reader.image_path(3))

    metrics = evaluate(tiny_detector, eval_data_settings(cfg), build_postprocessor(cfg), out_dir=str(tmp_path / "eval"))
    assert metrics["num_images"] == 3
    assert metrics["skipped_images"] == 2 and metrics["skipped_image_ids"] == sorted([zero_id, missing_id])
    with open(metrics["results_json"]) as f:
        results = json.load(f)
    scored = {r["image_id"] for r in results}
    assert scored and not scored & {zero_id, missing_id}      # nothing detected on a blank canvas
    # the same numbers as scoring the three read images only (their GT alone counts as missed)
    read_ids = [i for i in reader.image_ids if i not in (zero_id, missing_id)]
    expected = evaluate_coco(reader.coco, results, img_ids=read_ids, per_class=False)
    for key in ("AP", "AP50", "AR100"):
        assert metrics[key] == expected[key]


def test_evaluation_with_no_readable_image_is_an_error(data_dir, tiny_detector, tmp_path):
    root = copy_data(data_dir, tmp_path)
    for name in os.listdir(root / "val"):
        open(root / "val" / name, "wb").close()
    cfg = load_config(TINY, [f"data.root={root}", "data.num_workers=1"])
    with pytest.raises(ValueError, match="no image of the val split .* could be read: 5 unreadable"):
        evaluate(tiny_detector, eval_data_settings(cfg), build_postprocessor(cfg))


def test_training_reports_skipped_images_after_the_only_epoch(data_dir, tmp_path, caplog):
    root = copy_data(data_dir, tmp_path)
    cfg = load_config(TINY, [f"data.root={root}", "data.num_workers=1", "train.epochs=1", "train.winograd=false"])
    reader = build_reader(reader_settings(cfg, "train"))
    open(reader.image_path(2), "wb").close()
    os.remove(reader.image_path(5))
    with caplog.at_level(logging.WARNING, logger="m2det.train"):
        summary = train(cfg, TrainOptions(output_dir=str(tmp_path / "run"), mode="pynative", progress_bar=False))
    assert summary["steps"] == 2                                   # 8 images / batch 4, substitutes included
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1: ")]
    assert len(reports) == 1
    assert "2 unreadable image(s)" in reports[0] and "1 missing, 1 zero-byte" in reports[0]
    assert reader.file_names[2] in reports[0] and reader.file_names[5] in reports[0]


def test_training_without_a_readable_image_is_a_clear_error(data_dir, tmp_path, capsys):
    """Every training image zero-byte or corrupt: refused before the first batch, naming the folder
    and the count (the data worker used to die with a MindSpore pipeline traceback)."""
    root = copy_data(data_dir, tmp_path)
    for k, name in enumerate(sorted(os.listdir(root / "train"))):
        with open(root / "train" / name, "wb") as f:
            f.write(b"" if k % 2 else b"not an image")
    out = tmp_path / "run"
    code = train_cli.main(["--config", TINY, "--data_dir", str(root), "--output_dir", str(out), "--mode", "pynative",
                           "--epochs", "1", "--set", "data.num_workers=1", "train.winograd=false"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "none of the 8 images of the train split can be read" in err
    assert f"8 unreadable image(s) in {root / 'train'}" in err and "4 zero-byte, 4 undecodable" in err
    assert os.listdir(out) == []                   # no log, config or checkpoint written


def test_readability_check_stops_at_the_first_readable_image(data_dir, tmp_path):
    root = copy_data(data_dir, tmp_path)
    reader = build_reader(reader_settings(load_config(TINY, [f"data.root={root}"]), "train"))
    open(reader.image_path(0), "wb").close()
    open(reader.image_path(1), "wb").close()
    os.remove(reader.image_path(4))                # after the first readable image: not looked at
    check_readable(reader, "train")
    assert reader.skipped.indices().tolist() == [0, 1]


# ---------------------------------------------------------------------- configs and command lines

def test_yaml_1_1_float_strings_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"_base_: {TINY}\ntrain:\n  lr: 1e-3\n  warmup_start_lr: 5E-7\n"
                    f"data:\n  mean: [1e2, 117, 1.5e+2]\n")
    cfg = load_config(str(path), ["train.weight_decay=1e-4"])
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.train.warmup_start_lr == 5e-7 and cfg.train.weight_decay == 1e-4
    assert cfg.data.mean == [100.0, 117.0, 150.0]
    with pytest.raises(ConfigError, match="key 'train.lr' must be float"):
        load_config(str(path), ["train.lr=1e-3x"])
    with pytest.raises(ConfigError, match="key 'model.input_size' must be int"):
        load_config(str(path), ["model.input_size=1e3"])     # an int key stays an int


def test_out_of_range_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--set train.epochs=-1: key 'train.epochs' must be >= 1, got -1"):
        load_config(TINY, ["train.epochs=-1"])
    path = tmp_path / "c.yaml"
    path.write_text(f"_base_: {TINY}\ntrain:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'train.batch_size' must be >= 1, got 0"):
        load_config(str(path))


@pytest.mark.parametrize("script,flag,value", [(train_cli, "--epochs", "-1"), (train_cli, "--batch_size", "0"),
                                               (eval_cli, "--batch_size", "0"), (eval_cli, "--draw", "-2")])
def test_cli_refuses_nonsense_numbers(script, flag, value, capsys):
    args = ["--config", TINY, flag, value] + (["--checkpoint", "x.ckpt"] if script is eval_cli else [])
    with pytest.raises(SystemExit) as info:
        script.main(args)
    assert info.value.code == 2
    assert f"argument {flag}: must be" in capsys.readouterr().err


@pytest.mark.skipif(ms.hal.is_available("GPU"), reason="a usable GPU is present")
def test_gpu_without_a_gpu_says_what_is_missing(data_dir, capsys):
    with pytest.raises(DeviceUnavailable, match=r"no usable GPU was found.*CUDA 11\.1 or 11\.6 and cuDNN 8"):
        set_context("GPU", "pynative")
    assert ms.get_context("device_target") == "CPU"             # nothing was changed
    code = eval_cli.main(["--config", TINY, "--checkpoint", "x.ckpt", "--data_dir", data_dir,
                          "--device_target", "GPU", "--mode", "pynative"])
    err = capsys.readouterr().err
    assert code == 1 and "no usable GPU" in err and "Traceback" not in err
    code = export_cli.main(["--config", TINY, "--checkpoint", "x.ckpt", "--out", "x.mindir", "--device_target", "GPU"])
    assert code == 1 and "CUDA 11.1 or 11.6" in capsys.readouterr().err
    assert ms.get_context("device_target") == "CPU"


@pytest.mark.skipif(ms.hal.is_available("Ascend"), reason="a usable Ascend NPU is present")
def test_ascend_without_an_npu_says_what_is_missing():
    with pytest.raises(DeviceUnavailable, match="no usable Ascend NPU was found.*CANN"):
        set_context("Ascend", "pynative")


# ---------------------------------------------------------------------- MINDIR description vs config

def test_mindir_of_another_config_is_refused_naming_both(tmp_path):
    """A description written by an export of tests/configs/lite256.yaml (pre-num_priors layout)."""
    mindir = tmp_path / "lite.mindir"
    mindir.write_bytes(b"not loaded: the description is checked first")
    lite = load_config(os.path.join(ROOT, "tests", "configs", "lite256.yaml"))
    priors = int(np.asarray(build_priors(lite).boxes()).shape[0])
    (tmp_path / "lite.mindir.json").write_text(json.dumps({
        "config": "tests/configs/lite256.yaml", "input_shape": [1, 3, 128, 128], "num_classes": 6,
        "outputs": ["loc (B, P, 4) SSD offsets against the priors", "scores (B, P, C) softmax"],
        "output_shapes": [[1, priors, 4], [1, priors, 6]]}))
    tiny = load_config(TINY)
    tiny_priors = int(np.asarray(build_priors(tiny).boxes()).shape[0])
    assert tiny_priors != priors
    with pytest.raises(PredictorError) as info:
        predictor_from_mindir(tiny, str(mindir))
    message = str(info.value)
    assert "exported with config tests/configs/lite256.yaml" in message and "config tiny" in message
    assert f"{priors} priors vs {tiny_priors}" in message


# ---------------------------------------------------------------------- temporary files of dead writers

class Small(nn.Cell):
    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(2, 2)

    def construct(self, x):
        return self.dense(x)


def test_temp_files_of_a_killed_writer_are_removed_at_the_next_save(tmp_path):
    target = tmp_path / "tiny_epoch0001.ckpt"
    crash = ("import os, sys; sys.path.insert(0, sys.argv[1]); from src.utils.io import atomic_write\n"
             "with atomic_write(sys.argv[2]) as f:\n    f.write(b'half'); f.flush(); os._exit(9)\n")
    proc = subprocess.Popen([sys.executable, "-c", crash, ROOT, str(target)])
    assert proc.wait(timeout=60) == 9
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and f"-{proc.pid}." in left[0]        # the dead writer's pid is in the name
    legacy = tmp_path / f".tmp-{proc.pid}-tiny_epoch0002.ckpt"     # the earlier checkpoint temp name
    legacy.write_bytes(b"x")
    host = TEMP_NAME.match(left[0]).group("host")
    live = tmp_path / f".tiny_epoch0003.ckpt.{host}-{os.getppid()}.tmp.ckpt"
    live.write_bytes(b"x")                                         # a live process's temp file stays
    other_host = tmp_path / f".tiny_epoch0004.ckpt.elsewhere-{proc.pid}.tmp"
    other_host.write_bytes(b"x")                                   # another host's: cannot be checked

    CheckpointManager(str(tmp_path), "tiny").save(5, Small(), None)
    assert sorted(os.listdir(tmp_path)) == sorted(["tiny_epoch0005.ckpt", live.name, other_host.name])
