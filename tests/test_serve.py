"""serve.py's endpoint over real HTTP on 127.0.0.1: scoring, concurrent requests, bad input
answered with 400/413 JSON messages while the server keeps serving."""
import base64
import http.client
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import mindspore as ms
import numpy as np
import pytest

import serve
from src.builder import build_detector
from src.config import load_config
from src.inference import Predictor, detections_to_entry
from src.inference.server import Limits, make_server
from src.training.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
NAMES = ["circle", "square", "triangle", "star", "cross"]
LIMITS = Limits(max_body_bytes=300_000, max_images=3, max_pixels=200 * 200, max_pending=8, timeout_s=10)


@pytest.fixture(autouse=True, scope="module")
def _pynative():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ms.set_seed(4)
    detector = build_detector(load_config(TINY))
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"), detector)


@pytest.fixture(scope="module")
def server(checkpoint):
    predictor = Predictor.from_checkpoint(load_config(TINY), checkpoint, batch_size=2)
    srv = make_server(predictor, NAMES, "127.0.0.1", 0, score_threshold=0.05, limits=LIMITS)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(10)


def request(srv, method, path, body=None, headers=None):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def score(srv, data, **extra):
    payload = {"input_data": {"columns": ["image"], "index": list(range(len(data))), "data": data, **extra}}
    return request(srv, "POST", "/score", json.dumps(payload), {"Content-Type": "application/json"})


def encoded(h, w, seed, ext=".png"):
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 80, np.uint8)
    cv2.circle(image, (w // 2, h // 2), min(h, w) // 3, [int(v) for v in rng.integers(0, 255, 3)], -1)
    return image, base64.b64encode(cv2.imencode(ext, image)[1].tobytes()).decode()


def test_health(server):
    status, body = request(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["classes"] == 5


def test_score_returns_one_entry_per_image(server):
    (a, a64), (b, b64) = encoded(90, 120, 0), encoded(150, 100, 1, ".jpg")
    status, body = score(server, [a64, b64])
    assert status == 200 and len(body) == 2
    decoded_b = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    expected = [detections_to_entry(d, im.shape[1], im.shape[0], NAMES)
                for d, im in zip(server.predictor.predict([a, decoded_b], 0.05), (a, decoded_b))]
    assert body == json.loads(json.dumps(expected))
    assert body[0]["boxes"] and body[0]["boxes"][0]["label"] in NAMES
    # pandas "split" rows and data URLs are accepted too
    status, again = score(server, [["data:image/png;base64," + a64]])
    assert status == 200 and again == body[:1]


def test_concurrent_requests(server):
    payloads = [[encoded(60 + 10 * k, 80, k)[1]] for k in range(3)]
    jobs = [payloads[k % 3] for k in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda data: score(server, data), jobs))
    assert all(status == 200 for status, _ in results)
    for k, (_, body) in enumerate(results):
        assert body == results[k % 3][1]


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"data": []}), 400, "input_data"),
    (json.dumps({"input_data": {"columns": ["text"], "data": ["x"]}}), 400, 'containing "image"'),
    (json.dumps({"input_data": {"data": ["@@not base64@@"]}}), 400, "data[0] is not valid base64"),
    (json.dumps({"input_data": {"data": [base64.b64encode(b"hello, not an image").decode()]}}), 400,
     "data[0]: not a decodable image"),
    (json.dumps({"input_data": {"data": [1234]}}), 400, "data[0] must be a base64 string"),
    (json.dumps({"input_data": {"data": ["a"] * 4}}), 413, "limit is 3"),
    (json.dumps({"input_data": {"data": [encoded(250, 250, 0)[1]]}}), 413, "250x250 pixels exceeds the limit"),
    (b"x" * 400_000, 413, "exceeds the limit of 300000"),
])
def test_bad_requests_get_a_clear_answer_and_the_server_keeps_serving(server, body, status, message):
    got_status, got = request(server, "POST", "/score", body, {"Content-Type": "application/json"})
    assert got_status == status and message in got["error"]
    ok_status, ok = score(server, [encoded(40, 40, 9)[1]])
    assert ok_status == 200 and len(ok) == 1


def test_unknown_path(server):
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "POST", "/predict", b"{}")[0] == 404


def test_serve_cli_refuses_a_checkpoint_of_another_config(checkpoint, capsys):
    code = serve.main(["--config", os.path.join(ROOT, "tests", "configs", "lite256.yaml"), "--checkpoint", checkpoint,
                       "--port", "0", "--mode", "pynative"])
    assert code == 1 and "backbone.layers.0.weight" in capsys.readouterr().err
