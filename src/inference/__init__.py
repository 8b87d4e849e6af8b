"""Inference on image files (infer.py) and over HTTP (serve.py).

    images.py     image paths (file, folder, glob) and decoding uploaded bytes under limits
    names.py      class names for the output (names file, COCO annotations, or class_N)
    predictor.py  Predictor: images -> detections, from a checkpoint or an exported MINDIR
    results.py    detections -> the JSON entry of one image (normalised corner boxes)
    scoring.py    limits, parsing the /score body, running the predictor, readiness (warm-up)
    server.py     the HTTP scoring endpoint (Starlette on uvicorn: POST /score, GET /health)
    http_deadline.py  uvicorn HTTP protocol with the request deadline on the headers
    model_files.py  a checkpoint / MINDIR -> the config and class names it carries, and its Predictor
    api.py        load_detector(path)(images): the one-line Python API
"""
from src.inference.api import DetectionResult, LoadedDetector, load_detector
from src.inference.names import load_class_names
from src.inference.predictor import Predictor, PredictorError
from src.inference.results import detections_to_entry

__all__ = ["DetectionResult", "LoadedDetector", "load_detector", "Predictor", "PredictorError", "detections_to_entry", "load_class_names"]
