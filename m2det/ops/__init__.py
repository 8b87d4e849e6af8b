"""Custom operators wrapped as cells."""
from m2det.ops.deform_conv import DeformConv2d, ModulatedDeformConv2dWithOffsets, mmcv_to_mindspore_offsets

__all__ = ["DeformConv2d", "ModulatedDeformConv2dWithOffsets", "mmcv_to_mindspore_offsets"]
