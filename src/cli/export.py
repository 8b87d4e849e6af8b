"""Export a trained detector to MINDIR or ONNX.

    python export.py --config configs/m2det512_vgg.yaml --checkpoint K.ckpt --file_format MINDIR \
        --out m2det512.mindir [--batch_size 1] [--with_decode]
    bash scripts/run_export.sh K.ckpt [CONFIG] [MINDIR|ONNX]

The graph takes the network's own input: float32 (N, 3, S, S), BGR 0-255 minus data.mean, S the
config's input_size. Outputs: loc (N, P, 4) and softmax scores (N, P, C), as the reference; with
--with_decode, boxes (N, P, 4) as corners (x1, y1, x2, y2) normalised to [0, 1] plus the scores,
so a deployment needs no prior boxes. BatchNorm is folded into the convolutions before export;
the prepared network and the written file are both run on a random input and compared with the
network (relative difference: a warning above 1e-4, an error above 1e-3; --no_verify skips it).
A JSON description of the inputs and outputs is written next to the file (F.json).

A MINDIR for CPU (--device_target CPU, the default) also gets what eval.py / infer.py run: with
test.winograd (on by default) the wide 3x3 convolutions are Winograd F(2x2, 3x3) cells whose
transforms are custom operators in m2det/kernels/_winograd_f23.so. The graph names that library
by its absolute path, so the file runs where this package is installed at that path (F.json:
custom_op_library; serve.py / infer.py check it). `--set test.winograd=false` writes direct
convolutions instead: a self-contained file, slower on CPU. ONNX always has direct convolutions.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="default: the config stored in the checkpoint")
    p.add_argument("--checkpoint", "--ckpt_file", dest="checkpoint", required=True)
    p.add_argument("--file_format", default="MINDIR", type=str.upper, choices=["MINDIR", "ONNX"])
    p.add_argument("--out", "--file_name", dest="out", required=True, help="output file (suffix added if missing)")
    p.add_argument("--batch_size", type=int, default=1, help="fixed batch dimension of the exported graph")
    p.add_argument("--with_decode", action="store_true", help="output decoded [0, 1] boxes instead of offsets")
    p.add_argument("--no_verify", dest="verify", action="store_false",
                   help="skip comparing the prepared network and the written file with the network")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
    from src.cli.loading import CliFailure, open_checkpoint
    from src.training.checkpoint import CheckpointError, load_detector_weights

    try:
        cfg, info, params = open_checkpoint(args.checkpoint, args.config, args.overrides, args.device_target,
                                            "export failed")
    except CliFailure as exc:
        print(exc.message, file=sys.stderr)
        return exc.code

    import mindspore as ms

    from src.builder import build_detector
    from src.export import ExportError, export_detector

    ms.set_context(device_target=args.device_target)
    detector = build_detector(cfg)
    try:
        load_detector_weights(detector, params, args.checkpoint)
        meta = export_detector(detector, cfg, args.out, args.file_format, args.batch_size, args.with_decode,
                               verify=args.verify, config_path=args.config or "", classes=info.classes)
    except (CheckpointError, ExportError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in meta.items() if k != "resolved_config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
