"""Serve a detector over HTTP: POST /score with base64 images, GET /health.

    python serve.py --mindir m2det512.mindir --config configs/m2det512_vgg.yaml [--host 127.0.0.1 --port 8080]
    python serve.py --checkpoint K.ckpt --config configs/m2det_lite.yaml --names classes.txt

    curl -s -X POST http://127.0.0.1:8080/score -H 'Content-Type: application/json' \
        -d "{\"input_data\": {\"columns\": [\"image\"], \"index\": [0], \"data\": [\"$(base64 -w0 cat.jpg)\"]}}"

The answer is a list with one {"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label",
"score"}]} per image, coordinates as fractions of the image size. It binds to localhost unless
--host says otherwise; request size, images per request and decoded pixels are limited; bad
input gets a 400 with a JSON message. Stdlib http.server (ThreadingHTTPServer): put a reverse
proxy with TLS in front of it before exposing it beyond the machine.
"""
from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--mindir", help="MINDIR written by export.py")
    model.add_argument("--checkpoint", help="MindSpore checkpoint of the config's network")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--batch_size", type=int, default=1, help="with --checkpoint (a MINDIR has its own)")
    p.add_argument("--score_threshold", type=float, default=0.3)
    names = p.add_mutually_exclusive_group()
    names.add_argument("--names", help="class names: text file (one per line) or JSON list")
    names.add_argument("--ann", help="COCO annotation file whose categories name the classes")
    p.add_argument("--max_request_mb", type=float, default=32.0)
    p.add_argument("--max_images", type=int, default=16, help="images per request")
    p.add_argument("--max_pixels", type=int, default=40_000_000, help="per decoded image")
    p.add_argument("--max_pending", type=int, default=8, help="requests in progress before 503")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from src.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from src.inference import Predictor, PredictorError
    from src.inference.names import NamesError, load_class_names
    from src.inference.server import Limits, make_server
    from src.training.checkpoint import CheckpointError
    from src.training.trainer import set_context

    try:
        names = load_class_names(cfg.model.num_classes, args.names, args.ann)
    except NamesError as exc:
        print(f"class names: {exc}", file=sys.stderr)
        return 2
    set_context(args.device_target, args.mode)
    try:
        predictor = (Predictor.from_checkpoint(cfg, args.checkpoint, args.batch_size) if args.checkpoint
                     else Predictor.from_mindir(cfg, args.mindir))
    except (CheckpointError, PredictorError) as exc:
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 1
    limits = Limits(max_body_bytes=int(args.max_request_mb * 1024 * 1024), max_images=args.max_images,
                    max_pixels=args.max_pixels, max_pending=args.max_pending)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.warning("binding to %s: the endpoint has no authentication", args.host)
    server = make_server(predictor, names, args.host, args.port, args.score_threshold, limits)
    logging.info("serving %s on %s (POST /score, GET /health)", predictor.description, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
