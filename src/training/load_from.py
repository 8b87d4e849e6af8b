"""`train.load_from`: start a new run from a whole detector trained on other classes.

Every tensor of the network whose name and shape match the file is loaded. The class-dependent
layers (the multibox head's confidence convs: A x (background + C); the sigmoid heads' class
convs: A x C) keep the initialisation of the freshly built network when the file's class count
differs. Anything else that does not fit (a tensor of the network missing from the file or
shaped differently, or a backbone/neck/head layer in the file that the network lacks) means the
file is of another architecture: refused, naming the first such layer, before any compilation.

The caller names the class-dependent tensors (src/builder.py's `class_dependent_names` builds
the head a second time with one more class and compares shapes, so every head, and any future
one, is covered without a list of layer names).
Works from train.py checkpoints (EMA averages under the plain names; `raw.*` and optimizer state
are left out) and from convert.py outputs (plain parameter files).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mindspore as ms
from mindspore import nn

from src.training.checkpoint import CheckpointError


@dataclass
class LoadFromReport:
    loaded: list = field(default_factory=list)          # network tensors taken from the file
    reinitialised: list = field(default_factory=list)   # class-dependent tensors left fresh
    left_out: list = field(default_factory=list)        # file tensors not used

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.reinitialised)} class-dependent tensors "
                f"re-initialised, {len(self.left_out)} file entries left out (optimizer state, metadata, the "
                f"file's own class layers)")


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "asnumpy")


def load_pretrained(detector: nn.Cell, params: dict, source: str, *, class_dependent: set,
                    config_name: str = "?") -> LoadFromReport:
    """Load `params` (read_checkpoint of `source`) into the freshly built `detector` as above;
    `class_dependent` names the parameters that may differ in shape (left fresh when they do)."""
    report = LoadFromReport()
    mismatches, mapping = [], {}
    for p in detector.get_parameters():
        value = params.get(p.name)
        fits = _is_tensor(value) and tuple(value.shape) == tuple(p.shape)
        if fits:
            mapping[p.name] = value
            report.loaded.append(p.name)
        elif p.name in class_dependent:
            report.reinitialised.append(p.name)
        elif not _is_tensor(value):
            mismatches.append(f"'{p.name}' {tuple(p.shape)} is missing from the file")
        else:
            mismatches.append(f"'{p.name}': file {tuple(value.shape)} vs network {tuple(p.shape)}")
    own = {p.name for p in detector.get_parameters()}
    prefixes = tuple(f"{name}." for name, _ in detector.name_cells().items())
    for key in params:
        if key.startswith(prefixes) and key not in own:
            mismatches.append(f"'{key}' in the file is a layer the network does not have")
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise CheckpointError(
            f"--load_from {source} does not fit the network of config '{config_name}': first "
            f"mismatching layer {mismatches[0]}{more}. Only the class-dependent layers may differ; the file "
            f"is of another architecture (backbone, neck or head settings): use the config it was made with")
    report.left_out = [k for k in params if k not in mapping]
    # set by exact name (load_param_into_net may fall back to suffix matches)
    for p in detector.get_parameters():
        if p.name in mapping:
            p.set_data(ms.Tensor(mapping[p.name].asnumpy().astype(p.asnumpy().dtype)))
    return report
