"""Apply a reference name map to a PyTorch state dict against one of our networks.

    source tensors --NameMap--> our names --checks--> MindSpore ckpt

Every source tensor ends up in exactly one bucket of the report: converted, dropped (known to
have no counterpart: num_batches_tracked, a classifier fc), a copy of a shared module
(reference quirk: `leach.0..7`, SFAM's `fc1.i`), unmapped, or (strict conversions: mmdetection
files) mapped to a layer the network does not have. Target parameters that received nothing are
missing. Shape mismatches, missing tensors and, in strict conversions, layers the network lacks
make the conversion fail with a message listing them; unmapped tensors are reported and left out.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from src.builder import BACKBONES, DENSE_HEADS, build_detector
from src.convert.mmdet_names import adapt_mmdet_tensors, mmdet_layout_hints, mmdet_map
from src.convert.names import BACKBONE_MAPS, BN_LEAF_RENAME, NameMap, m2det_release_map
from src.convert.torch_io import ConversionError, load_torch_state_dict
from src.training.checkpoint import write_checkpoint

log = logging.getLogger("m2det.convert")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _short(items: list, n: int = 12) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


@dataclass
class ConversionReport:
    """What a conversion did with every tensor; `tensors` holds the result (our name -> array).

    `not_in_network` (strict conversions only): source keys a rule maps to a layer the network
    lacks, an error; `adapted`: tensors reshaped or extended before conversion, with what was done.
    """

    source: str
    tensors: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    shared_copies: list = field(default_factory=list)
    unmapped: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    shape_mismatches: list = field(default_factory=list)
    mismatched_file_shapes: dict = field(default_factory=dict)   # our name -> the file's shape
    not_in_network: list = field(default_factory=list)
    adapted: list = field(default_factory=list)
    non_tensors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.shape_mismatches and not self.not_in_network

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.tensors)} tensors converted"]
        for label, items in (("shape mismatches", self.shape_mismatches), ("missing", self.missing),
                             ("layers the network does not have", self.not_in_network),
                             ("unmapped (left out)", self.unmapped),
                             ("adapted (same values, other layout)", self.adapted),
                             ("dropped (no counterpart by design)", self.dropped),
                             ("copies of a shared module (one copy used)", self.shared_copies),
                             ("non-tensor entries skipped", self.non_tensors)):
            if items:
                lines.append(f"  {label} ({len(items)}): {_short(items)}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def raise_for_problems(self, target: str, hints=()) -> None:
        """ConversionError listing shape mismatches, missing tensors and layers the network lacks
        (then `hints`, likely causes), if there are any."""
        if self.ok:
            return
        lines = [f"{self.source} does not fit {target}:"]
        if self.shape_mismatches:
            lines.append(f"  shape mismatches ({len(self.shape_mismatches)}): {_short(self.shape_mismatches)}")
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {_short(self.missing)}")
        if self.not_in_network:
            lines.append(f"  layers the network does not have ({len(self.not_in_network)}): "
                         f"{_short(self.not_in_network)}")
        if self.unmapped:
            lines.append(f"  unmapped ({len(self.unmapped)}): {_short(self.unmapped)}")
        lines += [f"  hint: {h}" for h in hints]
        raise ConversionError("\n".join(lines))


def convert_state_dict(source: dict, target_shapes: dict, name_map: NameMap,
                       source_name: str = "state dict", strict_layers: bool = False) -> ConversionReport:
    """Map `source` ({PyTorch key: array}) onto `target_shapes` ({our name: shape}).

    A key that a rule maps to a name the network lacks is unmapped, or with `strict_layers`
    lands in `not_in_network`, an error: the file's model has a layer the network has not (a
    deeper backbone, a deformable conv where ours is plain), so the result would compute
    something else.

    Keys whose module carries `running_mean` are BatchNorm: their leaves are renamed
    (weight -> gamma, bias -> beta, running_mean -> moving_mean, running_var -> moving_variance).
    When several keys map to one target (a module the reference lists several times), the
    lowest-numbered one is used and the others must be equal to it, else a warning is added.
    """
    report = ConversionReport(source_name)
    bn_modules = {k.rsplit(".", 1)[0] for k in source if k.endswith(".running_mean") or k == "running_mean"}
    groups: dict[str, list[str]] = {}
    for key in sorted(source, key=_natural_key):
        if name_map.is_dropped(key):
            report.dropped.append(key)
            continue
        name = name_map.target(key)
        if name is None:
            report.unmapped.append(key)
            continue
        module, _, leaf = key.rpartition(".")
        if module in bn_modules and leaf in BN_LEAF_RENAME:
            name = f"{name.rpartition('.')[0]}.{BN_LEAF_RENAME[leaf]}"
        if name not in target_shapes:
            if strict_layers:
                report.not_in_network.append(key)
            else:
                report.unmapped.append(f"{key} (-> {name}, not in the network)")
            continue
        groups.setdefault(name, []).append(key)

    differing: dict[str, list[str]] = {}
    mismatched = set()
    for name, keys in groups.items():
        key = keys[0]
        value = source[key]
        for other in keys[1:]:
            report.shared_copies.append(other)
            if source[other].shape != value.shape or not np.array_equal(source[other], value):
                differing.setdefault(_shared_prefix(name, name_map), []).append(other)
        expected = tuple(target_shapes[name])
        if tuple(value.shape) != expected:
            report.shape_mismatches.append(f"{key} -> {name}: file {tuple(value.shape)} vs network {expected}")
            report.mismatched_file_shapes[name] = tuple(value.shape)
            mismatched.add(name)
            continue
        report.tensors[name] = value.astype(np.float32) if value.dtype != np.float32 else value
    for prefix, keys in differing.items():
        note = name_map.shared_note.get(prefix, "copies of one module")
        report.warnings.append(f"{note}: {len(keys)} tensors differ from the first copy, which is used "
                               f"({_short(keys, 4)})")
    report.missing = [n for n in target_shapes if n not in report.tensors and n not in mismatched]
    return report


def _shared_prefix(name: str, name_map: NameMap) -> str:
    return next((p for p in name_map.shared_note if name.startswith(p)), name.rpartition(".")[0] + ".")


def save_params(path: str, names_in_order: list, tensors: dict) -> str:
    """Write `tensors` as a MindSpore checkpoint, atomically, as training checkpoints are written."""
    import mindspore as ms

    if not os.path.abspath(path).endswith(".ckpt"):
        raise ConversionError(f"output path must end with .ckpt: {os.path.abspath(path)}")
    return write_checkpoint(path, [{"name": n, "data": ms.Tensor(tensors[n])} for n in names_in_order])


def _convert_into(cell, pth_path: str, name_map: NameMap, out: str, target: str, strict_layers: bool = False,
                  adapt=None, hints=None) -> ConversionReport:
    """`adapt(source, shapes) -> (source, notes)` fixes layout-only differences first;
    `hints(report) -> [str]` adds likely causes to the error message."""
    source, non_tensors = load_torch_state_dict(pth_path)
    shapes = {p.name: tuple(p.shape) for p in cell.get_parameters()}
    adapted = []
    if adapt is not None:
        source, adapted = adapt(source, shapes)
    report = convert_state_dict(source, shapes, name_map, source_name=pth_path, strict_layers=strict_layers)
    report.non_tensors = non_tensors
    report.adapted = adapted
    for w in report.warnings:
        log.warning(w)
    report.raise_for_problems(target, hints(report) if hints else ())
    save_params(out, list(shapes), report.tensors)
    return report


def convert_backbone(pth_path: str, backbone: str = "vgg16", out: Optional[str] = None,
                     cell=None) -> tuple[ConversionReport, str]:
    """ImageNet backbone weights -> a backbone ckpt with bare names (`layers.0.weight`, `conv1.weight`).

    `backbone` is vgg16 (SSD's vgg16_reducedfc.pth), resnet50 or resnet101 (torchvision layout,
    the fc is dropped). The file loads with `load_backbone_weights(detector.backbone, path)`.
    `out` defaults to the input path with `.ckpt`; `cell` overrides the full-width backbone that
    defines the expected names and shapes.
    """
    if backbone not in BACKBONE_MAPS:
        raise ConversionError(f"unsupported backbone '{backbone}' (supported: {', '.join(BACKBONE_MAPS)})")
    if cell is None:
        cell = BACKBONES[backbone](1.0)
    out = out or os.path.splitext(pth_path)[0] + ".ckpt"
    report = _convert_into(cell, pth_path, BACKBONE_MAPS[backbone](), out, f"the {backbone} backbone")
    return report, out


def convert_m2det(pth_path: str, cfg, out: str) -> ConversionReport:
    """A checkpoint of the M2Det PyTorch release -> a ckpt that loads into `build_detector(cfg)`."""
    model = cfg.model
    if model.neck.name != "mlfpn" or model.head.name != "multibox":
        raise ConversionError(f"--torch_ckpt converts checkpoints of the M2Det PyTorch release (mlfpn neck, "
                              f"multibox head); this config has neck '{model.neck.name}' and head "
                              f"'{model.head.name}'")
    detector = build_detector(cfg)
    name_map = m2det_release_map(shared_leach=cfg.model.neck.mlfpn.shared_leach)
    return _convert_into(detector, pth_path, name_map, out, "the network built from the config",
                         hints=lambda report: _release_class_hints(report, detector.head))


def _release_class_hints(report: ConversionReport, head) -> list[str]:
    """The class count a release file's conf layers imply, when they do not fit the config's."""
    shape = report.mismatched_file_shapes.get("head.conf_convs.0.weight")
    if shape is None:
        return []
    columns = shape[0] // head.num_anchors[0]
    # the release's num_classes (81 for COCO) counts the background column
    return [f"the file's conf layers predict {columns} softmax columns per prior (background + "
            f"{columns - 1} classes): set model.num_classes={columns - 1} (the object classes; the "
            f"config has {head.num_classes})"]


def convert_mmdet(pth_path: str, cfg, out: str) -> ConversionReport:
    """An mmdetection v2 checkpoint (`state_dict` with `backbone.*`, `neck.*`, `bbox_head.*`) of a
    RetinaNet / ATSS / GFL / VFNet (or UMOP release) ResNet-FPN model -> a ckpt that loads into
    `build_detector(cfg)`; the config's head picks the name map (src/convert/mmdet_names.py).

    Strict: besides missing and mis-shaped tensors, a file layer the network lacks is an error.
    Keys no rule knows (e.g. a loss buffer) are reported as unmapped and left out.
    """
    model = cfg.model
    if model.neck.name != "fpn" or model.head.name not in DENSE_HEADS:
        raise ConversionError(f"--mmdet_ckpt converts mmdetection checkpoints of the FPN one-stage detectors "
                              f"(fpn neck, head {' / '.join(DENSE_HEADS)}); this config has neck "
                              f"'{model.neck.name}' and head '{model.head.name}'")
    name_map = mmdet_map(model.head.name)
    detector = build_detector(cfg)
    return _convert_into(detector, pth_path, name_map, out, "the network built from the config", strict_layers=True,
                         adapt=lambda source, shapes: adapt_mmdet_tensors(source, name_map, shapes),
                         hints=lambda report: mmdet_layout_hints(report.not_in_network, report.missing))
