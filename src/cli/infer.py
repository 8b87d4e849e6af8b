"""Detect objects in image files and write one JSON result and one picture per image.

    python infer.py --config configs/m2det512_vgg.yaml --checkpoint K.ckpt --images photos/ --out results/
    python infer.py --config configs/m2det_lite.yaml --mindir m2det_lite.mindir --images 'shots/*.jpg' --out r/

--images is a file, a folder (its image files) or a glob pattern. For every image, OUT/<name>.json
holds {"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label", "score"}]} with
coordinates as fractions of the image size, and OUT/<name>.jpg the image with the boxes drawn;
OUT/results.json lists every image in input order, with "error" for images that could not be read
(the run goes on). Class names: --names (text file, one per line, or JSON list) or --ann (COCO
annotations, categories sorted by id), else the names stored with the model (checkpoints written by
train.py, MINDIRs by export.py), else class_0, class_1, ... (dataset labels). --config defaults to the
config stored with the model.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from src.utils.cli_args import add_model_arguments, fraction, positive_int


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--images", required=True, help="image file, folder or glob pattern")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch_size", type=positive_int, default=1, help="with --checkpoint (a MINDIR has its own)")
    p.add_argument("--score_threshold", type=fraction, default=0.3, help="keep detections scoring at least this")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--names", help="class names: text file (one per line) or JSON list")
    names.add_argument("--ann", help="COCO annotation file whose categories name the classes")
    p.add_argument("--no_pictures", dest="pictures", action="store_false", help="write the JSON only")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def _unique_stem(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, k = stem, 1
    while name in used or name == "results":
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def run(args, predictor, names, paths: list[str]) -> list[dict]:
    """Detect on `paths` batch by batch, writing the per-image files; returns results.json's list."""
    import cv2
    from tqdm import tqdm

    from src.data.coco import SKIP_REASONS, load_image_file
    from src.inference import detections_to_entry
    from src.utils.io import write_json_atomic
    from src.visualize import draw_detections

    os.makedirs(args.out, exist_ok=True)
    used, summary = set(), []
    bar = tqdm(total=len(paths), unit="img", disable=not sys.stdout.isatty() or len(paths) < 2)
    step = predictor.batch_size
    for start in range(0, len(paths), step):
        chunk = paths[start:start + step]
        loaded = {p: load_image_file(p) for p in chunk}
        good = [(p, image) for p, (image, _) in loaded.items() if image is not None]
        detections = dict(zip((p for p, _ in good),
                              predictor.predict([image for _, image in good], args.score_threshold)))
        images = dict(good)
        for path in chunk:
            stem = _unique_stem(path, used)
            if path not in images:
                error = f"unreadable image ({SKIP_REASONS[loaded[path][1]]} file)"
                write_json_atomic(os.path.join(args.out, stem + ".json"), {"boxes": [], "error": error})
                summary.append({"image": path, "error": error})
                logging.warning("%s: %s", path, error)
                continue
            image, dets = images[path], detections[path]
            entry = detections_to_entry(dets, image.shape[1], image.shape[0], names)
            write_json_atomic(os.path.join(args.out, stem + ".json"), entry, indent=1)
            record = {"image": path, "json": stem + ".json"}
            if args.pictures:
                picture = draw_detections(image, dets.boxes, dets.scores, dets.labels, names, score_threshold=0.0)
                cv2.imwrite(os.path.join(args.out, stem + ".jpg"), picture)
                record["picture"] = stem + ".jpg"
            summary.append({**record, **entry})
        bar.update(len(chunk))
    bar.close()
    write_json_atomic(os.path.join(args.out, "results.json"), summary, indent=1)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    from src.cli.loading import CliFailure, model_from_args, predictor_from_args
    from src.inference.images import expand_image_paths
    from src.model_info import write_resolved_config

    try:
        cfg, names = model_from_args(args, "inference failed")
        paths = expand_image_paths(args.images)
        if not paths:
            raise CliFailure(2, f"no images found for --images {args.images}")
        predictor = predictor_from_args(cfg, args, "inference failed")
    except CliFailure as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    summary = run(args, predictor, names, paths)
    write_resolved_config(args.out, cfg)
    failed = sum("error" in r for r in summary)
    boxes = sum(len(r.get("boxes", [])) for r in summary)
    print(f"{len(summary) - failed} images, {boxes} detections (score >= {args.score_threshold}), "
          f"{failed} unreadable; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
