"""Benchmark: the scoring server (serve.py) under 1, 8 and 100 concurrent clients on 127.0.0.1.

By default it writes a randomly initialised checkpoint of the lite config (the weights do not
matter for serving speed; random weights give few boxes above the threshold), starts
`serve.py` on a free loopback port in a subprocess, waits for /health to report ready (after
the warm-up), and runs one load level per concurrency. Each client opens a new connection per
request and POSTs one 320x240 JPEG in the seed schema; a level stops after its request count
or its time budget. With --url it measures a server that is already running (loopback only).

Per level: answers by kind (200, 503, other statuses, transport errors such as resets),
throughput (200 answers per second of wall time) and p50/p99 latency of the 200 answers.

    python bench/bench_serve.py [--short] [--config configs/m2det_lite.yaml] [--json out.json]
    python bench/bench_serve.py --url http://127.0.0.1:8080     # a server started by hand
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# (concurrency, requests) per level; bounded in count and by --level_seconds
FULL_LEVELS = ((1, 60), (8, 200), (100, 500))
SHORT_LEVELS = ((1, 5), (8, 16), (100, 100))
MAX_RETRY_WAIT_S = 5.0


def request_body(seed: int = 0) -> bytes:
    """One synthetic 320x240 JPEG (a few filled shapes) in the seed schema."""
    import cv2

    rng = np.random.default_rng(seed)
    image = np.full((240, 320, 3), 90, np.uint8)
    for _ in range(4):
        x, y = int(rng.integers(20, 300)), int(rng.integers(20, 220))
        color = [int(v) for v in rng.integers(0, 255, 3)]
        cv2.circle(image, (x, y), int(rng.integers(10, 40)), color, -1)
    data = base64.b64encode(cv2.imencode(".jpg", image)[1].tobytes()).decode()
    return json.dumps({"input_data": {"columns": ["image"], "index": [0], "data": [data]}}).encode()


def post(host: str, port: int, body: bytes, timeout_s: float) -> tuple[str, float, float]:
    """(outcome, seconds, retry_after): outcome is the HTTP status as text or the transport error's
    name; retry_after is the Retry-After header in seconds (0 without one)."""
    start = time.perf_counter()
    retry_after = 0.0
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("POST", "/score", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        outcome = str(response.status)
        try:
            retry_after = float(response.getheader("Retry-After") or 0)
        except ValueError:
            pass
    except (OSError, http.client.HTTPException) as exc:
        outcome = type(exc).__name__
    finally:
        conn.close()
    return outcome, time.perf_counter() - start, retry_after


def run_level(host: str, port: int, body: bytes, concurrency: int, requests: int, level_seconds: float) -> dict:
    """`concurrency` client threads share `requests` requests; none starts after `level_seconds`."""
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    remaining = [requests]
    barrier = threading.Barrier(concurrency)
    stop_at = [0.0]

    def client():
        barrier.wait()
        while True:
            with lock:
                if remaining[0] <= 0 or time.monotonic() > stop_at[0]:
                    return
                remaining[0] -= 1
            outcome, seconds, retry_after = post(host, port, body, timeout_s=60.0)
            with lock:
                results.append((outcome, seconds))
            # a well-behaved client waits as told before its next request (capped to keep levels short)
            time.sleep(min(retry_after, MAX_RETRY_WAIT_S))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    stop_at[0] = time.monotonic() + level_seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(level_seconds + 120)
    wall = time.perf_counter() - started
    ok = sorted(seconds for outcome, seconds in results if outcome == "200")
    counts: dict[str, int] = {}
    for outcome, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    return {
        "concurrency": concurrency, "requests": len(results), "wall_s": round(wall, 3), "answers": counts,
        "ok": len(ok), "rejected_503": counts.get("503", 0),
        "transport_errors": sum(n for k, n in counts.items() if not k.isdigit()),
        "throughput_rps": round(len(ok) / wall, 2) if wall > 0 else 0.0,
        "p50_ms": round(1000 * float(np.percentile(ok, 50)), 1) if ok else None,
        "p99_ms": round(1000 * float(np.percentile(ok, 99)), 1) if ok else None,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_health(host: str, port: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def wait_ready(host: str, port: int, timeout_s: float, process=None) -> dict:
    stop_at = time.monotonic() + timeout_s
    while time.monotonic() < stop_at:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"serve.py exited with code {process.returncode} before it was ready")
        try:
            status, health = get_health(host, port)
            if status == 200:
                return health
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server on {host}:{port} was not ready within {timeout_s:.0f} s")


def write_random_checkpoint(config: str, path: str) -> None:
    import mindspore as ms

    from src.builder import build_detector
    from src.config import load_config
    from src.training.checkpoint import save_checkpoint

    ms.set_seed(0)
    save_checkpoint(path, build_detector(load_config(config)))


def random_checkpoint(config: str, directory: str) -> str:
    """A random-weight checkpoint of `config`, written by a child process: MindSpore's runtime
    threads would otherwise stay in this client process and compete with the server for CPU."""
    path = os.path.join(directory, "random_weights.ckpt")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--write_checkpoint", path, "--config", config],
                   cwd=ROOT, env=dict(os.environ, GLOG_v="3"), check=True, timeout=600)
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "m2det_lite.yaml"))
    p.add_argument("--url", help="measure this already running server (loopback addresses only)")
    p.add_argument("--short", action="store_true", help="smoke mode: a few requests per level")
    p.add_argument("--levels", help="clients:requests,... instead of the defaults, e.g. 1:30,8:80,100:300")
    p.add_argument("--level_seconds", type=float, default=120.0, help="no request starts later in a level")
    p.add_argument("--ready_timeout", type=float, default=600.0)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--write_checkpoint", help=argparse.SUPPRESS)
    p.add_argument("serve_args", nargs="*", help="extra serve.py flags after --, e.g. -- --max_pending 16")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_checkpoint:
        write_random_checkpoint(args.config, args.write_checkpoint)
        return 0
    levels = SHORT_LEVELS if args.short else FULL_LEVELS
    if args.levels:
        try:
            levels = [tuple(int(v) for v in level.split(":")) for level in args.levels.split(",")]
            if any(len(level) != 2 or min(level) < 1 for level in levels):
                raise ValueError(args.levels)
        except ValueError:
            print(f"--levels must look like 1:30,8:80 (clients:requests, both >= 1), got {args.levels!r}",
                  file=sys.stderr)
            return 2
    body = request_body()
    process, tmp = None, None
    if args.url:
        parts = urlsplit(args.url)
        if parts.hostname not in LOOPBACK:
            print(f"--url must be a loopback address ({', '.join(LOOPBACK)}), got {parts.hostname}", file=sys.stderr)
            return 2
        host, port = parts.hostname, parts.port or 80
        health = wait_ready(host, port, args.ready_timeout)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_serve_")
        checkpoint = random_checkpoint(args.config, tmp.name)
        host, port = "127.0.0.1", free_port()
        command = [sys.executable, os.path.join(ROOT, "serve.py"), "--config", args.config, "--checkpoint",
                   checkpoint, "--host", host, "--port", str(port), "--no_access_log", *args.serve_args]
        log_path = os.path.join(tmp.name, "serve.log")
        log_file = open(log_path, "w", encoding="utf-8")
        process = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, GLOG_v="3"))
    try:
        if process is not None:
            started = time.perf_counter()
            health = wait_ready(host, port, args.ready_timeout, process)
            print(f"server ready after {time.perf_counter() - started:.1f} s (load + warm-up)")
        print(f"server: {health.get('model', '?')}, batch {health.get('batch_size', '?')}")
        # one untimed request: a server that compiles its graph on the first request (the stdlib
        # server before issue 15) is measured warm too
        print(f"untimed first request: {post(host, port, body, timeout_s=600.0)[0]}")
        rows = [run_level(host, port, body, c, n, args.level_seconds) for c, n in levels]
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            log_file.close()
            if process.returncode not in (0, -15):
                print(open(log_path, encoding="utf-8").read()[-3000:], file=sys.stderr)
        if tmp is not None:
            tmp.cleanup()
    print("| clients | requests | 200 | 503 | resets/errors | throughput (200/s) | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['rejected_503']} | {r['transport_errors']} "
              f"| {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} |")
    if args.json:
        from src.utils.io import write_json_atomic

        write_json_atomic(args.json, {"levels": rows, "short": args.short}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
