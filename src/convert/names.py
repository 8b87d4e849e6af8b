"""Name maps from PyTorch checkpoints to this project's parameter names.

This is the one place that knows the reference names. The M2Det PyTorch release calls its
parts `base` (backbone), `reduce` / `up_reduce` (FFMv1), `leach` (FFMv2), `unet1..8` (TUMs, with
`layers`, `toplayer.0`, `latlayer`, `smooth`), `sfam_module.fc1/fc2` (SFAM), `Norm` (the BatchNorm
on the largest scale) and `loc` / `conf` (the multibox head); SSD's `vgg16_reducedfc.pth` keys
the VGG layers by bare flat index (`31.weight`); torchvision's ResNet uses the names our ResNet
copies (`layer1.0.conv1.weight`).

A map renames the module path only; BatchNorm leaf names (weight, bias, running_mean,
running_var -> gamma, beta, moving_mean, moving_variance) are renamed by the converter for every
module that carries running statistics, and `num_batches_tracked` is dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

BN_LEAF_RENAME = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                  "running_var": "moving_variance"}
Replacement = Union[str, Callable[[re.Match], str]]


@dataclass
class NameMap:
    """Ordered (pattern, replacement) rules on PyTorch keys; the first rule that matches wins.

    `dropped` patterns name source tensors that are known to have no counterpart (a
    classifier fc, BatchNorm's `num_batches_tracked`): they are reported as dropped, not as
    unmapped. `shared` describes groups of source keys that are copies of one module in the
    reference (several keys map to one target); `shared_note` explains them in warnings.
    """

    description: str
    rules: list[tuple[re.Pattern, Replacement]]
    dropped: list[re.Pattern] = field(default_factory=list)
    shared_note: dict[str, str] = field(default_factory=dict)

    def target(self, key: str) -> Optional[str]:
        """Our (module-path) name for a PyTorch key, or None when no rule matches."""
        for pattern, repl in self.rules:
            if pattern.match(key):
                return pattern.sub(repl, key, count=1)
        return None

    def is_dropped(self, key: str) -> bool:
        return any(p.search(key) for p in self.dropped)


def _rules(*pairs) -> list[tuple[re.Pattern, Replacement]]:
    return [(re.compile(p), r) for p, r in pairs]


_NUM_BATCHES = re.compile(r"(^|\.)num_batches_tracked$")


def vgg_backbone_map() -> NameMap:
    """SSD's `vgg16_reducedfc.pth` (`{0,2,...,33}.{weight,bias}`) -> VGG16Reduced (`layers.N.*`)."""
    return NameMap("VGG16 reduced-fc (SSD vgg16_reducedfc.pth)", _rules((r"^(\d+)\.", r"layers.\1.")))


def torchvision_resnet_map() -> NameMap:
    """torchvision ImageNet ResNet state dict -> our ResNet trunk (same names, no fc)."""
    return NameMap("torchvision ResNet", _rules((r"^(conv1|bn1|layer[1-4])\.", r"\1.")),
                   dropped=[re.compile(r"^fc\."), _NUM_BATCHES])


def m2det_release_map(shared_leach: bool = True) -> NameMap:
    """The M2Det PyTorch release's model keys -> our Detector's parameter names.

    With `shared_leach` (the reference layout) every `leach.i` maps to the one shared FFMv2;
    otherwise `leach.i` maps to level i's own FFMv2. SFAM's `fc1.i` / `fc2.i` are always copies
    of one module (the reference shares them across scales, and so does our SFAM).
    """
    def tum(part: str) -> Callable[[re.Match], str]:
        return lambda m: f"neck.tums.{int(m[1]) - 1}.{part}."

    leach = (lambda m: "neck.ffm2.0.reduce.") if shared_leach else (lambda m: f"neck.ffm2.{m[1]}.reduce.")
    rules = _rules(
        (r"^base\.(\d+)\.", r"backbone.layers.\1."),            # VGG: flat indices
        (r"^base\.(conv1|bn1|layer[1-4])\.", r"backbone.\1."),  # ResNet: torchvision names
        (r"^reduce\.", "neck.ffm1.reduce_shallow."),
        (r"^up_reduce\.", "neck.ffm1.reduce_deep."),
        (r"^leach\.(\d+)\.", leach),
        (r"^unet(\d+)\.layers\.", tum("encoder")),
        (r"^unet(\d+)\.toplayer\.0\.", lambda m: f"neck.tums.{int(m[1]) - 1}.top."),
        (r"^unet(\d+)\.latlayer\.", tum("lateral")),
        (r"^unet(\d+)\.smooth\.", tum("smooth")),
        (r"^sfam_module\.fc1\.\d+\.", "neck.sfam.squeeze."),
        (r"^sfam_module\.fc2\.\d+\.", "neck.sfam.expand."),
        (r"^Norm\.", "neck.norm."),
        (r"^loc\.", "head.loc_convs."),
        (r"^conf\.", "head.conf_convs."),
    )
    notes = {"neck.sfam.": "sfam_module.fc1.i / fc2.i (one module shared by every scale)"}
    if shared_leach:
        notes["neck.ffm2.0."] = ("leach.0 ... leach.L-1 (one shared module in the reference; the config "
                                 "has model.neck.mlfpn.shared_leach: true)")
    return NameMap("M2Det PyTorch release", rules,
                   dropped=[re.compile(r"^base\.fc\."), _NUM_BATCHES], shared_note=notes)


# ResNeXt ImageNet files in torchvision's layout use the same names (conv2 is grouped)
BACKBONE_MAPS = {"vgg16": vgg_backbone_map, "resnet50": torchvision_resnet_map,
                 "resnet101": torchvision_resnet_map, "resnext101_32x4d": torchvision_resnet_map,
                 "resnext101_64x4d": torchvision_resnet_map}
