"""``binarized``: XNOR-Net forward (alpha_c * sign(w)), clipped STE, exact parts and restore.

References are written independently in numpy: the per-channel mean of |w| in float64, the
sign with sign(0) = +1, and the gradient of XNOR-Net (Rastegari et al. 2016) with the clipped
straight-through estimator of BinaryConnect (Courbariaux et al. 2015).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, load, models, save
from hiddenite.errors import ConfigError
from hiddenite.layers import SupermaskConv2d, SupermaskLayer, SupermaskLinear
from hiddenite.methods import LayerItem, get_method, method_config
from hiddenite.methods.binarized import BinarizedConfig, channel_scale

METHOD = get_method("binarized")


def sgd_steps(model, x, y, steps: int, lr: float = 0.5) -> None:
    """Plain SGD by hand (torch.optim's first step imports its compiler: seconds)."""
    model.train()
    for _ in range(steps):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
    model.eval()


def reference(w: np.ndarray, scale: bool, gain: float = math.sqrt(2.0)) -> np.ndarray:
    """alpha_c * sign(w) in numpy (float64 mean rounded once to float32)."""
    sign = np.where(w >= 0, np.float32(1), np.float32(-1))
    if scale:
        axes = tuple(range(1, w.ndim))
        alpha = np.abs(w.astype(np.float64)).mean(axis=axes, keepdims=True).astype(np.float32)
    else:
        alpha = np.float32(gain / math.sqrt(np.prod(w.shape[1:])))
    return (alpha * sign).astype(np.float32)


def random_latent(shape, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, rng.uniform(0.05, 2.0), size=shape).astype(np.float32)
    w.reshape(-1)[:: max(1, w.size // 5)] = 0.0  # exact zeros: sign(0) = +1
    return torch.from_numpy(w)


def linear(out_f=6, in_f=10, scale=True, **kwargs) -> SupermaskLinear:
    return SupermaskLinear(
        out_features=out_f, in_features=in_f, method=BinarizedConfig(scale=scale), **kwargs
    )


def conv(scale=True, **kwargs) -> SupermaskConv2d:
    return SupermaskConv2d(3, 5, 3, method=BinarizedConfig(scale=scale), **kwargs)


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("make", [linear, conv])
def test_forward_matches_the_numpy_reference(make, scale):
    layer = make(scale=scale)
    with torch.no_grad():
        layer.weight.copy_(random_latent(layer.weight.shape, 1))
    got = layer.effective_weight().detach().numpy()
    np.testing.assert_array_equal(got, reference(layer.weight.detach().numpy(), scale))
    x = torch.randn(2, *((10,) if make is linear else (3, 6, 6)))
    expected = (
        nn.functional.linear(x, torch.from_numpy(got))
        if make is linear
        else nn.functional.conv2d(x, torch.from_numpy(got))
    )
    assert torch.equal(layer(x), expected)


def test_sign_of_zero_is_plus_one():
    layer = linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, -0.0, -0.5], [0.0, 0.0, 0.0]]))
    w = layer.effective_weight().detach()
    alpha0 = np.float32(0.5 / 3)
    assert torch.equal(w[0], torch.tensor([alpha0, alpha0, -alpha0]))
    assert torch.equal(w[1], torch.zeros(3))  # alpha = 0 for an all-zero channel
    assert METHOD.export(layer)["signs"].tolist() == [True, True, False, True, True, True]


@pytest.mark.parametrize("make", [linear, conv])
def test_gradient_is_xnor_net_with_the_clipped_ste(make):
    layer = make()
    with torch.no_grad():
        latent = random_latent(layer.weight.shape, 2) * 1.5  # many |w| > 1
        layer.weight.copy_(latent)
    g = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(3))
    (layer.effective_weight() * g).sum().backward()
    w = latent.double().numpy()
    gn = g.double().numpy()
    axes = tuple(range(1, w.ndim))
    sign = np.where(w >= 0, 1.0, -1.0)
    alpha = np.abs(w).mean(axis=axes, keepdims=True)
    # d/dw_i [alpha_c sign(w_i)] summed with g: g_i alpha_c 1{|w_i| <= 1} + d|w_i|/n sum g s,
    # with d|w|/dw = np.sign(w) (0 at w = 0, the subgradient autograd takes)
    mean_gs = (gn * sign).mean(axis=axes, keepdims=True)
    expected = gn * alpha * (np.abs(w) <= 1) + np.sign(w) * mean_gs
    assert (np.abs(w) > 1).any() and (np.abs(w) <= 1).any()
    np.testing.assert_allclose(layer.weight.grad.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_gradient_without_scale_is_the_constant_times_the_clipped_ste():
    layer = linear(scale=False)
    with torch.no_grad():
        layer.weight.copy_(random_latent(layer.weight.shape, 4) * 1.5)
    g = torch.randn(layer.weight.shape)
    (layer.effective_weight() * g).sum().backward()
    c = np.float32(math.sqrt(2.0) / math.sqrt(10))
    expected = g.numpy() * c * (np.abs(layer.weight.detach().numpy()) <= 1)
    np.testing.assert_allclose(layer.weight.grad.numpy(), expected, rtol=1e-6)


def test_weights_are_trained_parameters_from_the_seed_at_density_one():
    a = linear(seed=7, density=0.3, scale_by_density=True)
    b = linear(seed=7, density=0.3, scale_by_density=True)
    assert isinstance(a.weight, nn.Parameter) and a.weight.requires_grad
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, linear(seed=8).weight)
    # signed-constant init, never scaled by a density: every |w| = gain / sqrt(fan_in)
    c = np.float32(math.sqrt(2.0) / math.sqrt(10))
    assert torch.all(a.weight.abs() == c)
    assert METHOD.layer_configs([(6, 10), (2, 6)], BinarizedConfig(), 0.3) == [
        (BinarizedConfig(), 1.0),
        (BinarizedConfig(), 1.0),
    ]
    assert METHOD.scale_density(BinarizedConfig(), 0.3) is None
    assert METHOD.owned_state(a) == ("weight",)
    assert bool(METHOD.support(a).all())


def test_converted_model_keeps_density_one():
    model = models.create("mlp", SupermaskConfig(method="binarized", density=0.2), **MLP)
    layers = [m for m in model.modules() if isinstance(m, SupermaskLayer)]
    assert layers and all(layer.density == 1.0 for layer in layers)


def test_parts_have_exact_sizes():
    shape = (8, 4, 3, 3)
    assert METHOD.parts(shape, BinarizedConfig(), 1.0) == [
        _part("signs", 288, 2),
        _part("scales", 8, None),
    ]
    assert METHOD.parts(shape, BinarizedConfig(scale=False), 1.0) == [_part("signs", 288, 2)]
    layer = conv()
    arrays = METHOD.export(layer)
    assert arrays["signs"].dtype == np.bool_ and arrays["signs"].shape == (135,)
    assert arrays["scales"].dtype == np.float32 and arrays["scales"].shape == (5,)
    assert sorted(METHOD.export(conv(scale=False))) == ["signs"]


def _part(name, n, alphabet):
    from hiddenite.methods import Part

    return Part(name, n, alphabet)


def test_float64_mean_reproduces_identical_values_where_a_float32_sum_may_not():
    # a float32 running sum of identical values drifts; the float64 mean never does
    s = np.float32(0.1)
    drift = np.cumsum(np.full(100_000, s, dtype=np.float32), dtype=np.float32)[-1] / 100_000
    assert np.float32(drift) != s
    w = torch.full((1, 100_000), float(s), dtype=torch.float32)
    assert channel_scale(w).item() == s


@pytest.mark.parametrize("scale", [True, False])
def test_restore_is_bit_exact_on_many_random_shapes(scale):
    rng = np.random.default_rng(5)
    for trial in range(40):
        out_c = int(rng.integers(1, 9))
        if trial % 2:
            shape = (out_c, int(rng.integers(1, 600)))
            a = SupermaskLinear(shape[1], out_c, method=BinarizedConfig(scale=scale))
            b = SupermaskLinear(shape[1], out_c, method=BinarizedConfig(scale=scale), seed=9)
        else:
            in_c, k = int(rng.integers(1, 6)), int(rng.integers(1, 6))
            a = SupermaskConv2d(in_c, out_c, k, method=BinarizedConfig(scale=scale))
            b = SupermaskConv2d(in_c, out_c, k, method=BinarizedConfig(scale=scale), seed=9)
        with torch.no_grad():
            w = random_latent(a.weight.shape, trial)
            w *= torch.from_numpy(rng.lognormal(0, 3, size=(w.shape[0],) + (1,) * (w.dim() - 1)))
            a.weight.copy_(w.float())
        arrays = METHOD.export(a)
        METHOD.restore(b, {k: v.copy() for k, v in arrays.items()})
        assert torch.equal(b.effective_weight(), a.effective_weight()), trial
        again = METHOD.export(b)
        for key in arrays:
            np.testing.assert_array_equal(again[key], arrays[key])


MLP = {"in_channels": 1, "image_size": 6, "num_classes": 4, "hidden": (24, 12)}


@pytest.mark.parametrize("scale", [True, False])
def test_file_round_trip_is_bit_identical(scale, tmp_path):
    cfg = SupermaskConfig(method=BinarizedConfig(scale=scale), seed=3)
    model = models.create("mlp", cfg, **MLP)
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    sgd_steps(model, x, torch.arange(16) % 4, 3)
    save(model, tmp_path / "b.hnn")
    again = load(tmp_path / "b.hnn")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def _item(arrays, shape=(3, 4), scale=True):
    return LayerItem("fc", shape, BinarizedConfig(scale=scale), 1.0, arrays)


def test_check_rejects_impossible_parts():
    good = {"signs": np.ones(12, bool), "scales": np.array([0.1, 0.0, 2.0], np.float32)}
    METHOD.check_layer(_item(good))
    METHOD.check_layer(_item({"signs": np.zeros(12, bool)}, scale=False))
    for bad in (-0.5, np.nan, np.inf):
        scales = np.array([0.1, bad, 2.0], np.float32)
        with pytest.raises(ValueError, match=r"'fc'.*channel 1"):
            METHOD.check_layer(_item({**good, "scales": scales}))
    with pytest.raises(ValueError, match=r"'fc'.*2 scales"):
        METHOD.check_layer(_item({**good, "scales": np.ones(2, np.float32)}))
    with pytest.raises(ValueError, match=r"'fc'.*11 signs"):
        METHOD.check_layer(_item({**good, "signs": np.ones(11, bool)}))


def test_config_validates_and_round_trips():
    cfg = method_config("binarized", scale=False)
    assert cfg == BinarizedConfig(scale=False)
    assert method_config(cfg.to_dict()) == cfg
    assert BinarizedConfig().scale is True
    with pytest.raises(ConfigError, match="scale"):
        method_config("binarized", scale="yes")
    with pytest.raises(ConfigError, match="no argument"):
        method_config("binarized", bits=2)


def test_cost_is_one_stored_bit_with_xnor():
    cost = METHOD.cost((8, 4, 3, 3), BinarizedConfig(), 1.0)
    assert (cost.weight_source, cost.weight_bits, cost.op, cost.prng_streams) == (
        "stored",
        1,
        "xnor",
        (),
    )
