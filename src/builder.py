"""Config -> model: the one place where config names are mapped to constructors.

    cfg = load_config("configs/m2det320_vgg.yaml")
    detector = build_detector(cfg)      # Detector(VGG16Reduced, MLFPN, MultiBoxHead)
    priors = build_priors(cfg)          # SSDPriors matching the detector's maps
                                        # (dense heads: the AnchorLayout the data pipeline assigns on)
    decoder = build_output_decoder(cfg, priors)   # one image's inference outputs -> boxes, scores
    postprocessor = build_postprocessor(cfg, priors)  # decoder + InputPolicy + DetectionSettings
    train_data = train_data_settings(cfg)             # what src/data/pipeline.py builds datasets from
    val_data = eval_data_settings(cfg, "val")         # (with build_test_input(cfg), a TestInput)

    model.backbone.name  vgg16 | resnet50 | resnet101 | resnext101_32x4d | resnext101_64x4d
    model.neck.name      mlfpn (M2Det) | fpn (P3-P7 on ResNet C3-C5, stride-32 layout)
    model.head.name      multibox (SSD) | retina | atss | gfl | vfnet | umop (ATSS head with the
                         progressive focal loss)

Every dense head runs on either neck: on MLFPN its anchor strides are the SSD prior steps
(`priors.steps`, which `check_config` has matched to the maps: MLFPN's last scale comes from a
"valid" conv, so its grid spacing is not twice the previous one), on FPN the neck's strides.

Every build first runs `check_config`, so a config whose parts disagree fails with a
ValueError naming the disagreeing values instead of a shape error deep in a graph.

The config is read here (and by the programs on top: the trainer, src/cli/, the model-file
loaders); the data pipeline, evaluation, post-processing, the hooks and the predictor receive
the objects built here and never see it.
"""
from __future__ import annotations

import copy
import os
from typing import Callable

from heads.anchors import AnchorGenerator
from heads.atss_head import ATSSHead
from heads.gfl_head import GFLHead
from heads.multibox_head import MultiBoxHead
from heads.priors import SSDPriors
from heads.retina_head import RetinaHead
from heads.vfnet_head import VFNetHead
from m2det.backbones import ResNet, VGG16Reduced
from m2det.backbones.resnet import resnet_sizes
from m2det.detector import Detector
from m2det.layers import conv_output_size, to_pair
from m2det.necks import MLFPN
from m2det.necks.fpn import FPN
from src.data.dense_targets import AnchorLayout
from src.data.resize import InputPolicy, TestInput
from src.data.settings import Augmentation, EvalDataSettings, ReaderSettings, TrainDataSettings
from src.postprocess import DenseOutputDecoder, DetectionSettings, Postprocessor, SSDOutputDecoder

# M2Det reads the shallow feature at stride 8 and the deep one at stride 16 (REFERENCE 1.1, 1.2)
M2DET_RESNET_STRIDES = (1, 2, 1, 2)
M2DET_RESNET_OUT_LAYERS = (2, 4)
# FPN detectors: torchvision's stride-32 layout, C3-C5 at strides 8, 16, 32
FPN_RESNET_STRIDES = (1, 2, 2, 2)
FPN_RESNET_OUT_LAYERS = (2, 3, 4)

# name -> (depth, groups, width_per_group)
RESNETS = {
    "resnet50": (50, 1, 64),
    "resnet101": (101, 1, 64),
    "resnext101_32x4d": (101, 32, 4),
    "resnext101_64x4d": (101, 64, 4),
}

BACKBONES: dict[str, Callable] = {
    "vgg16": lambda width: VGG16Reduced(width=width),
    "resnet50": lambda width: ResNet(50, M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS, width),
    "resnet101": lambda width: ResNet(101, M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS, width),
    "resnext101_32x4d": lambda width: ResNet(101, M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS, width,
                                             groups=32, width_per_group=4),
    "resnext101_64x4d": lambda width: ResNet(101, M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS, width,
                                             groups=64, width_per_group=4),
}
NECKS = ("mlfpn", "fpn")
# config name -> head class; each class states its own anchors, assigner and defaults
DENSE_HEAD_CLASSES = {"retina": RetinaHead, "atss": ATSSHead, "gfl": GFLHead, "vfnet": VFNetHead, "umop": ATSSHead}
DENSE_HEADS = tuple(DENSE_HEAD_CLASSES)
HEADS = ("multibox",) + DENSE_HEADS


def _check_name(kind: str, name: str, supported) -> None:
    if name not in supported:
        raise ValueError(f"unsupported {kind} '{name}' (supported: {', '.join(sorted(supported))})")


def is_dense(cfg) -> bool:
    """True for the sigmoid one-stage heads (everything but the SSD multibox head)."""
    return cfg.model.head.name in DENSE_HEADS


def _resnet_layout(cfg) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if cfg.model.neck.name == "fpn":
        return FPN_RESNET_STRIDES, FPN_RESNET_OUT_LAYERS
    return M2DET_RESNET_STRIDES, M2DET_RESNET_OUT_LAYERS


def _backbone_sizes(cfg, input_hw) -> list[tuple[int, int]]:
    name = cfg.model.backbone.name
    if name == "vgg16":
        return VGG16Reduced.output_sizes(input_hw)
    strides, out_layers = _resnet_layout(cfg)
    return resnet_sizes(input_hw, strides, out_layers)


def _fpn_sizes(cfg, backbone_sizes) -> list[tuple[int, int]]:
    # the arithmetic of m2det.necks.fpn.FPN.output_sizes, without building the cell
    neck = cfg.model.neck.fpn
    sizes = [tuple(s) for s in backbone_sizes[neck.start_level:]]
    while len(sizes) < neck.num_outs:
        h, w = sizes[-1]
        sizes.append((conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)))
    return sizes


def head_feature_sizes(cfg, input_hw) -> list[tuple[int, int]]:
    """(h, w) of every head input map for a network input of input_hw, by shape arithmetic."""
    backbone = _backbone_sizes(cfg, to_pair(input_hw))
    if cfg.model.neck.name == "fpn":
        return _fpn_sizes(cfg, backbone)
    return MLFPN.scale_sizes(backbone[0], cfg.model.neck.mlfpn.num_scales)


def _raw_feature_map_sizes(cfg) -> list[int]:
    model = cfg.model
    _check_name("backbone", model.backbone.name, BACKBONES)
    _check_name("neck", model.neck.name, NECKS)
    return [h for h, _ in head_feature_sizes(cfg, model.input_size)]


def _check_fpn(cfg) -> None:
    model = cfg.model
    if model.backbone.name not in RESNETS:
        raise ValueError(f"the fpn neck needs a ResNet/ResNeXt backbone (C3-C5), got '{model.backbone.name}'")
    if model.head.name == "multibox":
        raise ValueError("the multibox (SSD) head runs on the mlfpn neck only; use a dense head "
                         f"({', '.join(DENSE_HEADS)}) with the fpn neck")
    neck = model.neck.fpn
    if not 0 <= neck.start_level < len(FPN_RESNET_OUT_LAYERS) or neck.num_outs < 1:
        raise ValueError(f"model.neck.fpn.start_level {neck.start_level} / num_outs {neck.num_outs} do not fit "
                         f"the {len(FPN_RESNET_OUT_LAYERS)} backbone levels C3-C5")


def check_config(cfg) -> None:
    """Raise ValueError if the model and prior sections of `cfg` do not fit together."""
    model, priors = cfg.model, cfg.priors
    _check_name("backbone", model.backbone.name, BACKBONES)
    _check_name("neck", model.neck.name, NECKS)
    _check_name("head", model.head.name, HEADS)
    if model.num_classes < 1:
        raise ValueError(f"model.num_classes must be >= 1 (the object classes, background not counted), "
                         f"got {model.num_classes}")
    if model.neck.name == "fpn":
        _check_fpn(cfg)
        maps = _raw_feature_map_sizes(cfg)
        if min(maps) < 1:
            raise ValueError(f"model.input_size {model.input_size} is too small for the FPN levels {maps}")
        return
    n = model.neck.mlfpn.num_scales
    if n < 2:
        raise ValueError(f"model.neck.mlfpn.num_scales must be >= 2, got {n}")
    problems = []
    if len(priors.steps) != n:
        problems.append(f"priors.steps has {len(priors.steps)} values {list(priors.steps)}")
    if model.head.name == "multibox":
        if len(priors.aspect_ratios) != n:
            problems.append(f"priors.aspect_ratios has {len(priors.aspect_ratios)} entries")
        if len(priors.size_pattern) != n + 1:
            problems.append(f"priors.size_pattern has {len(priors.size_pattern)} values "
                            f"{list(priors.size_pattern)} (needs num_scales + 1 = {n + 1})")
    if problems:
        raise ValueError(f"prior config does not match model.neck.mlfpn.num_scales = {n}: " + "; ".join(problems))

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


def head_strides(cfg, neck_levels=None) -> list[int]:
    """Anchor stride of every head level: the prior steps on MLFPN, the neck's strides on FPN."""
    if cfg.model.neck.name == "mlfpn":
        return [int(round(s)) for s in cfg.priors.steps]
    fpn = cfg.model.neck.fpn
    strides = [8 * 2 ** (fpn.start_level + i) for i in range(fpn.num_outs)]
    if neck_levels is not None:
        strides = [int(s) for _, s in neck_levels]
    return strides


def anchor_generator(cfg) -> AnchorGenerator:
    """The configured dense head's anchors on the head strides (the head class says which)."""
    return DENSE_HEAD_CLASSES[cfg.model.head.name].anchor_generator(head_strides(cfg))


def input_policy(cfg) -> InputPolicy:
    """How images become network inputs: `data.resize_mode` at `model.input_size` (src/data/resize.py)."""
    data = cfg.data
    return InputPolicy(mode=str(data.get("resize_mode", "square")), test_size=int(cfg.model.input_size),
                       train_sizes=tuple(int(s) for s in (data.get("train_sizes") or ())),
                       max_size=int(data.get("max_size", 1333)), size_divisor=int(data.get("size_divisor", 32)))


def _std(data) -> tuple | None:
    std = data.get("std")
    return None if not std else tuple(float(v) for v in std)


def build_test_input(cfg) -> TestInput:
    """The test-time image -> network input of every inference path (src/data/resize.py)."""
    data = cfg.data
    return TestInput(input_policy(cfg), tuple(float(v) for v in data.mean), _std(data), bool(data.get("rgb", False)))


def detection_settings(cfg) -> DetectionSettings:
    """The `test:` thresholds, NMS and caps, and the box convention `data.pixel_offset` (src/postprocess.py)."""
    test = cfg.test
    return DetectionSettings(float(test.score_threshold), str(test.nms_method), float(test.nms_threshold),
                             float(test.soft_sigma), float(test.soft_min_score), test.keep_per_class,
                             test.max_per_image, bool(cfg.data.pixel_offset))


def inference_options(cfg) -> dict:
    """The keyword arguments of src.inference.fast_network.inference_network: `test.fold_bn`,
    `test.winograd`, `test.winograd_tile` and the test canvas (batch 1) that picks each layer's tile."""
    return {"fold_bn": bool(cfg.test.get("fold_bn", False)), "use_winograd": bool(cfg.test.get("winograd", False)),
            "winograd_tile": winograd_tile(cfg), "input_shape": (1, 3, *input_policy(cfg).canvas())}


def winograd_tile(cfg) -> int:
    """`test.winograd_tile` (2 or 4), checked."""
    tile = cfg.test.get("winograd_tile", 4)
    if tile not in (2, 4):
        raise ValueError(f"test.winograd_tile must be 2 (F(2x2,3x3)) or 4 (F(4x4,3x3) by map size), got {tile!r}")
    return int(tile)


def reader_settings(cfg, split: str = "train") -> ReaderSettings:
    """The COCO reader of `split` ('train' or 'val'): data.root + the split's relative paths."""
    data = cfg.data
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got '{split}'")
    return ReaderSettings(split=split, ann_file=os.path.join(data.root, data[f"{split}_ann"]),
                          image_dir=os.path.join(data.root, data[f"{split}_images"]),
                          num_classes=cfg.model.num_classes, min_box_size=float(data.get("min_box_size", 1.0)),
                          pixel_offset=bool(data.get("pixel_offset", False)))


def train_data_settings(cfg) -> TrainDataSettings:
    """What the training pipeline is made of (src/data/settings.py), from `data:`, `train.seed`,
    `priors.variance` and the multibox head's `match_threshold`."""
    data = cfg.data
    augmentation = Augmentation(enabled=bool(data.augment), expand_prob=float(data.get("expand_prob", 0.6)),
                                expand_max_ratio=float(data.get("expand_max_ratio", 4.0)),
                                crop_require_all=bool(data.get("crop_require_all", True)))
    return TrainDataSettings(reader=reader_settings(cfg, "train"), policy=input_policy(cfg),
                             mean=tuple(float(v) for v in data.mean), std=_std(data),
                             rgb=bool(data.get("rgb", False)), augmentation=augmentation,
                             match_threshold=float(cfg.model.head.multibox.match_threshold),
                             variance=tuple(float(v) for v in cfg.priors.variance), seed=int(cfg.train.seed),
                             num_workers=int(data.num_workers))


def eval_data_settings(cfg, split: str = "val") -> EvalDataSettings:
    """What an evaluation pipeline of `split` is made of: its reader, `build_test_input(cfg)` and workers."""
    return EvalDataSettings(reader=reader_settings(cfg, split), test_input=build_test_input(cfg),
                            num_workers=int(cfg.data.num_workers))


def build_priors(cfg):
    """Multibox head: SSD priors on the detector's feature maps (REFERENCE 1.7).

    Dense heads: the `AnchorLayout` of the head's anchors for every input size the data
    pipeline produces (test size and training sizes), for target assignment.
    """
    check_config(cfg)
    if not is_dense(cfg):
        return SSDPriors(input_size=cfg.model.input_size, feature_maps=_raw_feature_map_sizes(cfg),
                         steps=list(cfg.priors.steps), size_pattern=list(cfg.priors.size_pattern),
                         aspect_ratios=[list(r) for r in cfg.priors.aspect_ratios], clip=cfg.priors.clip)
    policy = input_policy(cfg)
    sizes = {hw: head_feature_sizes(cfg, hw) for hw in policy.canvases()}
    return AnchorLayout(anchor_generator(cfg), sizes, DENSE_HEAD_CLASSES[cfg.model.head.name].assigner,
                        policy.canvas())


def build_backbone(cfg):
    check_config(cfg)
    bb = cfg.model.backbone
    if bb.name == "vgg16":
        return VGG16Reduced(width=bb.width, batch_norm=bb.batch_norm)
    depth, groups, width_per_group = RESNETS[bb.name]
    strides, out_layers = _resnet_layout(cfg)
    return ResNet(depth, strides, out_layers, bb.width, groups=groups, width_per_group=width_per_group,
                  frozen_stages=bb.frozen_stages, norm_eval=bb.norm_eval,
                  dcn_stages=[bool(d) for d in bb.dcn_stages])


def build_neck(cfg, in_levels):
    if cfg.model.neck.name == "fpn":
        neck = cfg.model.neck.fpn
        extra = neck.add_extra_convs if neck.add_extra_convs not in ("", "none") else False
        return FPN(in_levels, out_channels=neck.out_channels, num_outs=neck.num_outs, start_level=neck.start_level,
                   add_extra_convs=extra, relu_before_extra_convs=neck.relu_before_extra_convs)
    neck = cfg.model.neck.mlfpn
    return MLFPN(in_levels, base_channels=list(neck.base_channels), planes=neck.planes,
                 num_levels=neck.num_levels, num_scales=neck.num_scales, shared_ffm2=neck.shared_leach,
                 sfam=neck.sfam, sfam_reduction=neck.sfam_reduction, tum_norm=neck.tum_norm)


def build_head(cfg, neck_levels, priors=None):
    """The configured head on the neck's levels [(channels, stride)]."""
    model, head = cfg.model, cfg.model.head
    if head.name == "multibox":
        priors = priors if priors is not None else build_priors(cfg)
        return MultiBoxHead(neck_levels, priors.num_anchors(), model.num_classes,
                            neg_pos_ratio=head.multibox.neg_pos_ratio,
                            empty_image_negatives=head.multibox.empty_image_negatives)
    levels = [(c, s) for (c, _), s in zip(neck_levels, head_strides(cfg, None if model.neck.name == "mlfpn"
                                                                     else neck_levels))]
    options = dict(feat_channels=head.dense.feat_channels, nms_pre=cfg.test.nms_pre)
    if head.dense.stacked_convs >= 0:            # -1: the head's own default
        options["stacked_convs"] = head.dense.stacked_convs
    if head.name == "umop":
        options["cls_loss"] = "progressive_focal"
    if head.name == "gfl":
        options["reg_max"] = head.gfl.reg_max
    return DENSE_HEAD_CLASSES[head.name](levels, model.num_classes, **options)


def build_detector(cfg) -> Detector:
    """Backbone, neck and head as configured in `cfg.model` (and `cfg.priors`)."""
    priors = build_priors(cfg)   # validates the config
    backbone = build_backbone(cfg)
    neck = build_neck(cfg, backbone.output_levels)
    head = build_head(cfg, neck.output_levels, priors)
    return Detector(backbone, neck, head)


def build_output_decoder(cfg, priors=None):
    """The map from one image's inference outputs to (boxes in [0, 1] of the network input,
    scores (P, K), whether score column 0 is background), see src/postprocess.py."""
    if is_dense(cfg):
        h, w = input_policy(cfg).canvas()
        return DenseOutputDecoder((h, w))
    priors = priors if priors is not None else build_priors(cfg)
    return SSDOutputDecoder(priors.boxes(), cfg.priors.variance)


def build_postprocessor(cfg, priors=None, clip: bool | None = None) -> Postprocessor:
    """Network outputs of one image -> its detections in image pixels: the output decoder, the
    input policy and the detection settings, read from `cfg` once (src/postprocess.py)."""
    return Postprocessor(build_output_decoder(cfg, priors), input_policy(cfg), detection_settings(cfg), clip=clip)


def class_dependent_names(cfg, detector) -> set:
    """Names of `detector`'s parameters whose shape depends on model.num_classes: the head is
    built again with one more class and the shapes compared."""
    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.model.num_classes = int(cfg.model.num_classes) + 1
    probe_shapes = {p.name: tuple(p.shape) for p in build_head(probe_cfg, detector.neck.output_levels).get_parameters()}
    names = set()
    for p in detector.head.get_parameters():
        bare = p.name[len("head."):] if p.name.startswith("head.") else p.name
        if probe_shapes.get(bare, tuple(p.shape)) != tuple(p.shape):
            names.add(p.name)
    return names
