"""The exported MINDIR runs the checkpoint path's network: BatchNorm folded and the wide 3x3
convolutions by Winograd F(4x4, 3x3) / F(2x2, 3x3) by map size (issue 18 item 4).

Independent truth: the detector's own outputs (direct convolutions, BatchNorm unfolded), the
list of eligible convolutions counted here from the network's layers, the node scopes written
into the file, and a fresh process that loads the file with mindspore.load + GraphCell only.
The network is tests/configs/tiny.yaml at a quarter VGG width, so that conv4/conv5 have the
128 channels from which Winograd applies.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from m2det import winograd
from src.builder import build_detector
from src.config import load_config
from src.export import ExportError, export_detector
from src.export.exporter import build_export_network, default_winograd, run_exported
from src.inference.model_files import predictor_from_mindir
from src.inference.predictor import PredictorError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.yaml")
WIDE = ["model.backbone.width=0.25"]


def setup_module():
    assert winograd.available(), f"{winograd.LIBRARY} missing: run `bash scripts/make.sh`"


def images(batch=1, seed=1):
    return np.random.default_rng(seed).uniform(-120, 120, (batch, 3, 128, 128)).astype(np.float32)


def calibrate(detector):
    """BatchNorm statistics and affines away from identity, so folding is really exercised."""
    rng = np.random.default_rng(0)
    for _, cell in detector.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            c = cell.num_features
            cell.moving_mean.set_data(ms.Tensor(rng.normal(0, 0.5, c).astype(np.float32)))
            cell.moving_variance.set_data(ms.Tensor(rng.uniform(0.5, 2.0, c).astype(np.float32)))
            cell.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, c).astype(np.float32)))
            cell.beta.set_data(ms.Tensor(rng.normal(0, 0.2, c).astype(np.float32)))
    detector.set_train(False)
    return detector


@pytest.fixture(scope="module")
def wide():
    cfg = load_config(TINY, WIDE)
    return cfg, calibrate(build_detector(cfg))


def wide_3x3(detector, min_channels=128):
    """Paths of the 3x3 / stride 1 / padding 1 / dilation 1 / ungrouped convolutions with >= 128
    channels in and out, read off the layers here (not with winograd.eligible)."""
    out = []
    for name, c in detector.cells_and_names():
        if (isinstance(c, nn.Conv2d) and tuple(c.kernel_size) == (3, 3) and tuple(c.stride) == (1, 1)
                and tuple(c.dilation) == (1, 1) and c.group == 1 and c.in_channels >= min_channels
                and c.out_channels >= min_channels and (c.pad_mode == "same" or c.padding in (1, (1, 1, 1, 1)))):
            out.append(name)
    return out


def backbone_map_sides(detector, size=128):
    """{path: input side} of the VGG backbone's convolutions: each stride-2 pool halves the side."""
    sides, side = {}, size
    for i, layer in enumerate(detector.backbone.layers):
        if isinstance(layer, nn.MaxPool2d) and int(np.atleast_1d(layer.stride)[-1]) == 2:
            side = -(-side // 2)
        elif isinstance(layer, nn.Conv2d):
            sides[f"backbone.layers.{i}"] = side
    return sides


def tile_paths(detector):
    """{4: paths, 2: paths} by test.winograd_tile 4's rule, from the backbone's map sides: F(4x4)
    from 64 channels at >= 16 px, F(2x2) from 128 channels at 6-15 px (this network's wide
    convolutions are all in the backbone)."""
    sides = backbone_map_sides(detector)
    assert set(wide_3x3(detector, 64)) <= set(sides)
    return {4: [p for p in wide_3x3(detector, 64) if sides[p] >= 16],
            2: [p for p in wide_3x3(detector, 128) if 6 <= sides[p] < 16]}


def scopes(path, kind):
    """Names of the cells whose scope holds a node of `kind` in the MINDIR (its node names are
    "Default/<path>-<CellClass>/<Op>-opN", readable in the protobuf)."""
    data = open(path, "rb").read()
    return set(re.findall(rb"Default/([\w./-]+?)/" + kind.encode() + rb"-op\d+", data))


def test_mindir_has_winograd_where_it_applies_and_the_detector_outputs(wide, tmp_path):
    cfg, detector = wide
    expected_paths = tile_paths(detector)[4] + tile_paths(detector)[2]
    assert len(expected_paths) >= 6                     # conv3_2 .. conv4_3 F(4x4), conv5_x F(2x2) at this width
    out = tmp_path / "wide.mindir"
    meta = export_detector(detector, cfg, str(out), "MINDIR", batch_size=2)   # defaults: test.winograd on
    assert meta["winograd_convolutions"] == len(expected_paths)
    assert meta["custom_op_library"] == winograd.LIBRARY
    assert json.loads((tmp_path / "wide.mindir.json").read_text())["custom_op_library"] == winograd.LIBRARY
    fast = {s.decode() for s in scopes(str(out), "Custom")}
    assert len(fast) == len(expected_paths) and all("WinogradConv2d" in s for s in fast)
    # every remaining direct convolution is one Winograd does not apply to
    total_convs = sum(isinstance(c, nn.Conv2d) for _, c in detector.cells_and_names())
    assert len(scopes(str(out), "Conv2D")) == total_convs - len(expected_paths)
    x = images(2, seed=5)
    want = [o.asnumpy() for o in detector(ms.Tensor(x))]
    got = run_exported(str(out), "MINDIR", x)
    for a, b in zip(want, got):
        assert a.shape == b.shape
        assert np.abs(a - b).max() / max(1.0, np.abs(a).max()) < 1e-4


def test_fresh_process_loads_and_runs_the_mindir(wide, tmp_path):
    cfg, detector = wide
    out = tmp_path / "fresh.mindir"
    export_detector(detector, cfg, str(out), "MINDIR", batch_size=1, with_decode=True)
    assert b"WinogradF43Input" in out.read_bytes()              # test.winograd_tile 4 (the default)
    x = images(1, seed=7)
    np.save(tmp_path / "x.npy", x)
    want = [o.asnumpy() for o in build_export_network(detector, cfg, "MINDIR", with_decode=True)[0](ms.Tensor(x))]
    code = ("import sys, numpy as np, mindspore as ms, mindspore.nn as nn\n"
            "ms.set_context(mode=ms.GRAPH_MODE, device_target='CPU')\n"
            "cell = nn.GraphCell(ms.load(sys.argv[1]))\n"
            "out = cell(ms.Tensor(np.load(sys.argv[2])))\n"
            "np.savez(sys.argv[3], *[o.asnumpy() for o in out])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npz")],
                          cwd=str(tmp_path), env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(tmp_path / "y.npz")
    for i, a in enumerate(want):
        np.testing.assert_allclose(got[f"arr_{i}"], a, rtol=0, atol=1e-4 * max(1.0, float(np.abs(a).max())))


def test_mindir_tiles_follow_test_winograd_tile(wide, tmp_path):
    cfg, detector = wide
    x = images(2, seed=9)
    want = [o.asnumpy() for o in detector(ms.Tensor(x))]
    kernels = {}
    for tile in (4, 2):
        out = tmp_path / f"tile{tile}.mindir"
        meta = export_detector(detector, load_config(TINY, WIDE + [f"test.winograd_tile={tile}"]), str(out),
                               "MINDIR", batch_size=2)
        assert meta["winograd_convolutions"] == (len(wide_3x3(detector)) if tile == 2 else
                                                 len(tile_paths(detector)[4] + tile_paths(detector)[2]))
        kernels[tile] = set(re.findall(rb"_winograd_f23\.so:(Winograd\w+)", out.read_bytes()))
        for a, b in zip(want, run_exported(str(out), "MINDIR", x)):
            assert np.abs(a - b).max() / max(1.0, np.abs(a).max()) < 1e-4
        tiles = meta["winograd_tiles"]
        counts = {t: len(paths) for t, paths in tile_paths(detector).items()}
        assert tiles == (f"F(4x4, 3x3): {counts[4]}, F(2x2, 3x3): {counts[2]}" if tile == 4
                         else f"F(2x2, 3x3): {len(wide_3x3(detector))}")
    assert kernels[4] == {b"WinogradF43Input", b"WinogradF43Output", b"WinogradInput", b"WinogradOutput"}
    assert kernels[2] == {b"WinogradInput", b"WinogradOutput"}


def test_a_mindir_with_external_weights_gets_the_asked_for_name(wide, tmp_path, monkeypatch):
    # above 1 GB of weights (M2Det-320 VGG with F(4x4, 3x3): 1.1 GB) mindspore.export writes
    # <name>_graph.mindir + <name>_variables/; simulated here on a small file by moving the real
    # export's output where MindSpore puts a split one
    import src.export.exporter as exporter

    real_export = exporter.ms.export

    def split_export(network, *inputs, file_name, file_format):
        real_export(network, *inputs, file_name=file_name, file_format=file_format)
        os.replace(file_name + ".mindir", file_name + "_graph.mindir")
        os.makedirs(file_name + "_variables")

    cfg, detector = wide
    (tmp_path / "big_graph.mindir").write_bytes(b"someone else's")  # written elsewhere: left alone
    monkeypatch.setattr(exporter.ms, "export", split_export)
    meta = export_detector(detector, cfg, str(tmp_path / "big.mindir"), "MINDIR", batch_size=1)
    assert meta["external_data"] == "big_variables"
    assert json.loads((tmp_path / "big.mindir.json").read_text())["external_data"] == "big_variables"
    assert (tmp_path / "big_variables").is_dir() and (tmp_path / "big_graph.mindir").read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.mindir", "big.mindir.json", "big_graph.mindir",
                                                          "big_variables"]
    monkeypatch.setattr(exporter.ms, "export", real_export)
    meta = export_detector(detector, cfg, str(tmp_path / "small.mindir"), "MINDIR", batch_size=1, verify=False)
    assert meta["external_data"] is None
    x = images(1, seed=3)
    for a, b in zip(run_exported(str(tmp_path / "small.mindir"), "MINDIR", x),
                    run_exported(str(tmp_path / "big.mindir"), "MINDIR", x)):
        np.testing.assert_array_equal(a, b)


def test_missing_library_is_a_clear_error(wide, tmp_path, monkeypatch):
    cfg, detector = wide
    library = tmp_path / "lib" / "_winograd_f23.so"
    library.parent.mkdir()
    shutil.copy(winograd.LIBRARY, library)
    monkeypatch.setattr(winograd, "LIBRARY", str(library))      # the graph records this path
    out = tmp_path / "moved.mindir"
    meta = export_detector(detector, cfg, str(out), "MINDIR", verify=False)
    assert meta["custom_op_library"] == str(library)
    shutil.rmtree(library.parent)                               # e.g. the package moved or uninstalled
    with pytest.raises(PredictorError, match=r"_winograd_f23\.so.*does not exist.*test\.winograd=false"):
        predictor_from_mindir(cfg, str(out))


def test_direct_convolutions_on_request_and_for_onnx(wide, tmp_path):
    cfg, detector = wide
    direct_cfg = load_config(TINY, WIDE + ["test.winograd=false"])
    meta = export_detector(detector, direct_cfg, str(tmp_path / "direct.mindir"), "MINDIR", verify=False)
    assert meta["winograd_convolutions"] == 0 and meta["custom_op_library"] is None
    assert not scopes(str(tmp_path / "direct.mindir"), "Custom")
    predictor_from_mindir(direct_cfg, str(tmp_path / "direct.mindir"))      # nothing to check for
    assert default_winograd(cfg, "MINDIR", "CPU")
    assert not default_winograd(cfg, "MINDIR", "GPU") and not default_winograd(cfg, "ONNX", "CPU")
    meta = export_detector(detector, cfg, str(tmp_path / "wide.onnx"), "ONNX", verify=False)
    assert meta["winograd_convolutions"] == 0 and meta["custom_op_library"] is None
    with pytest.raises(ExportError, match="custom operators.*ONNX"):
        export_detector(detector, cfg, str(tmp_path / "forced.onnx"), "ONNX", use_winograd=True)


def test_vfnet_with_star_dcn_exports_with_winograd(tmp_path):
    """VFNet's head has a deformable convolution (MINDIR only); Winograd cells sit beside it."""
    cfg = load_config(os.path.join(ROOT, "configs", "m2det_lite_vfnet.yaml"), ["model.neck.mlfpn.num_levels=2"])
    detector = calibrate(build_detector(cfg))
    out = tmp_path / "vfnet.mindir"
    meta = export_detector(detector, cfg, str(out), "MINDIR", winograd_min_channels=8)
    assert meta["winograd_convolutions"] == len(scopes(str(out), "Custom")) > 0
    assert meta["custom_op_library"] == winograd.LIBRARY
    size = cfg.model.input_size
    x = np.random.default_rng(3).uniform(-120, 120, (1, 3, size, size)).astype(np.float32)
    got = run_exported(str(out), "MINDIR", x)
    assert [list(o.shape) for o in got] == meta["output_shapes"]


def test_a_mindir_without_its_weights_folder_is_refused_by_name(tmp_path):
    from src.inference.predictor import check_external_data

    path = str(tmp_path / "big.mindir")
    check_external_data(path, {"external_data": None})                    # weights inside the file
    with pytest.raises(PredictorError, match=r"big\.mindir keeps its weights in the folder big_variables/ .*copy"):
        check_external_data(path, {"external_data": "big_variables"})
    (tmp_path / "big_variables").mkdir()
    check_external_data(path, {"external_data": "big_variables"})


def test_a_winograd_mindir_is_refused_off_cpu():
    from src.inference.predictor import check_custom_op_library

    check_custom_op_library("m.mindir", {"custom_op_library": winograd.LIBRARY}, "CPU")
    check_custom_op_library("m.mindir", {"custom_op_library": None}, "GPU")        # direct convolutions
    with pytest.raises(PredictorError, match=r"m\.mindir .*CPU custom operators.*--device_target GPU"):
        check_custom_op_library("m.mindir", {"custom_op_library": winograd.LIBRARY}, "GPU")


def test_a_failed_export_leaves_the_earlier_file_whole(wide, tmp_path, monkeypatch):
    # the file is written and checked in a folder beside it and moved into place at the end
    import src.export.exporter as exporter

    cfg, detector = wide
    out = tmp_path / "m.mindir"
    export_detector(detector, cfg, str(out), "MINDIR", batch_size=1, verify=False)
    before = out.read_bytes()

    def half_written(network, *inputs, file_name, file_format):
        with open(file_name + ".mindir", "wb") as f:
            f.write(before[: len(before) // 2])
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(exporter.ms, "export", half_written)
    with pytest.raises(ExportError, match="No space left on device"):
        export_detector(detector, cfg, str(out), "MINDIR", batch_size=1, verify=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mindir", "m.mindir.json"]
