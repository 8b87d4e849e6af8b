"""Pascal VOC XML and Azure-ML JSONL -> COCO JSON: exact boxes, classes, the seeded split, and
errors that name the file, line and field."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from src.data.coco import CocoDetection
from src.data.formats.azureml_jsonl import read_jsonl
from src.data.formats.coco_writer import split_records, write_coco_dataset
from src.data.formats.records import DatasetFormatError, ImageRecord
from src.data.formats.voc import read_voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def voc_xml(filename, objects, size=(200, 100)):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    return f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>"


@pytest.fixture
def voc_dir(tmp_path):
    ann, img = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir()
    img.mkdir()
    for k in range(5):
        cv2.imwrite(str(img / f"im{k}.jpg"), np.full((100, 200, 3), 40 * k, np.uint8))
        objects = [("can", (11, 21, 60, 70), 0)] + ([("milk bottle", (101, 1, 200, 100), int(k == 3))] if k % 2 else [])
        (ann / f"im{k}.xml").write_text(voc_xml(f"im{k}.jpg", objects))
    return str(ann), str(img)


def test_voc_boxes_are_one_based_inclusive(voc_dir):
    records = read_voc(*voc_dir)
    assert [os.path.basename(r.path) for r in records] == [f"im{k}.jpg" for k in range(5)]
    box = records[0].boxes[0]
    # pixels 11..60 (1-based) are 0-based columns 10..59: corners 10 and 60, width 50
    assert (box.name, box.x1, box.y1, box.x2, box.y2, box.iscrowd) == ("can", 10.0, 20.0, 60.0, 70.0, 0)
    assert records[3].boxes[1].iscrowd == 1                  # difficult -> crowd (ignored)
    assert (records[1].width, records[1].height) == (200, 100)


def test_voc_to_coco_reads_back(voc_dir, tmp_path):
    out = str(tmp_path / "coco")
    result = write_coco_dataset(read_voc(*voc_dir), out, val_fraction=0.4, seed=3)
    assert result["classes"] == ["can", "milk bottle"] and (result["num_train"], result["num_val"]) == (3, 2)
    with open(result["train"]) as f:
        data = json.load(f)
    assert data["categories"] == [{"id": 1, "name": "can"}, {"id": 2, "name": "milk bottle"}]
    first = data["annotations"][0]
    assert first["bbox"] == [10.0, 20.0, 50.0, 50.0] and first["area"] == 2500.0 and first["category_id"] == 1
    reader = CocoDetection(result["train"], os.path.join(out, "train"))
    assert len(reader) == 3 and reader.cat_names == ["can", "milk bottle"]
    boxes, labels = reader.annotations(0)
    np.testing.assert_allclose(boxes[0], [10, 20, 60, 70])
    for split in ("train", "val"):
        with open(result[split]) as f:
            names = [i["file_name"] for i in json.load(f)["images"]]
        assert all(os.path.isfile(os.path.join(out, split, n)) for n in names)


def test_split_is_seeded_and_disjoint():
    records = [ImageRecord(f"{k}.jpg", 10, 10) for k in range(20)]
    train, val = split_records(records, 0.25, seed=7)
    again_train, again_val = split_records(records, 0.25, seed=7)
    other_train, other_val = split_records(records, 0.25, seed=8)
    assert len(val) == 5 and len(train) == 15
    assert [r.path for r in val] == [r.path for r in again_val]
    assert {r.path for r in val} != {r.path for r in other_val}
    assert {r.path for r in train} | {r.path for r in val} == {r.path for r in records}
    assert not {r.path for r in train} & {r.path for r in val}


def test_classes_order_is_the_users(voc_dir, tmp_path):
    result = write_coco_dataset(read_voc(*voc_dir), str(tmp_path / "c"), 0.0, classes=["milk bottle", "can"])
    with open(result["train"]) as f:
        data = json.load(f)
    assert data["categories"] == [{"id": 1, "name": "milk bottle"}, {"id": 2, "name": "can"}]
    assert result["val"] is None
    with pytest.raises(DatasetFormatError, match=r"im0\.xml: class 'can' is not in --classes"):
        write_coco_dataset(read_voc(*voc_dir), str(tmp_path / "d"), 0.0, classes=["milk bottle"])


@pytest.mark.parametrize("text,message", [
    ("<annotation><filename>im0.jpg", "not valid XML"),
    (voc_xml("im0.jpg", [("can", (1, 2, 3, 4), 0)]).replace("<bndbox>", "<box>").replace("</bndbox>", "</box>"),
     r"<object> 1 \('can'\): missing <bndbox>"),
    (voc_xml("im0.jpg", [("can", (1, 2, 3, 4), 0)]).replace("<xmax>3</xmax>", "<xmax>three</xmax>"),
     r"<object> 1 <bndbox>: <xmax> is not a number: 'three'"),
    (voc_xml("im0.jpg", [("can", (50, 2, 30, 4), 0)]), r"<object> 1: box .* is empty or inverted"),
    (voc_xml("nothere.jpg", [("can", (1, 2, 3, 4), 0)]), r"image not found \(looked for .*nothere\.jpg\)"),
])
def test_voc_errors_name_file_and_field(tmp_path, text, message):
    ann, img = tmp_path / "a", tmp_path / "i"
    ann.mkdir()
    img.mkdir()
    if "nothere" not in text:
        cv2.imwrite(str(img / "im0.jpg"), np.zeros((100, 200, 3), np.uint8))
    (ann / "im0.xml").write_text(text)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_voc(str(ann), str(img))
    assert "im0.xml" in str(info.value)


def jsonl_line(url, labels, details=True):
    line = {"image_url": url, "label": labels}
    if details:
        line["image_details"] = {"format": "jpg", "width": "200px", "height": "100px"}
    return json.dumps(line)


def label(name, x1, y1, x2, y2, crowd=0):
    return {"label": name, "topX": x1, "topY": y1, "bottomX": x2, "bottomY": y2, "isCrowd": crowd}


@pytest.fixture
def jsonl_dir(tmp_path):
    img = tmp_path / "data" / "images"
    img.mkdir(parents=True)
    for k in range(3):
        cv2.imwrite(str(img / f"{k}.jpg"), np.zeros((100, 200, 3), np.uint8))
    return tmp_path


def test_jsonl_normalised_corners_to_pixels(jsonl_dir):
    path = jsonl_dir / "train.jsonl"
    path.write_text("\n".join([
        jsonl_line("AmlDatastore://workspaceblobstore/data/images/0.jpg", [label("can", 0.1, 0.2, 0.5, 0.9)]),
        "",
        jsonl_line("images/1.jpg", [label("carton", 0.0, 0.0, 1.0, 1.0, 1)], details=False),
        jsonl_line("2.jpg", []),
    ]) + "\n")
    records = read_jsonl(str(path), str(jsonl_dir / "data" / "images"))
    assert len(records) == 3
    box = records[0].boxes[0]
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((20.0, 20.0, 100.0, 90.0))
    assert records[1].boxes[0].iscrowd == 1 and (records[1].width, records[1].height) == (200, 100)
    assert records[2].boxes == []
    result = write_coco_dataset(records, str(jsonl_dir / "out"), 0.0)
    with open(result["train"]) as f:
        data = json.load(f)
    assert data["annotations"][0]["bbox"] == [20.0, 20.0, 80.0, 70.0]
    assert [c["name"] for c in data["categories"]] == ["can", "carton"]


@pytest.mark.parametrize("line,message", [
    ("{not json", r"train\.jsonl:2: not valid JSON"),
    (json.dumps({"label": []}), r"train\.jsonl:2: missing field 'image_url'"),
    (jsonl_line("0.jpg", [label("can", 0.1, 0.2, 1.5, 0.9)]), r"train\.jsonl:2: label\[0\]: field 'bottomX' = 1.5"),
    (jsonl_line("0.jpg", [{"label": "can", "topX": 0.1, "topY": 0.1, "bottomX": 0.2}]),
     r"train\.jsonl:2: label\[0\]: field 'bottomY' must be a number"),
    (jsonl_line("0.jpg", [label("can", 0.5, 0.2, 0.1, 0.9)]), r"train\.jsonl:2: label\[0\]: box .* inverted"),
    (jsonl_line("missing.jpg", []), r"train\.jsonl:2: image for 'image_url' 'missing.jpg' not found"),
])
def test_jsonl_errors_name_line_and_field(jsonl_dir, line, message):
    path = jsonl_dir / "train.jsonl"
    path.write_text(jsonl_line("0.jpg", []) + "\n" + line + "\n")
    with pytest.raises(DatasetFormatError, match=message):
        read_jsonl(str(path), str(jsonl_dir / "data" / "images"))


def test_command_line_writes_nothing_on_a_bad_file(voc_dir, tmp_path):
    env = dict(os.environ, GLOG_v="3")
    out = tmp_path / "cli"
    ok = subprocess.run([sys.executable, os.path.join(ROOT, "convert_dataset.py"), "voc", "--annotations", voc_dir[0],
                         "--images", voc_dir[1], "--out", str(out), "--val_fraction", "0.2"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "4 train / 1 val images, 2 classes" in ok.stdout
    with open(os.path.join(voc_dir[0], "im2.xml"), "a") as f:
        f.write("<garbage")
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "convert_dataset.py"), "voc", "--annotations", voc_dir[0],
                          "--images", voc_dir[1], "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "im2.xml: not valid XML" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
