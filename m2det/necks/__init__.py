"""Necks: built from a backbone's `output_levels`, reporting their own."""
from m2det.necks.ffm import FFMv1, FFMv2
from m2det.necks.fpn import FPN
from m2det.necks.mlfpn import MLFPN
from m2det.necks.sfam import SFAM
from m2det.necks.tum import TUM

__all__ = ["FFMv1", "FFMv2", "FPN", "MLFPN", "SFAM", "TUM"]
