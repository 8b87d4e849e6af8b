"""Shared pieces of the MindSpore-vs-PyTorch benchmarks (issue 8).

    config --build_pair--> (our Detector, the PyTorch reference M2Det of tests/reference) with the
    same weights --alternate--> interleaved timings --median--> ratios and GFLOP/s

What is compared is the same architecture with the same weights: the PyTorch model is
`tests/reference/torch_m2det.py` (the official release's layout) and the weights are copied
from our network through the checkpoint converter's name map (`src.convert.names`), so a
renamed parameter breaks the benchmark instead of silently benchmarking something else.

Timing rules, because the machine is usually shared: every case runs in the same process,
the cases alternate (round-robin, the order rotated each repetition so that neither framework
always runs right after the other), each call is timed to completion (`asnumpy()` /
a returned torch tensor), and the reported figure is the median.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Sequence

import numpy as np

_THREADS: dict = {}


def set_threads(num_threads: int) -> dict:
    """Give PyTorch and MindSpore the same number of CPU threads; returns what was set.

    MindSpore 2.8: `mindspore.device_context.cpu.op_tuning.threads_num(n)` (the thread pool
    of CPU kernels, oneDNN convolutions included; it replaces the deprecated
    `set_context(runtime_num_threads=n)` and may be set once per process). PyTorch:
    `torch.set_num_threads(n)` (intra-op) and one inter-op thread.
    """
    if _THREADS:
        if _THREADS["threads"] != num_threads:
            raise RuntimeError(f"threads already set to {_THREADS['threads']} in this process")
        return dict(_THREADS)
    import mindspore as ms
    import torch

    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:          # inter-op threads can only be set before the first parallel op
        pass
    ms.device_context.cpu.op_tuning.threads_num(num_threads)
    _THREADS.update(threads=num_threads, torch_intra_op=torch.get_num_threads(),
                    torch_inter_op=torch.get_num_interop_threads(), mindspore_cpu_kernel_threads=num_threads)
    return dict(_THREADS)


def machine_description() -> str:
    """CPU model, cores, memory, library versions and the load average, for the report."""
    import platform

    import mindspore as ms
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError):
        mem_gib = float("nan")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB; Python {platform.python_version()}, "
            f"MindSpore {ms.__version__}, PyTorch {torch.__version__}, NumPy {np.__version__}; "
            f"load average {load:.2f}")


# ---------------------------------------------------------------- the PyTorch twin of a config

def reference_kwargs(cfg) -> dict:
    """Keyword arguments of `M2DetReference` for an M2Det config (VGG/ResNet + MLFPN + multibox)."""
    model = cfg.model
    if model.neck.name != "mlfpn" or model.head.name != "multibox":
        raise ValueError(f"{cfg.config_name}: the PyTorch reference is M2Det only (MLFPN + multibox head), "
                         f"not {model.neck.name} + {model.head.name}")
    if model.backbone.name not in ("vgg16", "resnet50", "resnet101"):
        raise ValueError(f"{cfg.config_name}: no PyTorch reference for backbone {model.backbone.name}")
    neck = model.neck.mlfpn
    if neck.get("tum_norm", "bn") != "bn":
        raise ValueError(f"{cfg.config_name}: the PyTorch reference's TUMs use BatchNorm, this config has "
                         f"model.neck.mlfpn.tum_norm={neck.tum_norm} (override it with model.neck.mlfpn.tum_norm=bn)")
    return dict(backbone=model.backbone.name, width=model.backbone.width, planes=neck.planes,
                num_levels=neck.num_levels, num_scales=neck.num_scales,
                # the release's num_classes counts the background (its softmax columns)
                base_channels=tuple(neck.base_channels), num_classes=model.num_classes + 1,
                input_size=model.input_size, sfam=neck.sfam, shared_leach=neck.shared_leach)


def build_reference(cfg, num_anchors: Sequence[int], phase: str = "test"):
    """The PyTorch reference M2Det for `cfg` (loc/conf convs rebuilt when levels have different
    anchor counts, which the release's single `num_anchors` cannot express)."""
    import torch.nn as tnn

    from tests.reference.torch_m2det import M2DetReference

    kwargs = reference_kwargs(cfg)
    net = M2DetReference(phase=phase, num_anchors=int(num_anchors[0]), **kwargs)
    if kwargs["backbone"] == "vgg16" and cfg.model.backbone.batch_norm:
        _add_vgg_batchnorm(net.base)
    if len(set(num_anchors)) > 1:
        ch = kwargs["planes"] * kwargs["num_levels"]
        net.loc = tnn.ModuleList([tnn.Conv2d(ch, 4 * a, 3, 1, 1) for a in num_anchors])
        net.conf = tnn.ModuleList([tnn.Conv2d(ch, kwargs["num_classes"] * a, 3, 1, 1) for a in num_anchors])
    return net


def _add_vgg_batchnorm(layers) -> None:
    """The "vgg16_bn" variant of our VGG16Reduced (model.backbone.batch_norm) on the reference's
    flat list: convolutions lose their bias and each ReLU becomes Sequential(BatchNorm2d, ReLU) at
    the same index, which is where ours keeps it (`layers.1.0.gamma`), so the names still map."""
    import torch.nn as tnn

    for i in range(len(layers) - 1):
        conv = layers[i]
        if isinstance(conv, tnn.Conv2d) and isinstance(layers[i + 1], tnn.ReLU):
            layers[i] = tnn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                   conv.dilation, bias=False)
            layers[i + 1] = tnn.Sequential(tnn.BatchNorm2d(conv.out_channels), tnn.ReLU(inplace=False))


def randomize_batchnorm(cell, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affines (biases too), so that none is a no-op and BN
    folding has something to fold. Variances stay near 1 so activations keep their scale."""
    import mindspore as ms

    rng = np.random.default_rng(seed)
    for p in cell.get_parameters():
        leaf = p.name.rsplit(".", 1)[-1]
        if leaf in ("moving_mean", "beta", "bias"):
            value = rng.normal(0, 0.1, p.shape)
        elif leaf in ("moving_variance", "gamma"):
            value = rng.uniform(0.8, 1.2, p.shape)
        else:
            continue
        p.set_data(ms.Tensor(value.astype(np.float32)))


def copy_weights_to_reference(detector, reference, shared_leach: bool = True) -> int:
    """Load `detector`'s parameters (BN statistics included) into `reference` through the
    converter's release name map (src/convert/names.py); every parameter must be used.
    Returns the number of tensors copied."""
    import torch

    from src.convert.names import BN_LEAF_RENAME, m2det_release_map

    name_map = m2det_release_map(shared_leach)
    params = {p.name: p for p in detector.get_parameters()}
    state = reference.state_dict()
    bn_modules = {k.rsplit(".", 1)[0] for k in state if k.endswith(".running_mean")}
    used, new_state = set(), {}
    for key, value in state.items():
        if name_map.is_dropped(key):
            new_state[key] = value
            continue
        name = name_map.target(key)
        module, _, leaf = key.rpartition(".")
        if module in bn_modules and leaf in BN_LEAF_RENAME:
            name = f"{name.rpartition('.')[0]}.{BN_LEAF_RENAME[leaf]}"
        if name not in params:
            raise KeyError(f"reference key {key} -> {name}: not a parameter of the detector")
        data = params[name].asnumpy()
        if tuple(data.shape) != tuple(value.shape):
            raise ValueError(f"{key} {tuple(value.shape)} vs {name} {tuple(data.shape)}")
        new_state[key] = torch.from_numpy(np.ascontiguousarray(data))
        used.add(name)
    reference.load_state_dict(new_state, strict=True)
    if used != set(params):
        raise KeyError(f"detector parameters with no reference counterpart: {sorted(set(params) - used)[:8]}")
    return len(used)


def build_pair(cfg, seed: int = 0):
    """(our Detector, the PyTorch reference with the same weights), both in inference mode."""
    import mindspore as ms
    import torch

    from src.builder import build_detector, build_priors

    ms.set_seed(seed)
    torch.manual_seed(seed)
    detector = build_detector(cfg)
    randomize_batchnorm(detector, seed)
    detector.set_train(False)
    reference = build_reference(cfg, build_priors(cfg).num_anchors(), "test").eval()
    copy_weights_to_reference(detector, reference, cfg.model.neck.mlfpn.shared_leach)
    return detector, reference


def folded_copy(detector):
    """An inference copy of `detector` with every conv -> BatchNorm pair folded (src/export/fold_bn.py)."""
    from src.inference.fast_network import inference_network

    return inference_network(detector, fold_bn=True, use_winograd=False, device_target="CPU")


def winograd_copy(detector, min_channels: int = 128, tile: int = 2, input_shape=None):
    """`folded_copy` with its eligible 3x3 convolutions by Winograd (m2det/winograd.py): F(2x2, 3x3),
    or with tile=4 F(4x4, 3x3) / F(2x2, 3x3) / direct by map size at `input_shape` (test.winograd_tile)."""
    from m2det.winograd import use_winograd

    network = folded_copy(detector)
    use_winograd(network, min_channels, tile=tile, input_shape=input_shape)
    network.set_train(False)
    return network


# ---------------------------------------------------------------- training step, both frameworks

def synthetic_targets(cfg, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(loc_t (B, P, 4), conf_t (B, P)) from a few random boxes per image, matched and encoded by
    the project's own target encoder, so that both frameworks see realistic positives."""
    from heads.assigners.max_iou import MaxIoUAssigner
    from heads.box_coder import SSDBoxCoder
    from src.builder import build_priors
    from src.data.targets import SSDTargetEncoder

    priors = build_priors(cfg).boxes()
    encoder = SSDTargetEncoder(priors, SSDBoxCoder(cfg.priors.variance),
                               MaxIoUAssigner(cfg.model.head.multibox.match_threshold))
    rng = np.random.default_rng(seed)
    locs, confs = [], []
    for _ in range(batch_size):
        n = int(rng.integers(2, 8))
        centre = rng.uniform(0.2, 0.8, (n, 2))
        half = rng.uniform(0.05, 0.3, (n, 2))
        boxes = np.clip(np.hstack([centre - half, centre + half]), 0, 1).astype(np.float32)
        labels = rng.integers(0, cfg.model.num_classes, n)
        loc_t, conf_t = encoder(boxes, labels)
        locs.append(loc_t)
        confs.append(conf_t)
    return np.stack(locs), np.stack(confs).astype(np.int32)


def mindspore_train_step(detector, cfg, steps: int = 1000, clip_kernel: bool = False):
    """The project's jitted step: DetectorWithLoss -> value_and_grad -> clip -> SGD (momentum, decay);
    `clip_kernel`: the clip's global norm by the C kernel (train.grad_norm_kernel)."""
    from src.training.optimizer import build_sgd
    from src.training.train_step import DetectorWithLoss, TrainStep

    tcfg = cfg.train
    lr = np.full(steps, 1e-4, np.float32)     # small: the benchmark must not diverge
    optimizer = build_sgd(detector.trainable_params(), lr, tcfg.momentum, tcfg.weight_decay)
    step = TrainStep(DetectorWithLoss(detector), optimizer, tcfg.clip_grad_norm, clip_kernel=clip_kernel)
    step.set_train(True)
    return step


def torch_multibox_loss(loc, conf, loc_t, conf_t, neg_pos_ratio: int = 3, empty_image_negatives: int = 0):
    """heads/losses/multibox_loss.py in PyTorch (the ssd.pytorch formulation: double sort)."""
    import torch
    import torch.nn.functional as F

    positive = conf_t > 0
    num_pos = positive.sum().clamp(min=1).float()
    loc_loss = (F.smooth_l1_loss(loc, loc_t, reduction="none").sum(-1) * positive.float()).sum()
    ce = torch.logsumexp(conf, -1) - conf.gather(-1, conf_t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        mining = ce.masked_fill(positive, 0.0)
        _, order = mining.sort(1, descending=True)
        _, rank = order.sort(1)
        pos_count = positive.sum(1, keepdim=True)
        wanted = torch.where(pos_count > 0, pos_count * neg_pos_ratio, torch.full_like(pos_count, empty_image_negatives))
        negative = (rank < wanted.clamp(max=conf.shape[1] - 1)) & ~positive
    conf_loss = (ce * (positive | negative).float()).sum()
    return loc_loss / num_pos, conf_loss / num_pos


class TorchTrainStep:
    """forward (train mode) -> multibox loss -> backward -> global-norm clip -> SGD, the same
    settings as the MindSpore step (momentum, weight decay on >= 2-D weights only)."""

    def __init__(self, reference, cfg):
        import torch

        tcfg = cfg.train
        self.net = reference.train()
        self.net.phase = "train"
        decay = [p for p in self.net.parameters() if p.ndim > 1]
        no_decay = [p for p in self.net.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD([{"params": decay, "weight_decay": tcfg.weight_decay},
                                          {"params": no_decay, "weight_decay": 0.0}],
                                         lr=1e-4, momentum=tcfg.momentum)
        self.clip = float(tcfg.clip_grad_norm)
        self.neg_pos_ratio = int(cfg.model.head.multibox.neg_pos_ratio)
        self.empty_image_negatives = int(cfg.model.head.multibox.empty_image_negatives)

    def __call__(self, images, loc_t, conf_t):
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        loc, conf = self.net(images)
        loc_loss, conf_loss = torch_multibox_loss(loc, conf, loc_t, conf_t.long(), self.neg_pos_ratio,
                                                  self.empty_image_negatives)
        total = loc_loss + conf_loss
        total.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.optimizer.step()
        return total.detach()


# ---------------------------------------------------------------- timing

def alternate(cases: Sequence[tuple[str, Callable[[], object]]], reps: int, warmup: int = 1) -> dict:
    """Run the cases round-robin; returns {name: [seconds per timed call]}.

    `warmup` untimed rounds first (compilation, allocator warm-up). Repetition r starts at case
    r mod len(cases), so every case follows each other one equally often.
    """
    for _ in range(warmup):
        for _, fn in cases:
            fn()
    times = {name: [] for name, _ in cases}
    n = len(cases)
    for r in range(reps):
        for k in range(n):
            name, fn = cases[(r + k) % n]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


CEILING_SHAPE = (1, 512, 40, 40)   # M2Det-320's conv4_x and its TUM-input sizes; among the fastest shapes


def conv3x3_cases(shape: tuple[int, int, int, int] = CEILING_SHAPE):
    """(MindSpore call, PyTorch call, FLOPs) of one 3x3 stride-1 convolution C -> C (pad 1, no bias)
    on an (N, C, H, W) input: the operation that dominates M2Det, as a ceiling to hold it against."""
    import mindspore as ms
    import mindspore.nn as nn
    import torch

    n, c, h, w = shape
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    conv = nn.Conv2d(c, c, 3, pad_mode="pad", padding=1, has_bias=False, weight_init=ms.Tensor(weight))
    conv.set_train(False)
    xm = ms.Tensor(x)
    tconv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(weight))
    xt = torch.from_numpy(x)

    def run_torch():
        with torch.no_grad():
            return tconv(xt)

    return (lambda: conv(xm).asnumpy()), run_torch, 2.0 * n * c * h * w * c * 9


def conv3x3_peak(shapes: Sequence[tuple[int, int, int, int]] = ((1, 256, 40, 40), CEILING_SHAPE, (1, 256, 80, 80),
                                                                 (8, 256, 20, 20)), reps: int = 3) -> list[dict]:
    """GFLOP/s of single 3x3 convolutions, MindSpore (GRAPH mode) and PyTorch alternating, for
    (N, C, H, W) shapes like M2Det's TUM and VGG layers."""
    rows = []
    for shape in shapes:
        run_ms, run_torch, flops = conv3x3_cases(shape)
        times = alternate([("mindspore", run_ms), ("pytorch", run_torch)], reps, warmup=2)
        rows.append({"shape": "x".join(str(v) for v in shape), "gflop": flops / 1e9,
                     "mindspore_gflops": flops / median(times["mindspore"]) / 1e9,
                     "pytorch_gflops": flops / median(times["pytorch"]) / 1e9})
    return rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
