"""Convert PyTorch weights to MindSpore checkpoints.

Backbone (ImageNet) weights, written next to the input unless --out is given:

    python convert.py --backbone_path vgg16_reducedfc.pth                       # -> vgg16_reducedfc.ckpt
    python convert.py --backbone_path resnet101.pth --backbone resnet101        # torchvision layout, fc dropped

A whole model of the M2Det PyTorch release (m2det320_vgg.pth, m2det512_vgg.pth, m2det800_vgg.pth,
m2det320_resnet101.pth) into a ckpt that loads into the matching config:

    python convert.py --torch_ckpt m2det512_vgg.pth --config configs/m2det512_vgg.yaml --out m2det512_vgg.ckpt

An mmdetection v2 checkpoint (`state_dict` with `backbone.*`, `neck.*`, `bbox_head.*`) of a ResNet/
ResNeXt-FPN RetinaNet, ATSS, GFL or VFNet (or the UMOP release, ATSS layout) into the matching
config (fpn neck, dense head; the config's head picks the name map):

    python convert.py --mmdet_ckpt gfl_r50_fpn_1x_coco.pth --config configs/gfl_r50_fpn_1x.yaml --out gfl_r50.ckpt

mmcv's 0-d Scale tensors become (1,) and DCN v1 backbone offsets become DCNv2 ones with mask 1
(listed as adapted). A file layer the network lacks (deeper backbone, more tower convs, a
deformable conv where the config has a plain one) is an error, with a hint at the config key.

Files are read with torch.load(weights_only=True): a pickle that would run code is refused. The
report lists converted, dropped, unmapped and missing tensors; a shape mismatch or a missing tensor
is an error (exit status 1) and nothing is written; unmapped tensors are left out.
"""
from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--backbone_path", help="ImageNet backbone weights (.pth)")
    src.add_argument("--torch_ckpt", help="a whole M2Det model of the PyTorch release (.pth)")
    src.add_argument("--mmdet_ckpt", help="a whole mmdetection v2 ResNet-FPN RetinaNet/ATSS/GFL/VFNet/UMOP "
                                          "model (.pth)")
    p.add_argument("--backbone", default="vgg16",
                   choices=["vgg16", "resnet50", "resnet101", "resnext101_32x4d", "resnext101_64x4d"],
                   help="network of --backbone_path (default vgg16: SSD's vgg16_reducedfc.pth; the "
                        "others in torchvision's layout)")
    p.add_argument("--config", help="config the whole model must load into (with --torch_ckpt, --mmdet_ckpt)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="output .ckpt (default for a backbone: the input path with .ckpt)")
    args = p.parse_args(argv)
    for flag, given in (("--torch_ckpt", args.torch_ckpt), ("--mmdet_ckpt", args.mmdet_ckpt)):
        if given and not (args.config and args.out):
            p.error(f"{flag} needs --config and --out")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
    from src.config import ConfigError, load_config
    from src.convert import ConversionError, convert_backbone, convert_m2det, convert_mmdet

    try:
        if args.backbone_path:
            report, out = convert_backbone(args.backbone_path, args.backbone, args.out)
        else:
            out = args.out
            whole_model = convert_m2det if args.torch_ckpt else convert_mmdet
            report = whole_model(args.torch_ckpt or args.mmdet_ckpt, load_config(args.config, args.overrides), out)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except ConversionError as exc:
        print(f"conversion failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
