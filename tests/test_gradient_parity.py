"""Backward pass against the PyTorch reference, part by part: the same weights and inputs give
the same input and parameter gradients (training mode, batch statistics). This pins the
gradients of every op the network uses (ceil-mode pool, dilated conv, nearest resize, concat,
the shared FFMv2 used by every level, BatchNorm, the head's NHWC flattening).

The parts are checked separately on well-conditioned inputs: a whole untrained VGG without
BatchNorm either shrinks or blows up its activations, and the BatchNorms after it then turn
float32 rounding into large relative gradient differences that say nothing about correctness.
"""
import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn

import tests.reference.torch_m2det as ref
from m2det.backbones import VGG16Reduced
from src.builder import build_detector
from src.config import load_config
from tests.test_torch_parity import copy_to_torch, our_name, randomize

SMALL_LITE = ["model.input_size=128", "model.neck.mlfpn.num_scales=4", "priors.steps=[8,16,32,64]",
              "priors.size_pattern=[0.1,0.3,0.5,0.7,0.9]", "priors.aspect_ratios=[[2],[2],[2],[2]]"]


def small_lite_reference():
    return ref.M2DetReference(backbone="vgg16", width=0.25, planes=64, num_levels=4, num_scales=4,
                              base_channels=(64, 128), num_classes=6, input_size=128, phase="train",
                              num_anchors=4)


class WeightedOutputs(nn.Cell):
    """sum_k <output_k, w_k>: every output element gets its own weight, so every path counts."""

    def __init__(self, cell, weights):
        super().__init__(auto_prefix=False)
        self.cell = cell
        self.weights = [ms.Tensor(w) for w in weights]

    def construct(self, *inputs):
        outputs = self.cell(*inputs)
        total = 0
        for out, w in zip(outputs, self.weights):
            total = total + (out * w).sum()
        return total


class TupleInput(nn.Cell):
    """Calls a cell that takes one tuple of maps (neck, head) with separate arguments."""

    def __init__(self, cell):
        super().__init__(auto_prefix=False)
        self.inner = cell

    def construct(self, *maps):
        return self.inner(maps)


def check_gradients(ours, theirs, inputs, theirs_call, strip="", tol=1e-4, tuple_input=False):
    randomize(ours)
    copy_to_torch(ours, theirs, strip=strip)
    ours.set_train(True)
    theirs.train(True)
    xt = [torch.from_numpy(x).requires_grad_() for x in inputs]
    out_t = list(theirs_call(theirs, xt))
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=tuple(o.shape)).astype(np.float32) for o in out_t]
    sum((o * torch.from_numpy(w)).sum() for o, w in zip(out_t, weights)).backward()

    params = ours.trainable_params()
    loss = WeightedOutputs(TupleInput(ours) if tuple_input else ours, weights)
    grad_x, grad_w = ms.grad(loss, tuple(range(len(inputs))), params)(*[ms.Tensor(x) for x in inputs])
    grad_x = grad_x if isinstance(grad_x, tuple) else (grad_x,)
    for i, (got, x) in enumerate(zip(grad_x, xt)):
        want = x.grad.numpy()
        np.testing.assert_allclose(got.asnumpy() / np.abs(want).max(), want / np.abs(want).max(), atol=tol,
                                   err_msg=f"input {i}")
    ours_grads = {p.name: g.asnumpy() for p, g in zip(params, grad_w)}
    by_name = {p.name: p for p in ours.get_parameters()}
    checked = 0
    for key, value in theirs.named_parameters():
        want = value.grad.numpy()
        got = ours_grads[our_name(key, by_name, strip=strip)]
        scale = max(np.abs(want).max(), 1e-8)
        np.testing.assert_allclose(got / scale, want / scale, atol=tol, err_msg=key)
        checked += 1
    assert checked == len(params)


@pytest.fixture(autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    torch.manual_seed(0)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


def test_vgg_backbone_gradients():
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = ref.vgg_reduced(0.125)

    def theirs_call(m, xt):
        x, outs = xt[0], []
        for i, layer in enumerate(m.base):
            x = layer(x)
            if i in (22, 34):
                outs.append(x)
        return outs

    x = np.random.default_rng(1).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    check_gradients(VGG16Reduced(0.125), Holder(), [x], theirs_call, strip="backbone.")


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_mlfpn_gradients(mode):
    """FFMv1 + shared FFMv2 + 4 TUMs + per-scale concat + the BatchNorm on the largest scale."""
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
    neck = build_detector(load_config("tests/configs/lite256.yaml", SMALL_LITE)).neck
    theirs = small_lite_reference()
    del theirs.base, theirs.loc, theirs.conf
    rng = np.random.default_rng(2)
    shallow = rng.normal(0, 1, (2, 128, 16, 16)).astype(np.float32)
    deep = rng.normal(0, 1, (2, 256, 8, 8)).astype(np.float32)
    check_gradients(neck, theirs, [shallow, deep], lambda m, xt: m.mlfpn(m.ffm1(xt[0], xt[1])), tuple_input=True)


def test_multibox_head_gradients():
    head = build_detector(load_config("tests/configs/lite256.yaml", SMALL_LITE)).head
    full = small_lite_reference()

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc, self.conf = full.loc, full.conf

    def theirs_call(m, xt):
        b = xt[0].shape[0]
        loc = torch.cat([l(s).permute(0, 2, 3, 1).reshape(b, -1) for s, l in zip(xt, m.loc)], 1)
        conf = torch.cat([c(s).permute(0, 2, 3, 1).reshape(b, -1) for s, c in zip(xt, m.conf)], 1)
        return [loc.view(b, -1, 4), conf.view(b, -1, 6)]

    rng = np.random.default_rng(3)
    maps = [rng.normal(0, 1, (2, 256, n, n)).astype(np.float32) for n in (16, 8, 4, 2)]
    check_gradients(head, Holder(), maps, theirs_call, tuple_input=True)
