"""Convert Pascal VOC XML or Azure-ML JSONL annotations into a COCO-format dataset root.

    python convert_dataset.py voc --annotations odFridgeObjects/annotations --images odFridgeObjects/images \
        --out work_dirs/fridge [--val_fraction 0.2 --seed 0 --classes carton,milk_bottle,can,water_bottle]
    python convert_dataset.py jsonl --jsonl train_annotations.jsonl --images odFridgeObjects \
        --out work_dirs/fridge [--val_fraction 0.2 --seed 0]

writes OUT/annotations/instances_{train,val}.json and OUT/train/, OUT/val/ (images hard-linked, or
copied), which `--data_dir OUT` reads with the default `data:` keys. Category ids are 1..C in the
order of --classes (default: the names found, sorted). --val_fraction 0 puts every image in train
(convert a separate validation file with its own run into another folder, or point data.val_ann
at it). Bad files stop the run with a message naming the file, line and field; nothing is
written then.
"""
from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    voc = sub.add_parser("voc", help="Pascal VOC: one XML file per image")
    voc.add_argument("--annotations", required=True, help="folder of .xml files")
    voc.add_argument("--images", required=True, help="folder of the images the XML files name")
    jsonl = sub.add_parser("jsonl", help="Azure-ML JSONL object detection")
    jsonl.add_argument("--jsonl", required=True, help="the .jsonl file")
    jsonl.add_argument("--images", required=True, help="folder the image_url paths are resolved under")
    for parser in (voc, jsonl):
        parser.add_argument("--out", required=True, help="dataset root to write")
        parser.add_argument("--val_fraction", type=float, default=0.2, help="share of images for val (seeded)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--classes", default=None,
                            help="class names in label order, comma-separated (default: sorted names found)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from src.data.formats.azureml_jsonl import read_jsonl
    from src.data.formats.coco_writer import write_coco_dataset
    from src.data.formats.records import DatasetFormatError
    from src.data.formats.voc import read_voc

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        if args.format == "voc":
            records, source = read_voc(args.annotations, args.images), args.annotations
        else:
            records, source = read_jsonl(args.jsonl, args.images), args.jsonl
        result = write_coco_dataset(records, args.out, args.val_fraction, args.seed, classes,
                                    description=f"converted from {args.format} {source}")
    except DatasetFormatError as exc:
        print(f"conversion failed: {exc}", file=sys.stderr)
        return 1
    print(f"{result['num_train']} train / {result['num_val']} val images, {len(result['classes'])} classes "
          f"{result['classes']} -> {args.out}; train with --data_dir {args.out} "
          f"--set model.num_classes={len(result['classes'])}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
