"""Export a detector (weights loaded) to MINDIR or ONNX.

    detector --copy--> fold BatchNorm (fold_bn.py) --[ONNX]--> exact op rewrites (onnx_compat.py)
             --[MINDIR for CPU, test.winograd]--> wide 3x3 convolutions by Winograd (F(4x4, 3x3) /
                                                  F(2x2, 3x3) / direct by map size, test.winograd_tile)
             --[with_decode]--> + SSD decoding against the priors, boxes clipped to [0, 1]
             --check against the detector--> mindspore.export --check the file--> F + F.json

The exported graph takes the network's own input: (B, 3, H, W) float32, BGR 0-255 minus the mean
(divided by data.std, RGB if data.rgb), H x W the config's test canvas (S x S for M2Det), as
src/data/transforms.preprocess_for_test makes it. Outputs of the multibox head: loc (B, P, 4) SSD
offsets and softmax scores (B, P, C); with decoding, boxes (B, P, 4) as normalised corners
(x1, y1, x2, y2) in [0, 1] and the same scores, so a deployment needs no prior boxes. Other heads
export what their `predict` returns. `F.json` beside the file records
the input shape, the outputs and the config, which src/inference reads.

A MINDIR for CPU gets the same network that eval.py / infer.py run from a checkpoint: BatchNorm
folded and, with test.winograd (the default), the wide 3x3 convolutions as Winograd cells
(m2det/winograd.py), whose transforms are "aot" custom operators in m2det/kernels/_winograd_f23.so.
MindSpore stores that library's absolute path in the graph and opens it when the loaded graph
first runs, so such a file needs this package installed at that path: the sidecar records it
as `custom_op_library` and src/inference/predictor.py checks it before loading.
With test.winograd_tile 4 (the default) each of those layers is F(4x4, 3x3), F(2x2, 3x3) or left
direct by its map size at the exported input shape; F(4x4) weights take 4x the filters' space,
and a MINDIR whose weights pass 1 GB (M2Det-320 VGG: 1.1 GB) keeps them in `<name>_variables/`
beside the file (the sidecar's `external_data`), which must be copied with it.
`--set test.winograd=false` writes direct convolutions (a self-contained MINDIR, slower on CPU:
docs/BENCHMARKS.md "The deployable model"). ONNX always has direct convolutions: its
converter knows no custom operators, and the transforms written as standard operators were
slower than direct convolution (same section).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np

from heads.box_coder import SSDBoxCoder, decode_graph
from heads.multibox_head import MultiBoxHead
from m2det import winograd
from m2det.cells import refresh_parameter_names
from src.builder import build_priors, input_policy, winograd_tile as configured_winograd_tile
from src.config_upgrade import CONFIG_VERSION
from src.export.fold_bn import fold_batchnorm
from src.export.onnx_compat import UnsupportedForExport, make_onnx_compatible
from src.model_info import sidecar_entries
from src.utils.io import temp_name_prefix, write_json_atomic

log = logging.getLogger("m2det.export")

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx"}
# Folding and the rewrites only reorder float32 arithmetic. On trained weights (and on the
# calibrated test networks) the outputs agree to ~1e-6; an untrained network whose BatchNorm
# statistics do not fit its activations amplifies rounding, e.g. ~1.3e-4 on M2Det-320's softmax
# with the default init. Above TOLERANCE export.py warns; above FAIL_TOLERANCE it refuses, which
# still catches any real mistake (a wrong bias or resize is off by O(1)).
TOLERANCE = 1e-4
FAIL_TOLERANCE = 1e-3
_UNSUPPORTED_OP = re.compile(r"Can not find key (\w+) in convert map|Exporting (\w+) operator is not yet supported")


class ExportError(RuntimeError):
    """The network cannot be exported in the requested way (the message says why)."""


class DecodedDetector(nn.Cell):
    """detector(images) -> (boxes (B, P, 4) normalised corners clipped to [0, 1], scores (B, P, C)).

    The decoding is `heads.box_coder.decode_graph`, the graph twin of the NumPy decode that
    evaluation uses (same formula, same log-scale clamp); tests compare the exported file with it.
    """

    def __init__(self, detector: nn.Cell, priors: np.ndarray, variances=(0.1, 0.2)):
        super().__init__()
        self.detector = detector
        self.priors = ms.Tensor(np.asarray(priors, dtype=np.float32))
        self.v0, self.v1 = (float(v) for v in variances)

    def construct(self, images):
        loc, scores = self.detector(images)
        boxes = decode_graph(loc, self.priors, self.v0, self.v1)
        return ops.clamp(boxes, 0.0, 1.0), scores


def check_decodable(detector: nn.Cell) -> None:
    """In-graph decoding exists for SSD offsets against priors, i.e. the multibox head only."""
    head = getattr(detector, "head", None)
    if not isinstance(head, MultiBoxHead):
        raise ExportError(f"--with_decode is not supported for the head {type(head).__name__}: in-graph "
                          f"decoding exists only for MultiBoxHead (SSD offsets against prior boxes); export "
                          f"without --with_decode (the file then holds what the head's predict() returns)")


def default_winograd(cfg, file_format: str, device_target: str) -> bool:
    """Whether an export gets Winograd convolutions when not told: a MINDIR for CPU with
    test.winograd on (what eval.py / infer.py run), if the compiled transforms exist."""
    return (file_format.upper() == "MINDIR" and bool(cfg.test.get("winograd", False))
            and winograd.usable(device_target, "test.winograd"))


def build_export_network(detector: nn.Cell, cfg, file_format: str = "MINDIR", with_decode: bool = False,
                         use_winograd: bool = False, winograd_min_channels: int = 128, winograd_tile: int = 2,
                         input_shape=None) -> tuple[nn.Cell, dict]:
    """An inference-mode copy of `detector` prepared for `file_format`; `detector` is left as it is.

    `use_winograd` (MINDIR only) computes the wide 3x3 convolutions by Winograd as the checkpoint
    path's inference network does (src/inference/fast_network.py): `winograd_tile` 2 F(2x2, 3x3),
    4 F(4x4, 3x3) / F(2x2, 3x3) / direct by each layer's map size for `input_shape` (m2det/winograd.py).
    Returns the network and {"folded_bn": [...], "rewritten": [...], "winograd": [...]}.
    """
    file_format = file_format.upper()
    if file_format not in FORMATS:
        raise ExportError(f"unsupported format {file_format!r} (supported: {', '.join(FORMATS)})")
    if use_winograd and file_format != "MINDIR":
        raise ExportError(f"Winograd convolutions are MindSpore custom operators, which {file_format} cannot "
                          f"hold: export {file_format} with direct convolutions (test.winograd=false)")
    if use_winograd and not winograd.available():
        raise ExportError(f"Winograd convolutions need {winograd.LIBRARY} (bash scripts/make.sh), which is "
                          f"missing; or export direct convolutions with test.winograd=false")
    if with_decode:
        check_decodable(detector)
    network = copy.deepcopy(detector)
    network.set_train(False)
    folded = fold_batchnorm(network)
    rewritten, fast = [], []
    if file_format == "ONNX":
        try:
            rewritten = make_onnx_compatible(network)
        except UnsupportedForExport as exc:
            raise ExportError(f"cannot export to ONNX: {exc}") from exc
    if use_winograd:
        fast = winograd.use_winograd(network, winograd_min_channels, tile=winograd_tile, input_shape=input_shape)
    if with_decode:
        network = DecodedDetector(network, build_priors(cfg).boxes(), cfg.priors.variance)
    refresh_parameter_names(network)
    network.set_train(False)
    return network, {"folded_bn": folded, "rewritten": rewritten, "winograd": fast}


def reference_outputs(detector: nn.Cell, images: np.ndarray, cfg, with_decode: bool) -> list[np.ndarray]:
    """What the export must reproduce: the detector's own outputs (decoded with NumPy if asked)."""
    detector.set_train(False)
    loc, scores = (o.asnumpy() for o in detector(ms.Tensor(images)))
    if with_decode:
        boxes = SSDBoxCoder(cfg.priors.variance).decode(loc, build_priors(cfg).boxes())
        return [np.clip(boxes, 0.0, 1.0), scores]
    return [loc, scores]


def head_outputs(detector: nn.Cell, images: np.ndarray) -> list[np.ndarray]:
    """The head's raw outputs (before `predict`) in inference mode."""
    detector.set_train(False)
    outputs = detector.head(detector.neck(detector.backbone(ms.Tensor(images))))
    return [o.asnumpy() for o in outputs]


def max_relative_error(expected: list, got: list) -> float:
    """max |a - b| / max(1, max |a|) over the outputs (the parity tests' measure)."""
    if len(expected) != len(got):
        return float("inf")
    worst = 0.0
    for a, b in zip(expected, got):
        b = np.asarray(b)
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max())))
    return worst


def _check(expected, got, what: str) -> float:
    err = max_relative_error(expected, got)
    if not err <= FAIL_TOLERANCE:
        raise ExportError(f"{what} differs from the network: max relative error {err:.3g} > {FAIL_TOLERANCE} "
                          f"on a random input. With trained weights this means the export is wrong; an "
                          f"untrained network whose BatchNorm statistics do not fit its activations can "
                          f"amplify float rounding this much. Pass --no_verify to export anyway")
    if err > TOLERANCE:
        log.warning("%s differs from the network by %.3g (relative) on a random input, more than %g: fine for "
                    "an untrained network, suspicious for trained weights", what, err, TOLERANCE)
    return err


def _unsupported_op(exc: Exception):
    m = _UNSUPPORTED_OP.search(str(exc))
    return (m.group(1) or m.group(2)) if m else None


def _blame(detector: nn.Cell, images: np.ndarray, op: str) -> str:
    """Which part of the (prepared) detector, head, neck or backbone, holds the unconvertible op.

    The head is tried first: it is the smallest graph and the part most often swapped.
    """
    parts, inputs = [], ms.Tensor(images)
    for name in ("backbone", "neck", "head"):
        part = getattr(detector, name, None)
        if part is None:
            return ""
        parts.append((name, part, inputs))
        inputs = part(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        for name, part, inputs in reversed(parts):
            try:
                ms.export(part, inputs, file_name=os.path.join(tmp, name), file_format="ONNX")
            except Exception as exc:  # noqa: BLE001 - diagnosing the first failure only
                if _unsupported_op(exc) == op:
                    return f" (in the {name}: {type(part).__name__})"
    return ""


def external_data_folder(out: str) -> str:
    """Where mindspore.export puts the weights of a MINDIR above 1 GB: `<name>_variables/` beside
    it, named in the graph relative to the file's folder (F(4x4, 3x3) weights take 4x the
    space of the filters: M2Det-320 VGG 0.5 -> 1.1 GB)."""
    return out[: -len(FORMATS["MINDIR"])] + "_variables"


def _export(network: nn.Cell, sample: np.ndarray, out: str, file_format: str) -> bool:
    """Write `out` (into a fresh folder: see _place); True when its weights went to
    `external_data_folder(out)`."""
    base = out[: -len(FORMATS[file_format])]
    split_graph = base + "_graph.mindir"
    try:
        ms.export(network, ms.Tensor(sample), file_name=base, file_format=file_format)
        # above 1 GB of weights MindSpore writes <base>_graph.mindir + <base>_variables/ instead of
        # <base>.mindir; the graph loads under any name in that folder, so it gets the asked-for name
        if file_format == "MINDIR" and os.path.isfile(split_graph):
            os.replace(split_graph, out)
            return True
        return False
    except Exception as exc:
        op = _unsupported_op(exc)
        if op is None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ExportError(f"mindspore.export to {file_format} failed: {type(exc).__name__}: {first}") from exc
        inner = network.detector if isinstance(network, DecodedDetector) else network
        where = _blame(inner, sample, op) if file_format == "ONNX" else ""
        raise ExportError(f"cannot export to {file_format}: MindSpore {ms.__version__} has no {file_format} "
                          f"converter for the operator {op}{where}; export MINDIR instead, or replace that "
                          f"operator with a convertible formulation") from exc


def _place(written: str, out: str, external: bool) -> None:
    """Move a file written (and checked) in a temporary folder beside `out` into place: an
    interrupted or failed export leaves any earlier `out` as it was. The weights folder of a
    split MINDIR keeps its name (the graph names it), so it moves first; an earlier file's
    folder that the new file does not use is removed with the file it belonged to."""
    folder = external_data_folder(out)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    if external:
        os.replace(external_data_folder(written), folder)
    os.replace(written, out)


def run_exported(path: str, file_format: str, images: np.ndarray) -> list[np.ndarray]:
    """Outputs of an exported file on `images`: MINDIR via mindspore.load + nn.GraphCell, ONNX via onnxruntime."""
    if file_format == "MINDIR":
        cell = nn.GraphCell(ms.load(path))
        return [o.asnumpy() for o in cell(ms.Tensor(images))]
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})


def _describe_outputs(detector: nn.Cell, with_decode: bool) -> list[str]:
    scores = "scores (B, P, 1 + C) softmax, column 0 background"
    if with_decode:
        return ["boxes (B, P, 4) normalised corners x1 y1 x2 y2 in [0, 1]", scores]
    if isinstance(getattr(detector, "head", None), MultiBoxHead):
        return ["loc (B, P, 4) SSD offsets against the priors", scores]
    return [f"the outputs of {type(detector.head).__name__}.predict"]


def export_detector(detector: nn.Cell, cfg, out: str, file_format: str = "MINDIR", batch_size: int = 1,
                    with_decode: bool = False, verify: bool = True, config_path: str = "",
                    classes: list | None = None, use_winograd: bool | None = None,
                    winograd_min_channels: int = 128, winograd_tile: int | None = None) -> dict:
    """Export `detector` (weights loaded) to `out`; returns the metadata also written to `out`.json.

    `use_winograd` None follows `default_winograd` (MINDIR, CPU device, test.winograd), and
    `winograd_tile` None test.winograd_tile (the tiles are chosen for the exported input shape);
    a file with Winograd cells records the library they need as `custom_op_library` in the metadata.

    With `verify`, the prepared network (BN folded, ops rewritten) is compared with the detector
    on a random input before exporting, and the written file is run and compared again (relative
    to the largest output): above 1e-4 a warning, above 1e-3 an ExportError (see FAIL_TOLERANCE).
    For heads other than multibox, whose `predict` keeps a top-k, the network is compared on the
    head's outputs before `predict` and the file on its output shapes. The measured errors are
    part of the returned metadata. The sidecar also carries the resolved config and `classes`
    ([{"id", "name"}] in label order, from the checkpoint; src/model_info.py), so the file needs
    no --config or --names later.
    """
    file_format = file_format.upper()
    if file_format not in FORMATS:
        raise ExportError(f"unsupported format {file_format!r} (supported: {', '.join(FORMATS)})")
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    suffix = FORMATS[file_format]
    out = os.path.abspath(out if out.lower().endswith(suffix) else out + suffix)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    height, width = input_policy(cfg).canvas()
    sample = np.random.default_rng(0).uniform(-120, 120, (batch_size, 3, height, width)).astype(np.float32)

    if use_winograd is None:
        use_winograd = default_winograd(cfg, file_format, ms.get_context("device_target"))
    if winograd_tile is None:
        winograd_tile = configured_winograd_tile(cfg)
    network, changes = build_export_network(detector, cfg, file_format, with_decode, use_winograd,
                                            winograd_min_channels, winograd_tile, sample.shape)
    log.info("folded %d BatchNorms, rewrote %d cells for %s, %d Winograd convolutions", len(changes["folded_bn"]),
             len(changes["rewritten"]), file_format, len(changes["winograd"]))
    prepared = [o.asnumpy() for o in network(ms.Tensor(sample))]
    # the multibox head's outputs are one row per prior; other heads' predict() keeps a top-k,
    # whose order float rounding may change among near-ties, so those are compared before predict()
    elementwise = isinstance(getattr(detector, "head", None), MultiBoxHead)
    prepared_err = file_err = None
    if verify:
        if elementwise:
            expected = reference_outputs(detector, sample, cfg, with_decode)
            prepared_err = _check(expected, prepared, "the folded/rewritten export network")
        else:
            prepared_err = _check(head_outputs(detector, sample), head_outputs(network, sample),
                                  "the folded/rewritten export network (head outputs before predict)")
    # written and checked in a folder beside `out`, then moved into place (_place)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out), prefix=temp_name_prefix(out)) as tmp:
        written = os.path.join(tmp, os.path.basename(out))
        external = _export(network, sample, written, file_format)
        if verify:
            got = run_exported(written, file_format, sample)
            if elementwise:
                file_err = _check(expected, got, f"the exported {out}")
            elif [list(np.shape(o)) for o in got] != [list(o.shape) for o in prepared]:
                raise ExportError(f"the exported {out} gives outputs of shapes {[list(np.shape(o)) for o in got]}, "
                                  f"the network {[list(o.shape) for o in prepared]}")
            else:
                log.info("%s outputs top-k selections: the written file was checked for output shapes only",
                         type(detector.head).__name__)
            log.info("export network within %.2g of the detector; written file within %s", prepared_err,
                     "n/a" if file_err is None else f"{file_err:.2g}")
        _place(written, out, external)
    meta = {
        "format": file_format,
        "file": os.path.basename(out),
        "config": config_path,
        "input_shape": [batch_size, 3, height, width],
        "input": "float32 NCHW, 0-255 minus data.mean (divided by data.std), BGR unless data.rgb, "
                 f"resized as data.resize_mode {cfg.data.resize_mode!r}",
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "rgb": bool(cfg.data.rgb),
        "with_decode": bool(with_decode),
        "outputs": _describe_outputs(detector, with_decode),
        "output_shapes": [list(o.shape) for o in prepared],
        "num_classes": int(cfg.model.num_classes),       # object classes (CONFIG_VERSION 2 on)
        "config_version": CONFIG_VERSION,
        "config_name": cfg.get("config_name", ""),
        # the multibox head's outputs have one row per prior: a config with other priors cannot decode them
        "num_priors": int(prepared[0].shape[1]) if elementwise else None,
        "folded_batchnorms": len(changes["folded_bn"]),
        "rewritten_cells": changes["rewritten"],
        "winograd_convolutions": len(changes["winograd"]),
        "winograd_tiles": winograd.describe(network),
        # MindSpore opens the custom operators' library at this path when the graph first runs
        "custom_op_library": winograd.LIBRARY if changes["winograd"] else None,
        # a MINDIR above 1 GB keeps its weights in this folder beside it: copy both together
        "external_data": os.path.basename(external_data_folder(out)) if external else None,
        "max_relative_error": {"export_network": prepared_err, "file": file_err},
        "mindspore": ms.__version__,
        **sidecar_entries(cfg, classes),
    }
    write_json_atomic(out + ".json", meta, indent=2)
    return meta
