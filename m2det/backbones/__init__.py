"""Backbones: each reports `output_levels` [(channels, stride), ...] and `output_sizes(input_size)`."""
from m2det.backbones.resnet import ResNet
from m2det.backbones.vgg import VGG16Reduced

__all__ = ["ResNet", "VGG16Reduced"]
