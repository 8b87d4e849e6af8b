"""bench/compare_detections.py: the before/after check of a refactoring."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import compare_detections  # noqa: E402

A = [{"image_id": 1, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9},
     {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5}]


def _write(path, records):
    path.write_text(json.dumps(records))
    return str(path)


def test_same_records_in_another_order_are_the_same(tmp_path):
    assert compare_detections.main([_write(tmp_path / "a.json", A), _write(tmp_path / "b.json", A[::-1])]) == 0


def test_a_moved_box_or_a_missing_detection_differs(tmp_path):
    moved = [dict(A[0], bbox=[10.0, 20.5, 30.0, 40.0]), A[1]]
    report = compare_detections.compare(compare_detections._load(_write(tmp_path / "a.json", A)),
                                        compare_detections._load(_write(tmp_path / "m.json", moved)))
    assert report["max_xy_diff"] == 0.5 and report["identical"] == 1
    assert compare_detections.main([str(tmp_path / "a.json"), str(tmp_path / "m.json")]) == 1
    assert compare_detections.main([str(tmp_path / "a.json"), _write(tmp_path / "one.json", A[:1])]) == 1


def test_a_declared_width_convention_change_is_allowed_only_when_given(tmp_path):
    wider = [dict(d, bbox=d["bbox"][:2] + [d["bbox"][2] + 1, d["bbox"][3] + 1]) for d in A]
    a, w = _write(tmp_path / "a.json", A), _write(tmp_path / "w.json", wider)
    assert compare_detections.main([a, w]) == 1
    assert compare_detections.main([a, w, "--wh_offset", "1"]) == 0
