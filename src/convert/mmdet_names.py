"""Name maps from mmdetection v2 checkpoints of the FPN one-stage detectors to our parameter names.

mmdetection v2 (its ResNet/ResNeXt, FPN, RetinaHead, ATSSHead, GFLHead, VFNetHead; the UMOP release
keeps ATSSHead's layout) wraps most convs in mmcv's ConvModule, whose conv is `.conv` and whose
GroupNorm is `.gn`:

    mmdetection                                      ours
    backbone.conv1 / bn1 / layerN.M.{conv1, bn1,     backbone.<same>  (torchvision names; BatchNorm
      conv2, bn2, conv3, bn3, downsample.0/.1}         leaves renamed by the converter)
    backbone.layerN.M.conv2.conv_offset.*            backbone.<same>  (DCNv2: 3K rows, 2K offsets in
                                                       mmcv's interleaved layout, then K mask logits)
    neck.{lateral,fpn}_convs.i.conv.*                neck.{lateral,fpn}_convs.i.*  (extra levels at
                                                       fpn_convs.3, .4 in both)
    bbox_head.{cls,reg}_convs.i.conv.*               head.{cls,reg}_convs.<s*i>.*
    bbox_head.{cls,reg}_convs.i.gn.{weight,bias}     head.{cls,reg}_convs.<s*i+1>.{gamma,beta}
    bbox_head.vfnet_reg_conv.{conv,gn}.*             head.vfnet_reg_conv.{0,1}.*  (a one-conv tower)
    bbox_head.scales[_refine].i.scale  (0-d)         head.scales[_refine].i.scale  (1,)
    bbox_head.<predictor>.*                          head.<predictor>.*  (retina_cls, atss_reg, gfl_reg,
                                                       vfnet_cls_dconv, ...: the same names)

Our towers (`heads.dense_head_utils.conv_tower`) are SequentialCells of [conv, GroupNorm, ReLU]
per conv, so conv i sits at index s*i with s = 3, its GroupNorm at s*i + 1; RetinaNet's towers
have no norm ([conv, ReLU], s = 2).

Two tensors differ in layout, not in values, and are adapted before conversion
(`adapt_mmdet_tensors`, each listed in the report): mmcv's `Scale` holds a 0-d tensor where ours
is (1,); and a DCN v1 `conv_offset` (mmdetection's `dcn=dict(type='DCN')`, e.g. GFL X-101 dconv),
2K rows, becomes our DCNv2's 3K rows: the K mask rows get weight 0 and bias MASK_LOGIT, so every
mask is sigmoid(30) = 1.0 in float32 and the layer computes DCN v1 exactly.
"""
from __future__ import annotations

import re

import numpy as np

from src.convert.names import NameMap

MMDET_HEADS = ("retina", "atss", "umop", "gfl", "vfnet")
PREDICTORS = {
    "retina": ("retina_cls", "retina_reg"),
    "atss": ("atss_cls", "atss_reg", "atss_centerness"),
    "umop": ("atss_cls", "atss_reg", "atss_centerness"),
    "gfl": ("gfl_cls", "gfl_reg"),
    "vfnet": ("vfnet_reg", "vfnet_reg_refine_dconv", "vfnet_reg_refine", "vfnet_cls_dconv", "vfnet_cls"),
}
SCALES = {"retina": (), "atss": ("scales",), "umop": ("scales",), "gfl": ("scales",),
          "vfnet": ("scales", "scales_refine")}
# ConvModules outside the towers, which our heads build as a one-conv tower
SINGLE_CONV_MODULES = {"vfnet": ("vfnet_reg_conv",)}
GN_LEAF_RENAME = {"weight": "gamma", "bias": "beta"}

SCALE_KEY = re.compile(r"^bbox_head\.scales(_refine)?\.\d+\.scale$")
DCN_OFFSET_KEY = re.compile(r"^backbone\.layer[1-4]\.\d+\.conv2\.conv_offset\.(weight|bias)$")
HEAD_DCN_KEY = re.compile(r"^bbox_head\.(cls|reg)_convs\.\d+\.conv\.conv_offset\.")
# sigmoid(30) = 1 - 9.4e-14, which is 1.0 in float32: a DCNv2 with this mask is DCN v1
MASK_LOGIT = 30.0


def tower_step(head: str) -> int:
    """Cells per conv in our towers: [conv, GroupNorm, ReLU], RetinaNet [conv, ReLU]."""
    return 2 if head == "retina" else 3


def mmdet_map(head: str) -> NameMap:
    """mmdetection v2 keys of a ResNet(-DCN)-FPN detector with `head` -> our Detector's names."""
    if head not in MMDET_HEADS:
        raise ValueError(f"no mmdetection name map for head '{head}' (supported: {', '.join(MMDET_HEADS)})")
    step = tower_step(head)
    towers = "cls_convs|reg_convs"
    rules = [
        (r"^backbone\.(conv1|bn1|layer[1-4])\.", r"backbone.\1."),
        (r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.", r"neck.\1.\2."),
        (rf"^bbox_head\.({towers})\.(\d+)\.conv\.", lambda m: f"head.{m[1]}.{step * int(m[2])}."),
        (rf"^bbox_head\.({towers})\.(\d+)\.gn\.(weight|bias)$",
         lambda m: f"head.{m[1]}.{step * int(m[2]) + 1}.{GN_LEAF_RENAME[m[3]]}"),
    ]
    for name in SINGLE_CONV_MODULES.get(head, ()):
        rules += [(rf"^bbox_head\.{name}\.conv\.", f"head.{name}.0."),
                  (rf"^bbox_head\.{name}\.gn\.(weight|bias)$", lambda m, n=name: f"head.{n}.1.{GN_LEAF_RENAME[m[1]]}")]
    if SCALES[head]:
        rules.append((rf"^bbox_head\.({'|'.join(SCALES[head])})\.(\d+)\.scale$", r"head.\1.\2.scale"))
    rules.append((rf"^bbox_head\.({'|'.join(PREDICTORS[head])})\.", r"head.\1."))
    dropped = [re.compile(r"(^|\.)num_batches_tracked$")]
    if head == "gfl":
        dropped.append(re.compile(r"^bbox_head\.integral\.project$"))   # the fixed bins 0..reg_max (a buffer)
    label = "ATSSHead layout (UMOP release)" if head == "umop" else f"{head} head"
    return NameMap(f"mmdetection v2 ResNet-FPN, {label}", [(re.compile(p), r) for p, r in rules], dropped=dropped)


def adapt_mmdet_tensors(source: dict, name_map: NameMap, target_shapes: dict) -> tuple[dict, list[str]]:
    """Make the tensors that differ from ours only in layout fit; returns (source', notes).

    mmcv Scale 0-d -> (1,); DCN v1 `conv_offset` (2K rows) -> DCNv2 (3K rows, mask logits
    MASK_LOGIT). A tensor is changed only where the network expects exactly that other shape;
    anything else is left for the converter's shape check.
    """
    adapted, notes = dict(source), []
    for key, value in source.items():
        expected = target_shapes.get(name_map.target(key) or "")
        if expected is None or tuple(value.shape) == tuple(expected):
            continue
        expected = tuple(expected)
        if SCALE_KEY.match(key) and value.size == 1 and expected == (1,):
            adapted[key] = value.reshape(1)
            notes.append(f"{key}: mmcv Scale {tuple(value.shape)} -> (1,)")
        elif DCN_OFFSET_KEY.match(key) and value.shape[0] % 2 == 0 and expected[0] == value.shape[0] // 2 * 3 \
                and tuple(value.shape[1:]) == expected[1:]:
            k = value.shape[0] // 2
            fill = np.full((k,) + value.shape[1:], MASK_LOGIT if key.endswith(".bias") else 0.0, value.dtype)
            adapted[key] = np.concatenate([value, fill], axis=0)
            notes.append(f"{key}: DCN v1 offsets {tuple(value.shape)} -> DCNv2 {expected} (mask = 1)")
    return adapted, notes


def _layers(keys) -> str:
    return ", ".join(sorted({k.split(".")[1] for k in keys}))


def mmdet_layout_hints(not_in_network: list[str], missing: list[str]) -> list[str]:
    """Likely reasons, in config terms, why a file's layers and the network's differ."""
    hints = []
    if any(HEAD_DCN_KEY.match(k) for k in not_in_network):
        hints.append("the file's head has deformable tower convs (mmdetection's dcn_on_last_conv=True, as in "
                     "its VFNet mdconv models); the heads here build plain convs there, so the file cannot be "
                     "converted exactly")
    file_dcn = [k for k in not_in_network if DCN_OFFSET_KEY.match(k)]
    if file_dcn:
        hints.append(f"the file has deformable conv2 in {_layers(file_dcn)} (mmdetection's stage_with_dcn) "
                     f"where the network has plain convs: set model.backbone.dcn_stages to match")
    net_dcn = [k for k in missing if re.match(r"^backbone\.layer[1-4]\..*\.conv_offset\.", k)]
    if net_dcn:
        hints.append(f"the network has deformable conv2 in {_layers(net_dcn)} where the file has plain convs: "
                     f"set model.backbone.dcn_stages to match")
    others = [k for k in not_in_network if not HEAD_DCN_KEY.match(k) and not DCN_OFFSET_KEY.match(k)]
    if others:
        hints.append("the file's model has layers the config's lacks (a deeper backbone, more tower convs: "
                     "model.head.dense.stacked_convs, more FPN levels: model.neck.fpn.num_outs)")
    return hints
