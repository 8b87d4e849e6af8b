"""Export a trained detector to MINDIR / ONNX (export.py).

    fold_bn.py      BatchNorm folded into the preceding convolution (exact in inference mode)
    onnx_compat.py  rewrites of ops MindSpore 2.8 cannot convert to ONNX, into exact equivalents
    exporter.py     the export network (fold, rewrite, optional in-graph decoding), checks, files
"""
from src.export.exporter import ExportError, build_export_network, export_detector
from src.export.fold_bn import fold_batchnorm

__all__ = ["ExportError", "build_export_network", "export_detector", "fold_batchnorm"]
