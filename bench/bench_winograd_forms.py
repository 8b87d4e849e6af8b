"""Which form of Winograd (F(2x2, 3x3) or F(4x4, 3x3)) a deployable MINDIR should carry (issue 18 item 4).

    .venv/bin/python bench/bench_winograd_forms.py                 # M2Det-320's layer shapes, 7 reps
    .venv/bin/python bench/bench_winograd_forms.py --shapes 512x40 2048x486x40 --forms direct custom custom_f43
    .venv/bin/python bench/bench_winograd_forms.py --network configs/m2det320_vgg.yaml --reps 5

One 3x3 convolution C -> C (stride 1, padding 1, bias) on a (1, C, S, S) input, in GRAPH mode,
2 threads, the forms alternating round-robin (bench/harness.alternate), medians:

    direct          nn.Conv2d (oneDNN)
    custom          m2det.winograd.WinogradConv2d: the transforms as "aot" custom operators in C
                    (m2det/kernels/winograd_f23.c), F(2x2, 3x3)
    custom_f43      the same cell with tile=4: F(4x4, 3x3) (m2det/kernels/winograd_f43.c)
    graph_slices    the transforms in standard operators: pad, strided slices and adds (both
                    transforms are separable, 4 slices + 4 adds per axis), BatchMatMul, transpose
    graph_conv      the input transform as a fixed 4x4 stride-2 depthwise convolution (16 outputs per
                    channel) + transpose, the output transform as one (4 x 16) matmul + transpose

and, to see where the time goes, the custom transforms and the 16 (F(4x4): 36) matmuls alone
(`--forms` picks the forms; the parts follow their form). `--shapes CxKxS` times C -> K. Every form is
first checked against the direct convolution (max relative error printed). The standard-operator
forms export to any MindSpore runtime and to ONNX; they only pay if they beat `direct`.

`--network CONFIG` times the whole forward instead (batch 1, random weights, BatchNorm folded as
in the inference network), the eligible convolutions (m2det.winograd.eligible, >= 128 channels)
in each form, alternating; the scores are compared with the direct network's.

OMP_WAIT_POLICY defaults to PASSIVE here, as in bench_vs_torch.py: the C transforms are OpenMP
loops, and with libgomp's default spinning barriers their threads keep spinning after each
transform and take the 2 cores from the matmuls that follow. On the shared machine this made the
custom form 1.63x the direct network's time instead of 0.90x (docs/BENCHMARKS.md, "The deployable
model"); set OMP_WAIT_POLICY in the environment to compare.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")      # read when libgomp starts: before any kernel runs
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402
import mindspore.nn as nn  # noqa: E402
import mindspore.ops as ops  # noqa: E402

from bench import harness as H  # noqa: E402
from m2det import winograd as W  # noqa: E402

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# M2Det-320 VGG's eligible layers: conv2_2, conv3_x, conv4_x, conv5_x and the TUMs' widest
SHAPES = ("128x160", "256x80", "512x40", "512x20", "256x20")


def _pad_to_tiles(x, th, tw):
    h, w = x.shape[-2:]
    return ops.pad(x, (1, 2 * tw + 1 - w, 1, 2 * th + 1 - h))


class GraphSlicesConv(nn.Cell):
    """Winograd with both transforms as strided slices and adds (batch 1)."""

    def __init__(self, weight, bias):
        super().__init__()
        self.k = weight.shape[0]
        self.u = ms.Tensor(W.transform_weight(weight))
        self.bias = ms.Tensor(bias.reshape(1, 1, -1, 1, 1))
        self.matmul = ops.BatchMatMul()

    def construct(self, x):
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        th, tw = (h + 1) // 2, (w + 1) // 2
        x = _pad_to_tiles(x[0], th, tw)                                   # (C, Hp, Wp)
        d0, d1, d2, d3 = (x[:, a:a + 2 * th - 1:2, :] for a in range(4))
        t = ops.stack((d0 - d2, d1 + d2, d2 - d1, d1 - d3))              # (4, C, Th, Wp)
        e0, e1, e2, e3 = (t[..., b:b + 2 * tw - 1:2] for b in range(4))
        v = ops.stack((e0 - e2, e1 + e2, e2 - e1, e1 - e3), axis=1).reshape(16, c, th * tw)
        q = self.matmul(self.u, v).reshape(4, 4, self.k, th, tw)
        q0, q1, q2, q3 = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
        r = ops.stack((q0 + q1 + q2, q1 - q2 - q3), axis=1)              # (4, 2, K, Th, Tw)
        y = ops.stack((r[0] + r[1] + r[2], r[1] - r[2] - r[3])) + self.bias
        y = ops.transpose(y, (2, 3, 0, 4, 1)).reshape(1, self.k, 2 * th, 2 * tw)
        return y[:, :, :h, :w]


class GraphConvConv(nn.Cell):
    """Winograd with the input transform as a depthwise 4x4 / stride-2 convolution and the output
    transform as one matmul (batch 1)."""

    def __init__(self, weight, bias):
        super().__init__()
        self.k, c = weight.shape[:2]
        self.u = ms.Tensor(W.transform_weight(weight))
        self.bias = ms.Tensor(bias.reshape(1, 1, -1, 1, 1))
        pattern = np.einsum("ia,jb->ijab", BT, BT).reshape(16, 1, 4, 4)      # output 4i + j
        self.patterns = ms.Tensor(np.tile(pattern, (c, 1, 1, 1)))
        self.depthwise = ops.Conv2D(16 * c, 4, pad_mode="valid", stride=2, group=c)
        self.a = ms.Tensor(np.einsum("ri,cj->rcij", AT, AT).reshape(4, 16))
        self.matmul = ops.BatchMatMul()

    def construct(self, x):
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        th, tw = (h + 1) // 2, (w + 1) // 2
        v = self.depthwise(_pad_to_tiles(x, th, tw), self.patterns)      # (1, 16C, Th, Tw), channel 16c + xi
        v = ops.transpose(v.reshape(c, 16, th * tw), (1, 0, 2))
        m = self.matmul(self.u, v).reshape(16, -1)
        y = ops.matmul(self.a, m).reshape(2, 2, self.k, th, tw) + self.bias
        y = ops.transpose(y, (2, 3, 0, 4, 1)).reshape(1, self.k, 2 * th, 2 * tw)
        return y[:, :, :h, :w]


def _f43(weight, bias):
    return W.WinogradConv2d(weight, bias, tile=4)


FORMS = {"custom": W.WinogradConv2d, "custom_f43": _f43, "graph_slices": GraphSlicesConv, "graph_conv": GraphConvConv}


def network_forms(cfg, names=tuple(FORMS)) -> dict:
    """{form: the folded detector with its eligible convolutions in that form}."""
    import copy

    from m2det.cells import refresh_parameter_names, replace_child, walk
    from src.builder import build_detector
    from src.inference.fast_network import inference_network

    detector = build_detector(cfg)
    H.randomize_batchnorm(detector)
    direct = inference_network(detector, fold_bn=True, use_winograd=False, device_target="CPU")
    forms = {"direct": direct}
    for name, make in ((name, FORMS[name]) for name in names):
        network = copy.deepcopy(direct)
        for parent, child_name, child in walk(network):
            if W.eligible(child):
                replace_child(parent, child_name, make(child.weight.asnumpy(), child.bias.asnumpy()))
        refresh_parameter_names(network)
        network.set_train(False)
        forms[name] = network
    return forms


def network_rows(path: str, reps: int, names=tuple(FORMS)) -> list[list]:
    from src.config import load_config

    cfg = load_config(path)
    forms = network_forms(cfg, names)
    size = cfg.model.input_size
    x = ms.Tensor(np.random.default_rng(1).uniform(-120, 120, (1, 3, size, size)).astype(np.float32))
    expected = forms["direct"](x)[1].asnumpy()
    errors = {name: float(np.abs(net(x)[1].asnumpy() - expected).max()) for name, net in forms.items()}
    times = H.alternate([(name, (lambda net=net: net(x)[1].asnumpy())) for name, net in forms.items()], reps, warmup=0)
    return [[cfg.config_name, name, f"{1e3 * H.median(times[name]):.1f}",
             f"{H.median(times[name]) / H.median(times['direct']):.2f}", f"{errors[name]:.1e}",
             " / ".join(f"{1e3 * t:.0f}" for t in times[name])] for name in forms]


class _Matmuls(nn.Cell):
    """The 16 products U V of a WinogradConv2d alone."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, v):
        return self.cell.matmul(self.cell.u, v)


class _OutputTransform(nn.Cell):
    """The output transform (+ bias) of a WinogradConv2d alone; `like` gives the output's shape."""

    def __init__(self, cell, like):
        super().__init__()
        self.cell, self.like = cell, like

    def construct(self, m):
        return self.cell.output_transform(m, self.cell.bias, self.like)


def layer_row(c: int, k: int, size: int, reps: int, names=tuple(["direct", *FORMS])) -> dict:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    x = ms.Tensor(rng.standard_normal((1, c, size, size)).astype(np.float32))
    forms = {"direct": nn.Conv2d(c, k, 3, pad_mode="pad", padding=1, has_bias=True, weight_init=ms.Tensor(weight),
                                 bias_init=ms.Tensor(bias))}
    forms.update({name: make(weight, bias) for name, make in FORMS.items() if name in names})
    parts = {}
    for name in ("custom", "custom_f43"):
        if name in forms:
            cell = forms[name]
            v = cell.input_transform(x)
            m = ms.Tensor(cell.matmul(cell.u, v).asnumpy())
            suffix = "" if name == "custom" else "_f43"
            parts.update({f"custom_input_transform{suffix}": (cell.input_transform, x),
                          f"matmuls{suffix}": (_Matmuls(cell), ms.Tensor(v.asnumpy())),
                          f"custom_output_transform{suffix}": (_OutputTransform(cell, x), m)})
    expected = forms["direct"](x).asnumpy()
    row = {"shape": f"1x{c}x{size}x{size}" + (f" -> {k}" if k != c else ""), "parts": list(parts)}
    for name, cell in forms.items():
        got = cell(x).asnumpy()
        row[f"{name}_rel_err"] = float(np.abs(got - expected).max() / np.abs(expected).max())
    cases = [(name, (lambda cell=cell: cell(x).asnumpy())) for name, cell in forms.items()]
    cases += [(name, (lambda cell=cell, t=t: cell(t).asnumpy())) for name, (cell, t) in parts.items()]
    times = H.alternate(cases, reps=reps, warmup=1)
    for name, _ in cases:
        row[f"{name}_ms"] = 1e3 * H.median(times[name])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES),
                        help="CxS: C channels in and out, S x S input; CxKxS: C in, K out")
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS),
                        help="the forms besides direct (default all)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--network", help="a config: time its whole forward in each form instead")
    args = parser.parse_args(argv)
    H.set_threads(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    print(H.machine_description(), f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
    if args.network:
        print(H.markdown_table(["config", "form", "forward ms", "/ direct", "max |score - direct|", "repetitions ms"],
                               network_rows(args.network, args.reps, args.forms)))
        print(f"load average at the end: {os.getloadavg()[0]:.2f}; medians of {args.reps} alternating repetitions")
        return 0
    rows = []
    for shape in args.shapes:
        sizes = [int(v) for v in shape.split("x")]
        c, k, size = sizes if len(sizes) == 3 else (sizes[0], sizes[0], sizes[1])
        rows.append(layer_row(c, k, size, args.reps, ["direct", *args.forms]))
        print(rows[-1], flush=True)
    names = ["direct", *args.forms] + rows[0]["parts"]
    body = [[r["shape"]] + [f"{r[n + '_ms']:.1f}" for n in names]
            + [f"{max(r[k] for k in r if k.endswith('_rel_err')):.1e}"] for r in rows]
    print(H.markdown_table(["conv C -> C"] + [n + " ms" for n in names] + ["max rel. err"], body))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load:.2f}; medians of {args.reps} alternating repetitions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
