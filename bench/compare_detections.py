"""Compare two COCO results files (eval.py's bbox_results.json) detection by detection.

Used to show that a refactoring changed no output: evaluate the same checkpoint on the same
images with the code before and after, then

    python bench/compare_detections.py BEFORE/bbox_results.json AFTER/bbox_results.json [--wh_offset 1]

Detections are matched in a canonical order (image, category, score descending, box). Prints
the counts, how many records are identical, and the largest difference of each field; exits
1 if the files differ beyond `--tolerance`. `--wh_offset D` compares after subtracting D from
AFTER's widths and heights (a declared change of the box-width convention, e.g. the +1-pixel
results of `data.pixel_offset`), so that everything else must still match.
"""
from __future__ import annotations

import argparse
import json
import sys


def _load(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise SystemExit(f"{path}: expected a JSON list of COCO detections")
    return sorted(records, key=lambda d: (d["image_id"], d["category_id"], -d["score"], d["bbox"]))


def compare(before: list, after: list, wh_offset: float = 0.0) -> dict:
    """Counts and the largest per-field differences of two canonically ordered record lists."""
    report = {"before": len(before), "after": len(after), "identical": 0,
              "max_score_diff": 0.0, "max_xy_diff": 0.0, "max_wh_diff": 0.0, "mismatched_keys": 0}
    for a, b in zip(before, after):
        if (a["image_id"], a["category_id"]) != (b["image_id"], b["category_id"]):
            report["mismatched_keys"] += 1
            continue
        wh_b = [b["bbox"][2] - wh_offset, b["bbox"][3] - wh_offset]
        score = abs(a["score"] - b["score"])
        xy = max(abs(a["bbox"][0] - b["bbox"][0]), abs(a["bbox"][1] - b["bbox"][1]))
        wh = max(abs(a["bbox"][2] - wh_b[0]), abs(a["bbox"][3] - wh_b[1]))
        report["max_score_diff"] = max(report["max_score_diff"], score)
        report["max_xy_diff"] = max(report["max_xy_diff"], xy)
        report["max_wh_diff"] = max(report["max_wh_diff"], wh)
        report["identical"] += int(score == 0 and xy == 0 and round(wh, 6) == 0)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--wh_offset", type=float, default=0.0)
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="largest allowed difference of any score or box coordinate")
    args = parser.parse_args(argv)
    report = compare(_load(args.before), _load(args.after), args.wh_offset)
    print(json.dumps(report))
    same = (report["before"] == report["after"] and report["mismatched_keys"] == 0
            and max(report["max_score_diff"], report["max_xy_diff"], report["max_wh_diff"]) <= args.tolerance + 1e-9)
    print("same detections" if same else "the detections differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
