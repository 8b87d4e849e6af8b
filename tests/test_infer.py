"""infer.py and src/inference: Predictor (checkpoint and MINDIR), class names, the JSON entries,
unreadable images reported per image, a checkpoint that does not fit the config.

Network: tests/configs/tiny.yaml with random weights (the boxes mean nothing; the plumbing does).
"""
import json
import os

import cv2
import mindspore as ms
import numpy as np
import pytest

import infer
from heads.box_coder import SSDBoxCoder
from src.builder import build_priors, detection_settings
from src.config import load_config
from src.data.transforms import preprocess_for_test
from src.export import export_detector
from src.inference import Predictor, detections_to_entry, load_class_names
from src.inference.model_files import predictor_from_checkpoint, predictor_from_mindir
from src.inference.names import NamesError
from src.postprocess import Detections, detect, to_original_pixels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
NAMES = ["circle", "square", "triangle", "star", "cross"]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """(cfg, detector, checkpoint path) of the tiny network with random weights."""
    return tiny_checkpoint


def picture(h, w, seed):
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 90, np.uint8)
    x, y = w // 4, h // 4
    cv2.rectangle(image, (x, y), (x + w // 2, y + h // 2), [int(v) for v in rng.integers(0, 255, 3)], -1)
    return image


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(folder / "a.png"), picture(80, 100, 0))
    cv2.imwrite(str(folder / "b.jpg"), picture(120, 64, 1))
    (folder / "c_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predictor_is_the_evaluation_path(model):
    """Same detections as: network -> SSD decode -> scale to the image (clipped) -> detect."""
    cfg, detector, ckpt = model
    images = [picture(80, 100, 0), picture(120, 64, 1), picture(50, 50, 2)]
    predictor = predictor_from_checkpoint(cfg, ckpt, batch_size=2)
    got = predictor.predict(images)
    one_by_one = Predictor(predictor.network, predictor.preprocess, predictor.postprocessor, batch_size=1).predict(images)
    priors = build_priors(cfg).boxes()
    coder = SSDBoxCoder(cfg.priors.variance)
    for image, dets, single in zip(images, got, one_by_one):
        x = preprocess_for_test(image, cfg.model.input_size, cfg.data.mean)[None]
        loc, scores = (o.asnumpy()[0] for o in detector(ms.Tensor(x)))
        h, w = image.shape[:2]
        boxes = coder.decode(loc, priors) * np.array([w, h, w, h], np.float32)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        expected = detect(boxes, scores, **detection_settings(cfg).as_kwargs())
        assert len(dets.scores) > 0
        for a, b, c in zip(expected, dets, single):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)
            # batch 2 vs batch 1: oneDNN may block the convolutions differently per batch size
            # (seen on a loaded machine: 1-ulp differences), so equal to float rounding, not bits
            np.testing.assert_allclose(b, c, rtol=1e-6, atol=1e-4)


@pytest.fixture(scope="module")
def mindir(model, tmp_path_factory):
    """The tiny network exported with in-graph decoding, batch 2."""
    cfg, detector, _ = model
    path = tmp_path_factory.mktemp("mindir") / "tiny.mindir"
    export_detector(detector, cfg, str(path), "MINDIR", batch_size=2, with_decode=True)
    return str(path)


def test_mindir_predictor_decodes_like_the_checkpoint(model, mindir):
    """A MINDIR exported with decoding: same boxes (in image pixels) and scores as the checkpoint.

    Compared before NMS: soft-NMS on random scores has near-ties that float rounding may order
    either way, which says nothing about the backends."""
    cfg, _, ckpt = model
    from_file = predictor_from_mindir(cfg, mindir)
    assert from_file.batch_size == 2 and from_file.description.startswith("MINDIR")
    from_ckpt = predictor_from_checkpoint(cfg, ckpt, batch_size=2)
    images = [picture(80, 100, 0), picture(120, 64, 1)]
    batch = np.stack([from_ckpt.preprocess(im) for im in images])
    out_ckpt, out_file = from_ckpt._run(batch), from_file._run(batch)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        boxes_c, scores_c, _, _ = from_ckpt.postprocessor.decoder([o[i] for o in out_ckpt])
        boxes_f, scores_f, _, _ = from_file.postprocessor.decoder([o[i] for o in out_file])
        np.testing.assert_allclose(to_original_pixels(boxes_f, from_file.postprocessor.policy, h, w, True),
                                   to_original_pixels(boxes_c, from_ckpt.postprocessor.policy, h, w, True), atol=1e-3)
        np.testing.assert_allclose(scores_f, scores_c, atol=1e-5)
    dets = from_file.predict(images, score_threshold=0.0)
    assert all(len(d.scores) > 0 for d in dets)


def test_json_entry():
    dets = Detections(np.array([[10, 20, 60, 100], [-5, 0, 250, 50]], np.float32), np.array([0.9, 0.5], np.float32),
                      np.array([1, 0], np.int64))
    entry = detections_to_entry(dets, width=200, height=100, names=["cat", "dog"])
    assert entry == {"boxes": [
        {"box": {"topX": 0.05, "topY": 0.2, "bottomX": 0.3, "bottomY": 1.0}, "label": "dog", "score": 0.9},
        {"box": {"topX": 0.0, "topY": 0.0, "bottomX": 1.0, "bottomY": 0.5}, "label": "cat", "score": 0.5}]}


def test_class_names(tmp_path):
    assert load_class_names(2) == ["class_0", "class_1"]
    txt = tmp_path / "names.txt"
    txt.write_text("cat\n\ndog\n")
    assert load_class_names(2, names_file=str(txt)) == ["cat", "dog"]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"categories": [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"}]}))
    assert load_class_names(2, ann_file=str(ann)) == ["cat", "dog"]
    with pytest.raises(NamesError, match=r"names 2 classes but the config has model\.num_classes=5"):
        load_class_names(5, names_file=str(txt))


def test_infer_cli_folder_with_an_unreadable_image(model, image_dir, tmp_path, capsys):
    cfg, _, ckpt = model
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES))
    out = tmp_path / "out"
    code = infer.main(["--config", TINY, "--checkpoint", ckpt, "--images", str(image_dir), "--out", str(out),
                       "--batch_size", "2", "--score_threshold", "0.05", "--names", str(names),
                       "--mode", "pynative"])
    assert code == 0
    assert "2 images" in capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())
    assert [os.path.basename(r["image"]) for r in summary] == ["a.png", "b.jpg", "c_broken.jpg"]
    assert "unreadable" in summary[2]["error"]
    assert "unreadable" in json.loads((out / "c_broken.json").read_text())["error"]
    for stem, (h, w) in (("a", (80, 100)), ("b", (120, 64))):
        entry = json.loads((out / f"{stem}.json").read_text())
        assert entry["boxes"], stem
        for det in entry["boxes"]:
            box = det["box"]
            assert set(det) == {"box", "label", "score"} and det["label"] in NAMES and det["score"] >= 0.05
            assert 0 <= box["topX"] <= box["bottomX"] <= 1 and 0 <= box["topY"] <= box["bottomY"] <= 1
        assert cv2.imread(str(out / f"{stem}.jpg")).shape[:2] == (h, w)
    assert not (out / "c_broken.jpg").exists() and not (out / "notes.json").exists()


def test_infer_cli_mindir_and_glob(mindir, image_dir, tmp_path):
    out = tmp_path / "out"
    assert infer.main(["--config", TINY, "--mindir", mindir, "--images", str(image_dir / "*.png"),
                       "--out", str(out), "--score_threshold", "0", "--no_pictures"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert [os.path.basename(r["image"]) for r in summary] == ["a.png"]
    assert summary[0]["boxes"] and summary[0]["boxes"][0]["label"].startswith("class_")
    assert not (out / "a.jpg").exists()


def test_infer_cli_refuses_a_checkpoint_of_another_config(model, image_dir, tmp_path, capsys):
    _, _, ckpt = model
    code = infer.main(["--config", os.path.join(ROOT, "tests", "configs", "lite256.yaml"), "--checkpoint", ckpt,
                       "--images", str(image_dir), "--out", str(tmp_path / "o"), "--mode", "pynative"])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not match the network" in err and "backbone.layers.0.weight" in err


def test_infer_cli_goes_on_after_a_zero_byte_image(model, tmp_path, capsys):
    _, _, ckpt = model
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    cv2.imwrite(str(folder / "fine.png"), picture(80, 100, 0))
    out = tmp_path / "out"
    assert infer.main(["--config", TINY, "--checkpoint", ckpt, "--images", str(folder), "--out", str(out),
                       "--score_threshold", "0", "--mode", "pynative", "--no_pictures"]) == 0
    assert "1 images" in capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())
    assert [os.path.basename(r["image"]) for r in summary] == ["empty.jpg", "fine.png"]
    assert summary[0]["error"] == "unreadable image (zero-byte file)"
    assert json.loads((out / "fine.json").read_text())["boxes"]


def test_mindir_with_another_config_is_refused_naming_both(mindir, image_dir, tmp_path, capsys):
    """Same input size and classes, other priors: the exported description (num_priors) decides."""
    with open(mindir + ".json") as f:
        meta = json.load(f)
    tiny_priors = int(np.asarray(build_priors(load_config(TINY)).boxes()).shape[0])
    assert meta["config_name"] == "tiny" and meta["num_priors"] == tiny_priors
    other = tmp_path / "other.yaml"
    other.write_text(f"_base_: {TINY}\npriors:\n  aspect_ratios: [[2], [2], [2], [2]]\n")
    other_priors = int(np.asarray(build_priors(load_config(str(other))).boxes()).shape[0])
    code = infer.main(["--config", str(other), "--mindir", mindir, "--images", str(image_dir),
                       "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "exported with config tiny" in err and "does not fit the config other" in err
    assert f"{tiny_priors} priors vs {other_priors}" in err
