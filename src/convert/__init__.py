"""PyTorch -> MindSpore weight conversion (convert.py).

    torch_io.py   read a .pth safely (weights_only) into {name: numpy array}
    names.py      the reference name maps: M2Det PyTorch release, SSD's vgg16_reducedfc.pth,
                  torchvision ResNet -> this project's parameter names
    mmdet_names.py  mmdetection v2 ResNet-FPN one-stage detectors (RetinaNet, ATSS/UMOP, GFL, VFNet)
    converter.py  apply a map against a network's parameters, report, refuse mismatches, save
"""
from src.convert.converter import (ConversionReport, convert_backbone, convert_m2det, convert_mmdet,
                                   convert_state_dict)
from src.convert.torch_io import ConversionError, load_torch_state_dict

__all__ = ["ConversionError", "ConversionReport", "convert_backbone", "convert_m2det", "convert_mmdet",
           "convert_state_dict", "load_torch_state_dict"]
