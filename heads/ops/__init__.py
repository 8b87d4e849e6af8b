"""Custom operators wrapped as cells."""
from heads.ops.deform_conv import DeformConv2d, ModulatedDeformConv2dWithOffsets, mmcv_to_mindspore_offsets

__all__ = ["DeformConv2d", "ModulatedDeformConv2dWithOffsets", "mmcv_to_mindspore_offsets"]
