"""EXIF orientation (issue 14, item 5): JPEGs are turned upright wherever images are read (the COCO
reader for training and evaluation, infer.py's files, serve.py's uploads), as OpenCV's imread; an
annotation recorded on the stored frame is followed and the image reported.

The EXIF segments are written by hand (a TIFF header and one IFD entry, tag 0x0112) and inserted
after the JPEG's start-of-image marker, so every variant holds the same compressed pixels as the
tag-less file and decodes to the same stored array.
"""
import io
import json
import logging
import struct

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from src.data.coco import CocoDetection, read_image
from src.data.exif import apply_orientation, jpeg_orientation
from src.inference.images import decode_image_bytes

H, W = 24, 40


def pattern():
    """8x8 flat blocks, every block a different colour: any flip or rotation changes the array."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)


def exif_segment(orientation: int) -> bytes:
    tiff = b"II*\x00" + struct.pack("<I", 8)                                # little endian, IFD at 8
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff + ifd
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    return jpeg[:2] + exif_segment(orientation) + jpeg[2:]


@pytest.fixture(scope="module")
def jpeg():
    ok, buf = cv2.imencode(".jpg", pattern(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def write(path, data):
    path.write_bytes(data)
    return str(path)


def test_orientation_6_is_the_image_rotated_clockwise(jpeg, tmp_path):
    stored = read_image(write(tmp_path / "plain.jpg", jpeg))
    assert stored.shape == (H, W, 3)
    tagged = write(tmp_path / "six.jpg", with_orientation(jpeg, 6))
    assert jpeg_orientation(with_orientation(jpeg, 6)) == 6
    upright = read_image(tagged)
    # physically rotated: the stored left column becomes the top row, read right to left
    rotated = np.rot90(stored, k=-1)
    assert upright.shape == (W, H, 3)
    np.testing.assert_array_equal(upright, rotated)
    np.testing.assert_array_equal(upright[0, :], stored[::-1, 0])
    # the upload path decodes the same way; the stored frame is still reachable
    np.testing.assert_array_equal(decode_image_bytes(with_orientation(jpeg, 6), 10 ** 6), rotated)
    np.testing.assert_array_equal(read_image(tagged, exif_orientation=False), stored)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(jpeg, orientation):
    """Pillow's exif_transpose of the tagged file == our transform of Pillow's tag-less decode."""
    data = with_orientation(jpeg, orientation)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    stored = np.asarray(Image.open(io.BytesIO(jpeg)))
    np.testing.assert_array_equal(apply_orientation(stored, orientation), want)
    assert jpeg_orientation(data) == orientation


def test_no_or_bad_tag_is_as_stored(jpeg):
    assert jpeg_orientation(jpeg) == 1
    assert jpeg_orientation(with_orientation(jpeg, 9)) == 1
    assert jpeg_orientation(b"\x89PNG\r\n\x1a\n") == 1
    assert jpeg_orientation(b"\xff\xd8" + exif_segment(6)[:9]) == 1     # cut short


def coco(tmp_path, jpeg, width, height, box):
    images = tmp_path / "images"
    images.mkdir()
    (images / "phone.jpg").write_bytes(with_orientation(jpeg, 6))
    data = {"images": [{"id": 1, "file_name": "phone.jpg", "width": width, "height": height}],
            "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return CocoDetection(str(tmp_path / "ann.json"), str(images))


def test_reader_uses_the_upright_image_when_annotated_upright(jpeg, tmp_path, caplog):
    reader = coco(tmp_path, jpeg, width=H, height=W, box=[2, 30, 10, 8])
    with caplog.at_level(logging.WARNING):
        rec = reader[0]
    assert rec.image.shape == (W, H, 3) and rec.orig_size == (W, H)
    np.testing.assert_array_equal(rec.boxes, [[2, 30, 12, 38]])
    assert reader.orientation_ignored.count() == 0 and not caplog.records


def test_reader_follows_an_annotation_of_the_stored_frame(jpeg, tmp_path, caplog):
    """The json says 40 wide x 24 high (the stored pixels): the box at x 25..38 only fits that
    frame, so the stored image is used (not the rotated 24 x 40 one, which would clip the box
    away) and the image is counted and named."""
    reader = coco(tmp_path, jpeg, width=W, height=H, box=[25, 4, 13, 10])
    with caplog.at_level(logging.WARNING):
        rec = reader[0]
        again = reader[0]
    assert rec.image.shape == (H, W, 3)
    np.testing.assert_array_equal(rec.image, cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED))
    np.testing.assert_array_equal(rec.boxes, [[25, 4, 38, 14]])
    np.testing.assert_array_equal(again.boxes, rec.boxes)
    assert reader.orientation_ignored.count() == 1
    assert len([r for r in caplog.records if "phone.jpg" in r.getMessage()]) == 1     # once per image
    assert "phone.jpg" in reader.orientation_summary()
