"""``analog`` (reusable analog mode): fixed seed topology, learned sign and b-bit magnitude.

References are independent numpy re-implementations: the topology from the raw Xorshift words
(a stable sort by word, descending, ties to the lowest index), the quantizer
``sign * clip(round(|v| / step), 1, 2**b) * step`` and its straight-through gradient.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, load, models, save, to_dense
from hiddenite.device_noise import edge_popup_with_device_noise, with_noise
from hiddenite.errors import ConfigError
from hiddenite.layers import SupermaskConv2d, SupermaskLayer, SupermaskLinear
from hiddenite.masks import kept_count
from hiddenite.methods import LayerItem, Part, get_method, method_config
from hiddenite.methods.analog import AnalogConfig, level_step
from hiddenite.prng import lanes_numpy, stream_id

METHOD = get_method("analog")


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


MLP = {"in_channels": 1, "image_size": 6, "num_classes": 4, "hidden": (24, 12)}


def reference_topology(seed, layer_index, shape, density, n_lanes=4096) -> np.ndarray:
    n = math.prod(shape)
    words = lanes_numpy(seed, layer_index, n, n_lanes, stream_id("analog-topology"))
    order = np.argsort(-words.astype(np.int64), kind="stable")  # descending, ties by index
    mask = np.zeros(n, bool)
    mask[order[: kept_count(n, density)]] = True
    return mask.reshape(shape)


def reference_step(fan_in, density, bits) -> np.float32:
    return np.float32(math.sqrt(2.0) / math.sqrt(fan_in * density) / ((2**bits + 1) / 2))


def reference_weight(latent, topology, step, bits) -> np.ndarray:
    m = np.clip(np.round(np.abs(latent) / step), 1, 2**bits).astype(np.float32)  # half-even
    signed = np.where(latent >= 0, m, -m)
    return np.where(topology, signed * step, np.float32(0)).astype(np.float32)


def linear(bits=2, density=0.3, **kwargs) -> SupermaskLinear:
    cfg = AnalogConfig(bits=bits, **kwargs.pop("cfg", {}))
    return SupermaskLinear(20, 7, density=density, method=cfg, **kwargs)


def conv(bits=2, density=0.3, **kwargs) -> SupermaskConv2d:
    cfg = AnalogConfig(bits=bits, **kwargs.pop("cfg", {}))
    return SupermaskConv2d(3, 5, 3, density=density, method=cfg, **kwargs)


def set_latent(layer, seed, spread=3.0) -> None:
    rng = np.random.default_rng(seed)
    limit = 2**layer.method_config.bits * level_step(
        layer.fan_in, layer.density, layer.method_config.bits
    )
    v = rng.uniform(-spread * limit, spread * limit, size=tuple(layer.weight.shape))
    v.reshape(-1)[::3] *= 1e-3  # some values below the first level
    with torch.no_grad():
        layer.latent.copy_(torch.from_numpy(v.astype(np.float32)))


# ----------------------------------------------------------------------------------- topology


@pytest.mark.parametrize("make", [linear, conv])
@pytest.mark.parametrize("density", [0.05, 0.3, 1.0])
def test_topology_is_the_top_words_of_its_stream(make, density):
    layer = make(density=density, seed=11, layer_index=4, n_lanes=16)
    shape = tuple(layer.weight.shape)
    expected = reference_topology(11, 4, shape, density, n_lanes=16)
    np.testing.assert_array_equal(layer.topology.numpy(), expected)
    assert int(layer.topology.sum()) == kept_count(math.prod(shape), density)
    assert torch.equal(layer.support(), layer.topology)


def test_topology_is_a_pure_function_of_seed_layer_and_density():
    base = linear(seed=5, layer_index=2).topology
    assert torch.equal(base, linear(seed=5, layer_index=2, bits=7).topology)
    assert torch.equal(base, linear(seed=5, layer_index=2, init="kaiming-normal").topology)
    assert not torch.equal(base, linear(seed=6, layer_index=2).topology)
    assert not torch.equal(base, linear(seed=5, layer_index=3).topology)
    assert not torch.equal(base, linear(seed=5, layer_index=2, density=0.5).topology)
    # not in the state dict: it is regenerated, never stored
    assert "topology" not in linear().state_dict()


def test_retraining_on_a_second_task_never_changes_the_topology():
    torch.manual_seed(0)
    model = models.create("mlp", SupermaskConfig(method="analog", density=0.3, seed=2), **MLP)
    layers = [m for m in model.modules() if isinstance(m, SupermaskLayer)]
    wiring = [layer.topology.clone() for layer in layers]
    x = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    exported = []
    for mapping in (torch.arange(32) % 4, (torch.arange(32) * 3 + 1) % 4):  # two "tasks"
        sgd_steps(model, x, mapping, 4)
        exported.append([METHOD.export(layer) for layer in layers])
        for layer, wired in zip(layers, wiring, strict=True):
            assert torch.equal(layer.topology, wired)
            w = layer.effective_weight().detach()
            assert torch.all(w[~wired] == 0) and torch.all(w[wired] != 0)
            # the off-topology latent values get no gradient and stay zero
            assert torch.all(layer.latent.detach()[~wired] == 0)
    # the device was re-programmed: some stored value changed between the tasks
    assert any(
        not np.array_equal(a[k], b[k])
        for a, b in zip(*exported, strict=True)
        for k in ("signs", "magnitudes")
    )


# ------------------------------------------------------------------------- quantizer, gradient


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
@pytest.mark.parametrize("make", [linear, conv])
def test_forward_matches_the_numpy_quantizer(make, bits):
    layer = make(bits=bits)
    set_latent(layer, bits)
    step = reference_step(layer.fan_in, 0.3, bits)
    assert np.float32(level_step(layer.fan_in, 0.3, bits)) == step
    got = layer.effective_weight().detach().numpy()
    want = reference_weight(layer.latent.detach().numpy(), layer.topology.numpy(), step, bits)
    np.testing.assert_array_equal(got, want)
    levels = np.round(np.abs(got[layer.topology.numpy()]) / step)
    assert levels.min() == 1 and levels.max() == 2**bits  # never 0, clipped at the top


def test_quantizer_hand_case():
    layer = SupermaskLinear(2, 2, density=1.0, method=AnalogConfig(bits=2))
    step = level_step(2, 1.0, 2)  # sqrt(2)/sqrt(2)/2.5 = 0.4
    assert step == pytest.approx(0.4)
    s = np.float32(step)
    with torch.no_grad():
        layer.latent.copy_(torch.tensor([[0.0, -0.05], [-0.7, 9.0]]) * 1.0)
    # |v|/step = 0, 0.125, 1.75, 22.5 -> levels 1 (floor at 1), 1, 2, 4 (top)
    expected = torch.tensor([[s, -s], [-2 * s, 4 * s]], dtype=torch.float32)
    assert torch.equal(layer.effective_weight().detach(), expected)


@pytest.mark.parametrize("make", [linear, conv])
def test_gradient_is_straight_through_on_connections_below_the_top(make):
    layer = make(bits=2)
    set_latent(layer, 7, spread=2.0)
    g = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(2))
    (layer.effective_weight() * g).sum().backward()
    v = layer.latent.detach().numpy()
    limit = np.float32(4) * reference_step(layer.fan_in, 0.3, 2)
    passes = layer.topology.numpy() & (np.abs(v) <= limit)
    assert passes.any() and (layer.topology.numpy() & ~passes).any()
    np.testing.assert_array_equal(layer.latent.grad.numpy(), np.where(passes, g.numpy(), 0))


def test_initial_values_take_the_seed_signs_and_every_level():
    layer = SupermaskLinear(200, 50, density=0.3, method=AnalogConfig(bits=2), seed=4)
    wired = layer.topology
    w = layer.effective_weight().detach()
    assert torch.equal(torch.sign(w[wired]), torch.sign(layer.weight[wired]))
    step = level_step(200, 0.3, 2)
    levels = torch.round(w[wired].abs() / step).long()
    counts = torch.bincount(levels, minlength=5)[1:]
    assert counts.min() > 0.2 * wired.sum() / 4  # roughly uniform over 1..4
    assert torch.all(layer.latent[~wired] == 0)
    again = SupermaskLinear(200, 50, density=0.3, method=AnalogConfig(bits=2), seed=4)
    assert torch.equal(again.latent, layer.latent)


# ---------------------------------------------------------------------------- parts, restore


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_parts_have_exact_sizes(bits):
    layer = conv(bits=bits, density=0.3)
    n = kept_count(135, 0.3)
    assert METHOD.parts((5, 3, 3, 3), AnalogConfig(bits=bits), 0.3) == [
        Part("signs", n, 2),
        Part("magnitudes", n, 2**bits),
    ]
    arrays = METHOD.export(layer)
    assert arrays["signs"].dtype == np.bool_ and arrays["signs"].shape == (n,)
    assert arrays["magnitudes"].dtype == np.uint8 and arrays["magnitudes"].shape == (n,)
    assert int(arrays["magnitudes"].max()) < 2**bits


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_restore_is_bit_exact(bits):
    rng = np.random.default_rng(bits)
    for trial in range(6):
        density = float(rng.uniform(0.02, 1.0))
        a = conv(bits=bits, density=density, seed=trial)
        b = conv(bits=bits, density=density, seed=trial)
        set_latent(a, trial * 10 + bits)
        arrays = METHOD.export(a)
        METHOD.restore(b, arrays)
        assert torch.equal(b.effective_weight(), a.effective_weight())
        for key, values in METHOD.export(b).items():
            np.testing.assert_array_equal(values, arrays[key])


@pytest.mark.parametrize("bits", [1, 8])
def test_file_round_trip_is_bit_identical(bits, tmp_path):
    cfg = SupermaskConfig(method=AnalogConfig(bits=bits), density=0.4, seed=3)
    model = models.create("mlp", cfg, **MLP)
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    sgd_steps(model, x, torch.arange(16) % 4, 3)
    save(model, tmp_path / "a.hnn")
    again = load(tmp_path / "a.hnn")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_a_layer_without_connections_stores_empty_parts():
    layer = SupermaskLinear(1, 1, density=0.3, method="analog")
    assert METHOD.parts((1, 1), AnalogConfig(), 0.3) == [
        Part("signs", 0, 2),
        Part("magnitudes", 0, 4),
    ]
    assert torch.equal(layer.effective_weight().detach(), torch.zeros(1, 1))


def _item(arrays, bits=2, density=0.5):
    return LayerItem("fc", (2, 5), AnalogConfig(bits=bits), density, arrays)


def test_check_rejects_impossible_parts():
    good = {"signs": np.ones(5, bool), "magnitudes": np.array([0, 1, 2, 3, 3], np.uint8)}
    METHOD.check_layer(_item(good))
    with pytest.raises(ValueError, match=r"'fc'.*magnitude symbol 3"):
        METHOD.check_layer(_item(good, bits=1))
    with pytest.raises(ValueError, match=r"'fc'.*4 signs.*5 connections"):
        METHOD.check_layer(_item({**good, "signs": np.ones(4, bool)}))
    with pytest.raises(ValueError, match=r"'fc'.*6 magnitudes"):
        METHOD.check_layer(_item({**good, "magnitudes": np.zeros(6, np.uint8)}))


def test_config_validates_and_round_trips():
    cfg = method_config("analog", bits=3, noise=0.1, noise_seed=4)
    assert cfg == AnalogConfig(bits=3, noise=0.1, noise_seed=4)
    assert method_config(cfg.to_dict()) == cfg
    assert AnalogConfig() == AnalogConfig(bits=2, noise=0.0, noise_seed=0)
    for field, value in (
        ("bits", 0),
        ("bits", -1),
        ("bits", 9),
        ("bits", 2.5),
        ("noise", -0.1),
        ("noise", math.nan),
        ("noise", math.inf),
        ("noise_seed", -1),
        ("noise_seed", 2**64),
    ):
        with pytest.raises(ConfigError, match=field):
            method_config("analog", **{field: value})


def test_cost_is_stored_sign_plus_magnitude_with_a_mac():
    cost = METHOD.cost((8, 4, 3, 3), AnalogConfig(bits=3), 0.3)
    assert (cost.weight_source, cost.weight_bits, cost.op, cost.prng_streams) == (
        "stored",
        4,
        "mac",
        ("analog-topology",),
    )


# -------------------------------------------------------------------------------------- noise


def trained_analog_model():
    model = models.create("mlp", SupermaskConfig(method="analog", density=0.4, seed=1), **MLP)
    model.eval()
    return model


def test_noise_is_reproducible_eval_only_and_leaves_the_original_alone():
    model = trained_analog_model()
    x = torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = model(x)
        a, b, c = with_noise(model, 0.2, 1), with_noise(model, 0.2, 1), with_noise(model, 0.2, 2)
        assert torch.equal(a(x), b(x))  # same seed: same programmed values
        assert torch.equal(a(x), a(x))  # the same on every pass
        assert not torch.equal(a(x), c(x))
        assert not torch.equal(a(x), exact)
        assert torch.equal(with_noise(model, 0.0, 1)(x), exact)
        assert torch.equal(model(x), exact)  # a copy was changed, not the model
        a.train()
        assert torch.equal(a(x), model.train()(x))  # training mode never adds noise
    layer = next(m for m in a.modules() if isinstance(m, SupermaskLayer))
    assert layer.method_config == AnalogConfig(noise=0.2, noise_seed=1)
    w = layer.eval().effective_weight().detach()
    assert torch.all(w[~layer.topology] == 0)  # no wire, no noise
    with pytest.raises(ValueError, match="no analog layer"):
        with_noise(models.create("mlp", SupermaskConfig(method="edge-popup"), **MLP), 0.1)


def _deviation(noisy_models, x, exact) -> float:
    with torch.no_grad():
        return float(np.mean([(m(x) - exact).abs().mean().item() for m in noisy_models]))


def test_output_deviation_grows_with_noise():
    model = trained_analog_model()
    x = torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = model(x)
    sigmas = [0.01, 0.05, 0.2, 0.5]
    dev = [_deviation([with_noise(model, s, seed) for seed in range(4)], x, exact) for s in sigmas]
    assert all(a < b for a, b in itertools.pairwise(dev)), dev


def test_edge_popup_device_noise_makes_pruned_zeros_noisy():
    cfg = SupermaskConfig(method="edge-popup", density=0.3, seed=1)
    model = models.create("mlp", cfg, **MLP).eval()
    x = torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    plain = to_dense(model)
    with torch.no_grad():
        exact = model(x)
        assert torch.equal(edge_popup_with_device_noise(model, 0.0, 0)(x), exact)
        a = edge_popup_with_device_noise(model, 0.1, 5)
        assert torch.equal(a(x), edge_popup_with_device_noise(model, 0.1, 5)(x))
        assert not torch.equal(a(x), edge_popup_with_device_noise(model, 0.1, 6)(x))
    assert not any(isinstance(m, SupermaskLayer) for m in a.modules())
    relative = []
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, SupermaskLayer)]:
        kept = layer.support()
        w = a.get_submodule(name).weight.detach()
        assert torch.all(w[~kept] != 0)  # the pruned zeros picked up noise
        s = plain.get_submodule(name).weight.detach()[kept].abs().mean()
        relative.append(w[~kept] / s)  # relative to the layer's weight magnitude
    spread = torch.cat(relative).std().item()  # about 840 values: standard error 0.0025
    assert 0.09 < spread < 0.11
    sigmas = [0.01, 0.05, 0.2]
    dev = [_deviation([edge_popup_with_device_noise(model, s, k) for k in range(4)], x, exact)
           for s in sigmas]  # fmt: skip
    assert all(p < q for p, q in itertools.pairwise(dev)), dev
    with pytest.raises(ValueError, match="no edge-popup layer"):
        edge_popup_with_device_noise(trained_analog_model(), 0.1)
    with pytest.raises(ValueError, match="relative_std"):
        edge_popup_with_device_noise(model, -1.0)


def test_with_noise_survives_the_model_file(tmp_path):
    noisy = with_noise(trained_analog_model(), 0.1, 3)
    save(noisy, tmp_path / "n.hnn")
    again = load(tmp_path / "n.hnn").eval()
    x = torch.randn(8, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(again(x), noisy(x))
    clean = copy.deepcopy(again)
    assert torch.equal(with_noise(clean, 0.0, 3)(x), trained_analog_model()(x))
