"""Data path: read (coco, synthetic) -> augment (transforms) -> targets -> batches (pipeline).

Heavy modules (mindspore.dataset, pycocotools) are imported by the submodules that
need them, so `import src.data.transforms` stays light for inference code.
"""
