"""Every convolution and max-pool shape of a config's network, forward + backward, MindSpore
against PyTorch, one layer at a time (issue 18 item 3).

    .venv/bin/python bench/bench_narrow_layers.py                     # m2det_lite, batch 8, 2 threads
    .venv/bin/python bench/bench_narrow_layers.py --reps 9 --json out.json

The shapes come from forward hooks on the config's Detector (PyNative, one image; the batch is
then `--batch`). Per shape, alternating round-robin (bench/harness.py `alternate`), medians of
`--reps` calls after one untimed call:

    ms        MindSpore GRAPH mode, nn.Conv2d / nn.MaxPool2d as the network has it: loss sum(y * r),
              gradients of the input and the weight (what a train step computes)
    ms_direct "ours": the same with m2det.direct_conv.DirectConv3x3 (our C kernels) for the shapes
              it takes (3x3, stride 1, padding 1, when the library is built), or with
              m2det.matmul_conv.MatmulConv2d (MatMuls) for unpadded 1x1 and kernel-sized ones
    torch     PyTorch eager, the same layer (weights, padding, ceil mode), the same gradients

"count" is how many layers of the network have the shape; "x count" columns are per step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def layer_shapes(cfg) -> list[dict]:
    """The distinct convolution / max-pool layers of the config's detector: kind, settings,
    input shape (C, H, W), and how many layers share them."""
    import mindspore as ms
    import mindspore.nn as nn
    import numpy as np

    from src.builder import build_detector

    detector = build_detector(cfg)
    seen: dict = {}

    def hook(cell, inputs, output):
        c, h, w = tuple(inputs[0].shape[1:])
        if isinstance(cell, nn.Conv2d):
            padding = cell.padding if isinstance(cell.padding, tuple) else (cell.padding,) * 4
            key = ("conv", c, cell.out_channels, h, w, tuple(cell.kernel_size), tuple(cell.stride),
                   tuple(padding), tuple(cell.dilation), cell.has_bias)
        else:
            key = ("pool", c, c, h, w, int(cell.kernel_size if isinstance(cell.kernel_size, int) else cell.kernel_size[0]),
                   int(cell.stride if isinstance(cell.stride, int) else cell.stride[0]), str(cell.pad_mode),
                   tuple(output.shape[2:]))
        seen[key] = seen.get(key, 0) + 1

    handles = [cell.register_forward_hook(hook) for _, cell in detector.cells_and_names()
               if isinstance(cell, (nn.Conv2d, nn.MaxPool2d))]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    detector.set_train(False)
    detector(ms.Tensor(np.zeros((1, 3, cfg.model.input_size, cfg.model.input_size), np.float32)))
    for handle in handles:
        handle.remove()
    ms.set_context(mode=ms.GRAPH_MODE)
    return [{"key": key, "count": count} for key, count in seen.items()]


def _label(key) -> str:
    if key[0] == "conv":
        _, c, k, h, w, ks, stride, padding, dilation, _ = key
        extra = ("" if dilation == (1, 1) else f" dil {dilation[0]}") + f" pad {padding[0]}"
        return f"conv {ks[0]}x{ks[1]}/{stride[0]} {c}->{k} at {h}x{w}{extra}"
    _, c, _, h, w, ks, stride, mode, out = key
    return f"maxpool {ks}/{stride} {mode} {c} at {h}x{w} -> {out[0]}x{out[1]}"


def cases(key, batch: int, seed: int = 0):
    """{variant: callable} for one layer shape: forward + backward in each framework."""
    import mindspore as ms
    import mindspore.nn as nn
    import numpy as np
    import torch

    from m2det import direct_conv, matmul_conv

    rng = np.random.default_rng(seed)
    c, h, w = key[1], key[3], key[4]
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)

    class WeightedSum(nn.Cell):
        def __init__(self, net, r):
            super().__init__()
            self.net, self.r = net, r

        def construct(self, x):
            return (self.net(x) * self.r).sum()

    if key[0] == "conv":
        _, c, k, h, w, ks, stride, padding, dilation, bias = key
        weight = (rng.standard_normal((k, c) + ks) * 0.1).astype(np.float32)
        ms_layer = nn.Conv2d(c, k, ks, stride=stride, pad_mode="pad", padding=padding, dilation=dilation,
                             has_bias=bias, weight_init=ms.Tensor(weight))
        t_layer = torch.nn.Conv2d(c, k, ks, stride=stride, padding=(padding[0], padding[2]), dilation=dilation,
                                  bias=bias)
        with torch.no_grad():
            t_layer.weight.copy_(torch.from_numpy(weight))
    else:
        _, c, _, h, w, ks, stride, mode, out = key
        if mode == "VALID":
            ms_layer = nn.MaxPool2d(ks, stride)
            t_layer = torch.nn.MaxPool2d(ks, stride)
        else:        # the network's two padded pools: ceil mode (pad 0) and the 3x3/1 pool (pad 1)
            pad = 1 if ks == 3 else 0
            ms_layer = nn.MaxPool2d(ks, stride, pad_mode="pad", padding=pad, ceil_mode=pad == 0)
            t_layer = torch.nn.MaxPool2d(ks, stride, padding=pad, ceil_mode=pad == 0)
    with torch.no_grad():
        out_shape = tuple(t_layer(torch.from_numpy(x)).shape)
    r = rng.standard_normal(out_shape).astype(np.float32)

    def mindspore_case(layer):
        weights = list(layer.trainable_params())
        grad = ms.jit(ms.value_and_grad(WeightedSum(layer, ms.Tensor(r)), grad_position=0, weights=weights or None))
        inputs = ms.Tensor(x)

        def run():
            value, grads = grad(inputs)
            value.asnumpy()
            return grads
        return run

    tx, tr = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(r)

    def torch_case():
        tx.grad = None
        t_layer.zero_grad(set_to_none=True)
        (t_layer(tx) * tr).sum().backward()

    out = {"ms": mindspore_case(ms_layer), "torch": torch_case}
    if key[0] == "conv" and direct_conv.available() and direct_conv.eligible(ms_layer, 1 << 30):
        out["ms_direct"] = mindspore_case(direct_conv.DirectConv3x3(ms_layer.weight, ms_layer.bias if bias else None))
    elif key[0] == "conv" and matmul_conv.eligible(ms_layer, 1 << 30) and (ks == (1, 1) or ks == (h, w)):
        out["ms_direct"] = mindspore_case(matmul_conv.MatmulConv2d(ms_layer))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/m2det_lite.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides a.b=v")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)

    import mindspore as ms

    from bench import harness as H
    from src.config import load_config

    H.set_threads(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    cfg = load_config(os.path.join(ROOT, args.config) if not os.path.isabs(args.config) else args.config, args.set)
    print(H.machine_description(), flush=True)
    rows = []
    totals = {"ms": 0.0, "ms_direct": 0.0, "torch": 0.0}
    print("| layer | count | MindSpore ms | ours ms | PyTorch ms | MS/PT | ours/PT | x count: MS, ours, PT |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in layer_shapes(cfg):
        variants = cases(shape["key"], args.batch)
        times = H.alternate(list(variants.items()), reps=args.reps, warmup=1)
        row = {"layer": _label(shape["key"]), "count": shape["count"]}
        row.update({f"{name}_ms": 1e3 * H.median(t) for name, t in times.items()})
        for name in totals:     # a variant the shape has not: the network's own layer
            totals[name] += shape["count"] * row.get(f"{name}_ms", row["ms_ms"])
        rows.append(row)
        ours = row.get("ms_direct_ms")
        ours_ratio = "-" if ours is None else f"{ours / row['torch_ms']:.2f}"
        print(f"| {row['layer']} | {row['count']} | {row['ms_ms']:.2f} | {'-' if ours is None else f'{ours:.2f}'} | "
              f"{row['torch_ms']:.2f} | {row['ms_ms'] / row['torch_ms']:.2f} | "
              f"{ours_ratio} | "
              f"{row['count'] * row['ms_ms']:.1f}, {row['count'] * (ours or row['ms_ms']):.1f}, "
              f"{row['count'] * row['torch_ms']:.1f} |", flush=True)
    print(f"\nsum over the network's layers (fwd + bwd, batch {args.batch}): MindSpore {totals['ms']:.1f} ms, "
          f"with ours where eligible {totals['ms_direct']:.1f} ms, PyTorch {totals['torch']:.1f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "totals": totals, "argv": sys.argv}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
