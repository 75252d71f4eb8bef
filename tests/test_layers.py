"""Tests for hiddenite.layers: SupermaskConv2d / SupermaskLinear with the edge-popup (hidden)
and dense methods.

References: ``F.conv2d`` / ``F.linear`` on ``weight * mask`` computed by hand, the frozen
weights from :func:`hiddenite.init.frozen_weights`, the multi-lane words from numpy, and a
full-sort top-k mask.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hiddenite.init import frozen_weights
from hiddenite.layers import SupermaskConv2d, SupermaskLinear, is_supermask
from hiddenite.masks import GlobalThreshold, kept_count
from hiddenite.methods import DenseConfig, EdgePopupConfig, method_config
from hiddenite.prng import STREAM_BIAS, STREAM_SCORES, lanes_numpy

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def conv(**kw):
    args = dict(density=0.3, seed=11, layer_index=2)
    args.update(kw)
    return SupermaskConv2d(6, 10, 3, stride=1, padding=1, **args)


def linear(**kw):
    args = dict(density=0.3, seed=11, layer_index=2)
    args.update(kw)
    return SupermaskLinear(20, 12, **args)


def make(kind: str, **kw):
    return conv(**kw) if kind == "conv" else linear(**kw)


def x_for(kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 6, 8, 8, generator=g) if kind == "conv" else torch.randn(4, 20, generator=g)
    )


def reference_forward(layer, x, weight):
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(
            x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    return F.linear(x, weight, layer.bias)


def sort_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    flat = scores.detach().reshape(-1).abs()
    m = kept_count(flat.numel(), density)
    mask = torch.zeros_like(flat)
    mask[torch.sort(flat, descending=True).indices[:m]] = 1.0
    return mask.reshape(scores.shape)


KINDS = ["conv", "linear"]


# --------------------------------------------------------------------------- edge-popup (hidden)


@pytest.mark.parametrize("kind", KINDS)
def test_hidden_weight_is_a_buffer_and_scores_a_parameter(kind):
    layer = make(kind)
    assert is_supermask(layer) and layer.method.name == "edge-popup"
    assert layer.method_config == EdgePopupConfig() and not layer.trains_weights
    assert isinstance(layer, nn.Conv2d if kind == "conv" else nn.Linear)
    params = dict(layer.named_parameters())
    assert set(params) == {"scores"}
    assert isinstance(layer.scores, nn.Parameter) and layer.scores.requires_grad
    assert not isinstance(layer.weight, nn.Parameter)
    assert not layer.weight.requires_grad
    assert "weight" in dict(layer.named_buffers())
    assert set(layer.state_dict()) == {"scores"}
    assert layer.scores.shape == layer.weight.shape


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("init", ["signed-constant", "kaiming-uniform", "kaiming-normal"])
def test_hidden_weights_are_the_frozen_weights(kind, init):
    layer = make(kind, init=init, scale_by_density=True, gain=1.3)
    shape = tuple(layer.weight.shape)
    expected = frozen_weights(
        shape,
        init=init,
        seed=11,
        layer_index=2,
        fan_in=math.prod(shape[1:]),
        gain=1.3,
        density=0.3,
        scale_by_density=True,
    )
    assert torch.equal(layer.weight, expected)
    assert layer.fan_in == math.prod(shape[1:])


@pytest.mark.parametrize("kind", KINDS)
def test_initial_scores_from_the_score_stream(kind):
    layer = make(kind)
    n, fan_in = layer.scores.numel(), layer.fan_in
    words = lanes_numpy(11, 2, n, 4096, STREAM_SCORES).astype(np.float64)
    u = (words + 0.5) * 2.0**-32
    expected = ((u * 2.0 - 1.0) * (1.0 / math.sqrt(fan_in))).astype(np.float32)
    assert np.array_equal(layer.scores.detach().numpy().reshape(-1), expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_mask_is_binary_with_exact_count(kind, density):
    layer = make(kind, density=density)
    mask = layer.mask()
    assert mask.dtype == layer.weight.dtype and mask.shape == layer.weight.shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == kept_count(mask.numel(), density)
    assert torch.equal(mask, sort_mask(layer.scores, density))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [False, True])
def test_forward_equals_functional_with_masked_weight(kind, bias):
    layer = make(kind, bias=bias) if kind == "linear" else conv(bias=bias)
    if bias:
        with torch.no_grad():
            layer.bias.copy_(torch.linspace(-1, 1, layer.bias.numel()))
    x = x_for(kind)
    mask = sort_mask(layer.scores, 0.3)
    expected = reference_forward(layer, x, layer.weight * mask)
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer.effective_weight(), layer.weight * mask)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=2, padding=0),
        dict(stride=1, padding=2, dilation=2),
        dict(stride=1, padding=1, groups=2),
        dict(stride=1, padding=1, padding_mode="reflect"),
    ],
)
def test_conv_variants_forward(kwargs):
    layer = SupermaskConv2d(6, 8, 3, density=0.4, seed=3, layer_index=0, **kwargs)
    x = x_for("conv", 1)
    ref = nn.Conv2d(6, 8, 3, bias=False, **kwargs)
    with torch.no_grad():
        ref.weight.copy_(layer.weight * sort_mask(layer.scores, 0.4))
    assert torch.equal(layer(x), ref(x))
    assert layer.fan_in == 6 // layer.groups * 9


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_scores_not_weight(kind):
    layer = make(kind)
    x = x_for(kind, 2)
    upstream = torch.randn_like(layer(x))
    layer(x).backward(upstream)
    assert layer.scores.grad is not None
    assert layer.weight.grad is None
    # reference: the gradient w.r.t. the effective weight, times the frozen weight, reaches
    # |score| straight through the mask, hence the score times sign(score) (edge-popup)
    eff = (layer.weight * layer.mask()).clone().requires_grad_(True)
    reference_forward(layer, x, eff).backward(upstream)
    expected = eff.grad * layer.weight * torch.sign(layer.scores.detach())
    assert torch.allclose(layer.scores.grad, expected, rtol=1e-5, atol=1e-6)
    # pruned weights get gradient too (straight-through): not all zero where mask == 0
    assert layer.scores.grad[layer.mask() == 0].abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_mask_follows_optimizer_steps(kind):
    layer = make(kind)
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    before = layer.mask().clone()
    for step in range(3):
        opt.zero_grad()
        layer(x_for(kind, step)).square().sum().backward()
        opt.step()
        assert torch.equal(layer.mask(), sort_mask(layer.scores, 0.3))
        assert torch.equal(
            layer(x_for(kind)), reference_forward(layer, x_for(kind), layer.weight * layer.mask())
        )
    assert not torch.equal(before, layer.mask())
    assert torch.equal(layer.weight, make(kind).weight)  # frozen weights never move


@pytest.mark.parametrize("kind", KINDS)
def test_mask_follows_inplace_no_grad_update(kind):
    layer = make(kind)
    layer.mask()
    with torch.no_grad():
        layer.scores.neg_().add_(torch.arange(layer.scores.numel()).reshape(layer.scores.shape))
    assert torch.equal(layer.mask(), sort_mask(layer.scores, 0.3))


def test_mask_follows_write_through_data():
    layer = linear()
    layer.mask()
    layer.scores.data.copy_(-layer.scores.data.flip(0))
    assert torch.equal(layer.mask(), sort_mask(layer.scores, 0.3))


@pytest.mark.parametrize("kind", KINDS)
def test_mask_follows_new_scores_parameter(kind):
    layer = make(kind)
    layer.mask()
    layer.scores = nn.Parameter(torch.randn_like(layer.scores))
    assert torch.equal(layer.mask(), sort_mask(layer.scores, 0.3))


# --------------------------------------------------------------------------- dense method


@pytest.mark.parametrize("kind", KINDS)
def test_dense_method_trains_the_same_frozen_weights(kind):
    dense = make(kind, method="dense")
    hidden = make(kind)
    assert dense.method.name == "dense" and dense.method_config == DenseConfig()
    assert dense.trains_weights
    assert isinstance(dense.weight, nn.Parameter) and dense.weight.requires_grad
    assert not hasattr(dense, "scores")
    assert torch.equal(dense.weight.detach(), hidden.weight)
    # a dense layer is never scaled by the density, even when asked to
    scaled = make(kind, method="dense", scale_by_density=True)
    assert torch.equal(scaled.weight.detach(), hidden.weight)
    assert not torch.equal(make(kind, scale_by_density=True).weight, hidden.weight)
    assert set(dense.state_dict()) == {"weight"}
    assert torch.equal(dense.mask(), torch.ones_like(dense.weight))
    x = x_for(kind)
    assert torch.equal(dense(x), reference_forward(dense, x, dense.weight))
    dense(x).sum().backward()
    assert dense.weight.grad is not None
    with pytest.raises(RuntimeError):
        dense.regenerate_weights_()


@pytest.mark.parametrize("kind", KINDS)
def test_dense_bias_is_seeded_uniform(kind):
    a = make(kind, method="dense", bias=True)
    b = make(kind, method="dense", bias=True)
    assert torch.equal(a.bias, b.bias)
    bound = 1.0 / math.sqrt(a.fan_in)
    assert a.bias.abs().max() <= bound and a.bias.abs().max() > 0
    assert STREAM_BIAS == 2
    words = lanes_numpy(11, 2, a.bias.numel(), 4096, STREAM_BIAS).astype(np.float64)
    expected = (((words + 0.5) * 2.0**-32 * 2.0 - 1.0) * bound).astype(np.float32)
    assert np.array_equal(a.bias.detach().numpy(), expected)
    assert set(a.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("kind", KINDS)
def test_hidden_bias_starts_at_zero_and_learns(kind):
    layer = make(kind, bias=True)
    assert isinstance(layer.bias, nn.Parameter)
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert set(layer.state_dict()) == {"scores", "bias"}
    layer(x_for(kind)).sum().backward()
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


def test_no_bias_by_default():
    assert conv().bias is None and linear().bias is None


# --------------------------------------------------------------------------- rebuild / reload


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["edge-popup", "dense"])
def test_rebuild_and_load_state_dict_bit_identical(kind, method):
    layer = make(kind, method=method, bias=True, init="kaiming-normal")
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for step in range(2):
        opt.zero_grad()
        layer(x_for(kind, step)).square().mean().backward()
        opt.step()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    fresh = make(kind, method=method, bias=True, init="kaiming-normal")
    assert not torch.equal(fresh(x_for(kind)), layer(x_for(kind)))
    fresh.load_state_dict(state)
    x = x_for(kind, 9)
    assert torch.equal(fresh(x), layer(x))
    assert torch.equal(fresh.mask(), layer.mask())


@pytest.mark.parametrize("kind", KINDS)
def test_regenerate_weights_reproduces_the_weights(kind):
    layer = make(kind, init="kaiming-uniform")
    original = layer.weight.clone()
    layer.weight.zero_()
    assert not torch.equal(layer.weight, original)
    layer.regenerate_weights_()
    assert torch.equal(layer.weight, original)
    assert "weight" not in layer.state_dict()  # still a non-persistent buffer
    assert "weight" in dict(layer.named_buffers())


@pytest.mark.parametrize("kind", KINDS)
def test_reset_parameters_redraws_from_the_seed(kind):
    layer = make(kind, bias=True)
    scores = layer.scores.detach().clone()
    with torch.no_grad():
        layer.scores.mul_(3.0)
        layer.bias.fill_(1.0)
    layer.reset_parameters()
    assert torch.equal(layer.scores, scores)
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    dense = make(kind, method="dense", bias=True)
    w, b = dense.weight.detach().clone(), dense.bias.detach().clone()
    with torch.no_grad():
        dense.weight.zero_()
        dense.bias.zero_()
    dense.reset_parameters()
    assert torch.equal(dense.weight, w) and torch.equal(dense.bias, b)


@pytest.mark.parametrize("kind", KINDS)
def test_different_layer_index_gives_different_weights(kind):
    a, b = make(kind, layer_index=0), make(kind, layer_index=1)
    assert not torch.equal(a.weight, b.weight)
    assert not torch.equal(a.scores, b.scores)
    c = make(kind, seed=12)
    assert not torch.equal(a.weight, c.weight)


def test_n_lanes_is_used():
    a = linear(n_lanes=1)
    expected = frozen_weights(
        (12, 20), init="signed-constant", seed=11, layer_index=2, fan_in=20, n_lanes=1
    )
    assert torch.equal(a.weight, expected)
    assert not torch.equal(a.weight, linear().weight)


def test_deepcopy_and_dtype_conversion():
    layer = conv()
    twin = copy.deepcopy(layer)
    x = x_for("conv")
    assert torch.equal(twin(x), layer(x))
    double = copy.deepcopy(layer).double()
    assert double.weight.dtype == torch.float64 and double.scores.dtype == torch.float64
    assert torch.allclose(double(x.double()), layer(x).double(), atol=1e-5)


# --------------------------------------------------------------------------- global scope


def test_layers_with_a_shared_global_threshold():
    a, b = conv(layer_index=0), linear(layer_index=1)
    with torch.no_grad():
        b.scores.abs_().add_(1.0)  # every linear score beats every conv score (< 0.14)
    group = GlobalThreshold(0.5, attribute="scores")
    for layer in (a, b):
        group.register(layer)
        layer.mask_group = group
    total = a.scores.numel() + b.scores.numel()  # 540 + 240
    m = kept_count(total, 0.5)
    assert int(a.mask().sum() + b.mask().sum()) == m
    assert int(b.mask().sum()) == b.scores.numel()  # 240 < m: the whole linear layer kept
    assert int(a.mask().sum()) == m - 240
    x = x_for("conv")
    assert torch.equal(a(x), reference_forward(a, x, a.weight * a.mask()))
    assert "global" in repr(a)
    a.mask_group = None
    assert int(a.mask().sum()) == kept_count(a.scores.numel(), 0.3)
    assert "layer" in repr(a)


def test_edge_popup_link_builds_the_global_group():
    a, b = conv(layer_index=0), linear(layer_index=1)
    assert a.mask_group is None and b.mask_group is None  # layer scope by default
    config = method_config("edge-popup", scope="global")
    a.method.link([a, b], config)
    group = a.mask_group
    assert isinstance(group, GlobalThreshold) and b.mask_group is group
    assert group.layers == [a, b] and group.density == a.density
    assert group.attribute == "scores"
    total = a.scores.numel() + b.scores.numel()
    assert int(a.mask().sum() + b.mask().sum()) == kept_count(total, 0.3)
    # layer scope links nothing
    c, d = conv(layer_index=0), linear(layer_index=1)
    c.method.link([c, d], EdgePopupConfig())
    assert c.mask_group is None and d.mask_group is None


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(density=0.0),
        dict(density=1.5),
        dict(density=-0.2),
        dict(density=float("nan")),
        dict(init="xavier"),
        dict(method="no-such-method"),
        dict(method=3),
        dict(method={"name": "edge-popup", "scope": "model"}),
    ],
)
def test_invalid_arguments(kind, kwargs):
    with pytest.raises(ValueError):
        make(kind, **kwargs)


def test_method_accepts_a_name_a_config_or_a_dict():
    by_name = linear(method="edge-popup")
    by_config = linear(method=EdgePopupConfig())
    by_dict = linear(method={"name": "edge-popup", "scope": "layer"})
    for layer in (by_name, by_config, by_dict):
        assert layer.method_config == EdgePopupConfig()
        assert torch.equal(layer.scores, linear().scores)
    assert linear(method=DenseConfig()).method.name == "dense"


def test_repr_mentions_method_and_density():
    assert "method=edge-popup" in repr(conv()) and "density=0.3" in repr(conv())
    assert "method=dense" in repr(linear(method="dense"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_layer_matches_cpu(kind):
    cpu = make(kind, init="kaiming-normal")
    gpu = make(kind, init="kaiming-normal", device="cuda")
    assert gpu.weight.device.type == "cuda"
    assert torch.equal(gpu.weight.cpu(), cpu.weight)
    assert torch.equal(gpu.scores.detach().cpu(), cpu.scores.detach())
    assert torch.equal(gpu.mask().cpu(), cpu.mask())
    moved = copy.deepcopy(cpu).cuda()
    moved.regenerate_weights_()
    assert torch.equal(moved.weight.cpu(), cpu.weight)


def test_init_state_false_leaves_zero_scores_and_the_same_weights():
    drawn = SupermaskLinear(20, 7, density=0.3, seed=4, layer_index=1)
    blank = SupermaskLinear(20, 7, density=0.3, seed=4, layer_index=1, init_state=False)
    assert torch.equal(blank.scores, torch.zeros(7, 20))
    assert torch.equal(blank.weight, drawn.weight)
    blank.load_state_dict(drawn.state_dict())
    x = torch.randn(3, 20)
    assert torch.equal(blank(x), drawn(x))
