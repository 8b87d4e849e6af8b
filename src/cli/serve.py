"""Serve a detector over HTTP: POST /score with base64 images, GET /health.

    python serve.py --mindir m2det512.mindir [--host 127.0.0.1 --port 8080]
    python serve.py --checkpoint K.ckpt [--config configs/m2det_lite.yaml --names classes.txt]

The config and the class names come from the model file (checkpoint or export sidecar) unless
--config / --names / --ann say otherwise.

    curl -s -X POST http://127.0.0.1:8080/score -H 'Content-Type: application/json' \
        -d "{\"input_data\": {\"columns\": [\"image\"], \"index\": [0], \"data\": [\"$(base64 -w0 cat.jpg)\"]}}"

The answer is a list with one {"boxes": [{"box": {"topX", "topY", "bottomX", "bottomY"}, "label",
"score"}]} per image, coordinates as fractions of the image size. It binds to localhost unless
--host says otherwise; request size, images per request and decoded pixels are limited; bad
input gets a 400 with a JSON message; a whole request has one deadline (--request_timeout) and
overload is answered with 503 and Retry-After. A Starlette application on uvicorn
(src/inference/server.py); --workers N runs N processes, each with its own copy of the model.
Put a reverse proxy with TLS in front of it before exposing it beyond the machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from src.utils.cli_args import add_model_arguments

# argv of the parent, for the worker processes of --workers N (each builds its own model)
WORKER_ARGV = "M2DET_SERVE_ARGV"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
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
    p.add_argument("--max_pending", type=int, default=8,
                   help="requests queued for or being scored (per worker) before 503")
    p.add_argument("--max_receiving", type=int, default=32,
                   help="request bodies being received at once (per worker) before 503")
    p.add_argument("--request_timeout", type=float, default=30.0,
                   help="seconds a whole request may take to send its body and reach the model (else 408/503)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port, each with its own copy of the model")
    p.add_argument("--keep_alive", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--graceful_timeout", type=int, default=30,
                   help="on SIGTERM/SIGINT, seconds to finish the requests in progress")
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (connections waiting to be accepted)")
    p.add_argument("--no_access_log", action="store_true", help="do not log one line per request")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"])
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def check_args(args) -> str | None:
    """The first unusable numeric flag, as a message."""
    positive = ("max_request_mb", "max_images", "max_pixels", "max_pending", "max_receiving", "request_timeout",
                "workers", "batch_size", "keep_alive", "backlog")
    for name in positive:
        if getattr(args, name) <= 0:
            return f"--{name} must be > 0, got {getattr(args, name)}"
    if args.graceful_timeout < 0:
        return f"--graceful_timeout must be >= 0, got {args.graceful_timeout}"
    return None


def build_service(args):
    """The loaded model as a ScoringService, or an exit code after printing why not."""
    from src.cli.loading import CliFailure, model_from_args, predictor_from_args
    from src.inference.scoring import Limits, ScoringService

    try:
        cfg, names = model_from_args(args, "cannot serve")
        predictor = predictor_from_args(cfg, args, "cannot serve")
    except CliFailure as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    limits = Limits(max_body_bytes=int(args.max_request_mb * 1024 * 1024), max_images=args.max_images,
                    max_pixels=args.max_pixels, max_pending=args.max_pending, max_receiving=args.max_receiving,
                    timeout_s=args.request_timeout)
    return ScoringService(predictor, names, args.score_threshold, limits)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)


def worker_app():
    """uvicorn's application factory in each worker process of --workers N."""
    from src.inference.server import create_app

    setup_logging()
    service = build_service(parse_args(json.loads(os.environ[WORKER_ARGV])))
    if isinstance(service, int):
        raise SystemExit(service)
    return create_app(service)


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    setup_logging()
    # loaded here even with --workers N: a model that does not load is refused before any worker starts
    service = build_service(args)
    if isinstance(service, int):
        return service
    import uvicorn

    from src.inference.server import create_app, uvicorn_options

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.warning("binding to %s: the endpoint has no authentication", args.host)
    options = uvicorn_options(args.host, args.port, workers=args.workers, access_log=not args.no_access_log,
                              keep_alive_s=args.keep_alive, graceful_shutdown_s=args.graceful_timeout,
                              backlog=args.backlog)
    logging.info("serving %s on http://%s:%d (POST /score, GET /health) with %d worker(s)",
                 service.model, args.host, args.port, args.workers)
    if args.workers == 1:
        uvicorn.Server(uvicorn.Config(create_app(service), **options)).run()
    else:
        del service
        os.environ[WORKER_ARGV] = json.dumps(sys.argv[1:] if argv is None else list(argv))
        uvicorn.run("src.cli.serve:worker_app", factory=True, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
