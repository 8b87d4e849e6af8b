"""Config -> model: the one place where config names are mapped to constructors.

    cfg = load_config("configs/m2det320_vgg.yaml")
    detector = build_detector(cfg)      # Detector(VGG16Reduced, MLFPN, MultiBoxHead)
    priors = build_priors(cfg)          # SSDPriors matching the detector's maps

Every build first runs `check_config`, so a config whose parts disagree fails with a
ValueError naming the disagreeing values instead of a shape error deep in a graph.
"""
from __future__ import annotations

from typing import Callable

from heads.multibox_head import MultiBoxHead
from heads.priors import SSDPriors
from m2det.backbones import ResNet, VGG16Reduced
from m2det.backbones.resnet import resnet_sizes
from m2det.detector import Detector
from m2det.necks import MLFPN

# M2Det reads the shallow feature at stride 8 and the deep one at stride 16 (SPEC 1.1, 1.2)
M2DET_RESNET_STRIDES = (1, 2, 1, 2)
M2DET_RESNET_OUT_LAYERS = (2, 4)

BACKBONES: dict[str, Callable] = {
    "vgg16": lambda width: VGG16Reduced(width=width),
    "resnet50": lambda width: ResNet(50, M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS, width),
    "resnet101": lambda width: ResNet(101, M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS, width),
}
NECKS = ("mlfpn",)
HEADS = ("multibox",)


def _backbone_sizes(name: str, input_size: int) -> list[tuple[int, int]]:
    if name == "vgg16":
        return VGG16Reduced.output_sizes(input_size)
    return resnet_sizes(input_size, M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS)


def _check_name(kind: str, name: str, supported) -> None:
    if name not in supported:
        raise ValueError(f"unsupported {kind} '{name}' (supported: {', '.join(sorted(supported))})")


def _raw_feature_map_sizes(cfg) -> list[int]:
    model = cfg.model
    _check_name("backbone", model.backbone.name, BACKBONES)
    _check_name("neck", model.neck.name, NECKS)
    sizes = MLFPN.scale_sizes(_backbone_sizes(model.backbone.name, model.input_size)[0], model.neck.num_scales)
    return [h for h, _ in sizes]


def check_config(cfg) -> None:
    """Raise ValueError if the model and prior sections of `cfg` do not fit together."""
    model, priors = cfg.model, cfg.priors
    _check_name("backbone", model.backbone.name, BACKBONES)
    _check_name("neck", model.neck.name, NECKS)
    _check_name("head", model.head.name, HEADS)
    if model.num_classes < 2:
        raise ValueError(f"model.num_classes must be >= 2 (background + at least one class), "
                         f"got {model.num_classes}")
    n = model.neck.num_scales
    if n < 2:
        raise ValueError(f"model.neck.num_scales must be >= 2, got {n}")
    problems = []
    if len(priors.steps) != n:
        problems.append(f"priors.steps has {len(priors.steps)} values {list(priors.steps)}")
    if len(priors.aspect_ratios) != n:
        problems.append(f"priors.aspect_ratios has {len(priors.aspect_ratios)} entries")
    if len(priors.size_pattern) != n + 1:
        problems.append(f"priors.size_pattern has {len(priors.size_pattern)} values "
                        f"{list(priors.size_pattern)} (needs num_scales + 1 = {n + 1})")
    if problems:
        raise ValueError(f"prior config does not match model.neck.num_scales = {n}: " + "; ".join(problems))

    size = model.input_size
    maps = _raw_feature_map_sizes(cfg)
    if min(maps) < 1:
        bad = [f"scale {k + 1} is {m}x{m}" for k, m in enumerate(maps) if m < 1]
        raise ValueError(f"model.input_size {size} is too small for {n} scales: the feature maps would be "
                         f"{maps} ({', '.join(bad)}); use a larger input_size or fewer num_scales")
    expected = [round(size / s) for s in priors.steps]
    if expected != maps:
        raise ValueError(f"priors.steps {list(priors.steps)} do not fit model.input_size {size}: "
                         f"round(input_size / step) = {expected} but the network's feature maps are {maps}")


def feature_map_sizes(cfg) -> list[int]:
    """Side of every (square) head input map, largest first, by shape arithmetic (nothing is built)."""
    check_config(cfg)
    return _raw_feature_map_sizes(cfg)


def build_priors(cfg) -> SSDPriors:
    """SSD priors on the detector's feature maps (SPEC 1.7)."""
    return SSDPriors(input_size=cfg.model.input_size, feature_maps=feature_map_sizes(cfg),
                     steps=list(cfg.priors.steps), size_pattern=list(cfg.priors.size_pattern),
                     aspect_ratios=[list(r) for r in cfg.priors.aspect_ratios], clip=cfg.priors.clip)


def build_backbone(cfg):
    check_config(cfg)
    return BACKBONES[cfg.model.backbone.name](cfg.model.backbone.width)


def build_neck(cfg, in_levels) -> MLFPN:
    neck = cfg.model.neck
    return MLFPN(in_levels, base_channels=list(neck.base_channels), planes=neck.planes,
                 num_levels=neck.num_levels, num_scales=neck.num_scales, shared_ffm2=neck.shared_leach,
                 sfam=neck.sfam, sfam_reduction=neck.sfam_reduction)


def build_detector(cfg) -> Detector:
    """Backbone, MLFPN neck and multibox head as configured in `cfg.model` (and `cfg.priors`)."""
    priors = build_priors(cfg)   # validates the config
    backbone = build_backbone(cfg)
    neck = build_neck(cfg, backbone.output_levels)
    head = MultiBoxHead(neck.output_levels, priors.num_anchors(), cfg.model.num_classes,
                        neg_pos_ratio=cfg.train.neg_pos_ratio,
                        empty_image_negatives=cfg.train.empty_image_negatives)
    return Detector(backbone, neck, head)
