"""Target assigners (NumPy, run in the data pipeline): SSD / RetinaNet max-IoU and ATSS."""
from heads.assigners.atss import ATSSAssigner, ATSSAssignResult
from heads.assigners.max_iou import AssignResult, MaxIoUAssigner

__all__ = ["ATSSAssignResult", "ATSSAssigner", "AssignResult", "MaxIoUAssigner"]
