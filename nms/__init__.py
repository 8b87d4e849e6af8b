"""Non-maximum suppression for one class's detections (CPU, Cython).

    soft_nms(dets, method='linear', iou_threshold=0.3, sigma=0.5, score_threshold=0.001,
             pixel_offset=True)                 -> kept rows, re-scored, selection order
    nms(dets, iou_threshold=0.45, pixel_offset=False) -> kept rows, selection order
    soft_nms_classic(...)                       -> the reference loop (benchmark baseline)

``dets`` is (N, 5) ``[x1, y1, x2, y2, score]``. The kernels are a compiled extension:
build it with ``bash scripts/make.sh``.
"""
try:
    from nms import _soft_nms  # noqa: F401  (compiled from nms/soft_nms.pyx)
except ImportError as err:  # pragma: no cover - depends on the build state
    raise ImportError(
        "the NMS extension nms._soft_nms is not built (or was built for another Python); "
        "run `bash scripts/make.sh` in the repository root"
    ) from err

from nms.api import nms, soft_nms, soft_nms_classic

__all__ = ["soft_nms", "nms", "soft_nms_classic"]
