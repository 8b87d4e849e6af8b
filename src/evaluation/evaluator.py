"""Run a detector over an evaluation split and score it with COCO AP.

    metrics = evaluate(detector, eval_data_settings(cfg, "val"), build_postprocessor(cfg, priors))

    network outputs -> Postprocessor (src.builder.build_postprocessor): output decoder (SSD offsets
    + softmax, or a dense head's in-graph boxes + sigmoids) -> scale to the original image ->
    postprocess.detect (per-class threshold + (soft-)NMS + top-k) -> COCO results -> COCOeval

Network time (forward, including the device->host copy) and post-processing time (decode,
NMS, conversion) are measured separately, per image, Detectron-style.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Iterator

import mindspore as ms
import numpy as np

from src.data.pipeline import NOT_READ, create_test_dataset
from src.data.settings import EvalDataSettings
from src.evaluation.coco_eval import detections_to_coco, evaluate_coco, format_per_class_table
from src.postprocess import Detections, Postprocessor
from src.utils.io import write_json_atomic
from src.visualize import draw_detections

log = logging.getLogger("m2det.eval")


def iterate_detections(detector, dataset, postprocessor: Postprocessor, timings: dict,
                       not_read: list | None = None) -> Iterator[tuple[int, int, int, Detections]]:
    """Yield (image_id, height, width, detections in original pixels) for every image read.

    postprocessor: one image's network outputs -> its detections (src.builder.build_postprocessor).
    Batches are padded to the dataset's batch size so GRAPH mode compiles one shape only. Images
    the pipeline could not read (size NOT_READ) yield nothing: their ids are appended to `not_read`.
    """
    batch_size = dataset.data_info.batch_size
    for images, image_ids, sizes in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        n = images.shape[0]
        if n < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
        start = time.perf_counter()
        outputs = [o.asnumpy()[:n] for o in detector(ms.Tensor(images))]
        timings["network_s"] += time.perf_counter() - start
        start = time.perf_counter()
        for i in range(n):
            height, width = (int(v) for v in sizes[i])
            if (height, width) == NOT_READ:
                if not_read is not None:
                    not_read.append(int(image_ids[i]))
                continue
            dets = postprocessor([o[i] for o in outputs], height, width)
            timings["postprocess_s"] += time.perf_counter() - start
            yield int(image_ids[i]), height, width, dets
            start = time.perf_counter()
        timings["images"] += n - int(np.count_nonzero(np.all(sizes[:n] == 0, axis=1)))


def evaluate(detector, data: EvalDataSettings, postprocessor: Postprocessor, *, out_dir: str | None = None,
             batch_size: int = 1, draw: int = 0) -> dict:
    """COCO metrics of `detector` (already in inference mode with weights loaded) on the split of
    `data` (src.builder.eval_data_settings); `postprocessor` turns one image's outputs into its
    detections (src.builder.build_postprocessor). out_dir: the results JSON, metrics.json and
    `draw` pictures."""
    detector.set_train(False)
    split = data.reader.split
    dataset = create_test_dataset(data, batch_size=batch_size)
    info = dataset.data_info
    timings = {"network_s": 0.0, "postprocess_s": 0.0, "images": 0}
    results, drawn, evaluated, not_read = [], [], [], []
    for image_id, _, _, dets in iterate_detections(detector, dataset, postprocessor, timings, not_read):
        evaluated.append(image_id)
        results += detections_to_coco(image_id, dets.boxes, dets.scores, dets.labels, info.label_to_cat_id,
                                      pixel_offset=postprocessor.settings.pixel_offset)
        if len(drawn) < draw:
            drawn.append((image_id, dets))
    if not_read:
        # the pipeline's flags can be process-local (spawned workers): the ids are the record
        log.warning("evaluation: %d of %d images could not be read and are left out of the scores "
                    "(their objects count neither as found nor as missed): %s", len(not_read),
                    len(not_read) + len(evaluated), info.skip_summary() or f"image ids {sorted(not_read)[:10]}")
    if not evaluated:
        raise ValueError(f"no image of the {split} split in {info.reader.image_dir} could be read: "
                         f"{info.skip_summary()}")
    # only the images read are scored: an unread image has no detections, not bad ones
    metrics = evaluate_coco(info.reader.coco, results, out_dir=out_dir,
                            img_ids=evaluated if not_read else None)
    images = max(timings["images"], 1)
    metrics["network_ms_per_image"] = 1000 * timings["network_s"] / images
    metrics["postprocess_ms_per_image"] = 1000 * timings["postprocess_s"] / images
    metrics["num_images"] = timings["images"]
    metrics["skipped_images"] = len(not_read)
    metrics["skipped_image_ids"] = sorted(not_read)
    if info.reader.orientation_summary():
        log.warning(info.reader.orientation_summary())
    if out_dir is not None:
        write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics, indent=2)
        if drawn:
            _draw(info.reader, drawn, info.cat_names, os.path.join(out_dir, "pictures"))
    return metrics


def _draw(reader, drawn, names, folder: str) -> None:
    import cv2

    os.makedirs(folder, exist_ok=True)
    index_of = {image_id: k for k, image_id in enumerate(reader.image_ids)}
    for image_id, dets in drawn:
        image = reader.load_image(index_of[image_id])
        if image is None:
            continue
        picture = draw_detections(image, dets.boxes, dets.scores, dets.labels, names)
        cv2.imwrite(os.path.join(folder, f"{image_id}.jpg"), picture)


def format_report(metrics: dict) -> str:
    """The 12 COCO numbers, the per-class table and the time split, as printable text."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    lines = ["  ".join(f"{k} {metrics[k]:.4f}" for k in keys[:6]),
             "  ".join(f"{k} {metrics[k]:.4f}" for k in keys[6:])]
    if metrics.get("per_class_AP"):
        lines.append(format_per_class_table(metrics["per_class_AP"]))
    lines.append(f"time per image: network {metrics['network_ms_per_image']:.1f} ms + "
                 f"post-processing {metrics['postprocess_ms_per_image']:.1f} ms "
                 f"({metrics['num_images']} images)")
    if metrics.get("skipped_images"):
        lines.append(f"{metrics['skipped_images']} unreadable image(s) left out of the scores: "
                     f"ids {metrics['skipped_image_ids'][:10]}")
    return "\n".join(lines)
