"""``signed``: the keep/hide/invert mask against a naive sort, a hand-computed case, the
documented straight-through gradient, exact counts (layer and global scope), config errors and
the file round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, load, models, save
from hiddenite.errors import ConfigError
from hiddenite.layers import SupermaskLayer, SupermaskLinear
from hiddenite.masks import kept_count
from hiddenite.methods import LayerItem, get_method, method_config
from hiddenite.methods.signed import SignedConfig

METHOD = get_method("signed")
MLP = {"in_channels": 1, "image_size": 6, "num_classes": 4, "hidden": (32, 16)}


def naive_factor(scores: np.ndarray, density: float) -> np.ndarray:
    """Reference: the first kept_count by (|score| desc, index asc) are visible; a visible
    weight is inverted when its score is negative (a zero score keeps)."""
    flat = scores.reshape(-1)
    order = sorted(range(flat.size), key=lambda i: (-abs(flat[i]), i))
    factor = np.zeros(flat.size, dtype=np.int64)
    for i in order[: math.floor(density * flat.size + 0.5)]:
        factor[i] = -1 if flat[i] < 0 else 1
    return factor.reshape(scores.shape)


def tied_scores(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, shape, generator=g).to(torch.float32)


def layer(density=0.3, shape=(24, 40), seed=1, scope="layer", **kwargs):
    cfg = SignedConfig(scope=scope)
    return SupermaskLinear(shape[1], shape[0], density=density, seed=seed, method=cfg, **kwargs)


def test_hand_computed_case():
    lay = layer(density=0.5, shape=(1, 4))
    with torch.no_grad():
        lay.scores.copy_(torch.tensor([[0.5, -0.9, 0.1, -0.2]]))
    w = lay.weight[0]
    assert lay.effective_weight()[0].tolist() == [w[0].item(), -w[1].item(), 0.0, 0.0]
    assert METHOD.export(lay)["signs"].tolist() == [1, 2, 0, 0]
    assert lay.support()[0].tolist() == [True, True, False, False]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_mask_matches_a_naive_sort_with_ties(seed, density):
    lay = layer(density=density, shape=(11, 19))
    scores = tied_scores(lay.scores.shape, seed)
    scores[0, 0] = -0.0  # a negative zero keeps, like a zero
    with torch.no_grad():
        lay.scores.copy_(scores)
    factor = naive_factor(scores.numpy(), density)
    assert torch.equal(lay.effective_weight(), lay.weight * torch.from_numpy(factor).float())
    np.testing.assert_array_equal(METHOD.factor(lay).numpy(), factor)
    assert int(np.count_nonzero(factor)) == kept_count(scores.numel(), density)
    symbols = METHOD.export(lay)["signs"]
    assert symbols.dtype == np.uint8
    np.testing.assert_array_equal(symbols, np.array([0, 1, 2])[factor.reshape(-1)])


def test_initial_scores_invert_about_half_the_visible_weights():
    lay = layer(density=0.3, shape=(128, 256))
    symbols = METHOD.export(lay)["signs"]
    visible = np.count_nonzero(symbols)
    assert visible == kept_count(symbols.size, 0.3)
    assert abs(np.count_nonzero(symbols == 2) / visible - 0.5) < 0.02


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradient_is_upstream_times_weight(scope):
    pair = [layer(density=0.3, scope=scope, seed=1), layer(density=0.3, scope=scope, seed=2)]
    METHOD.link(pair, pair[0].method_config)
    assert (pair[0].mask_group is not None) == (scope == "global")
    g = torch.Generator().manual_seed(4)
    for lay in pair:
        upstream = torch.randn(lay.weight.shape, generator=g)
        (lay.effective_weight() * upstream).sum().backward()
        assert torch.equal(lay.scores.grad, upstream * lay.weight)  # hidden weights too


def test_config_errors_and_json():
    with pytest.raises(ConfigError, match="scope"):
        SignedConfig(scope="channel")
    with pytest.raises(ConfigError, match="expected a string"):
        method_config("signed", scope=1)
    with pytest.raises(ConfigError, match="no argument"):
        method_config("signed", density=0.3)
    cfg = method_config("signed", scope="global")
    assert method_config(cfg.to_dict()) == cfg


def test_parts_and_cost():
    cfg = method_config("signed")
    parts = METHOD.parts((8, 4, 3, 3), cfg, 0.3)
    assert [(p.name, p.n, p.alphabet) for p in parts] == [("signs", 288, 3)]
    cost = METHOD.cost((8, 4, 3, 3), cfg, 0.3)
    assert (cost.weight_source, cost.weight_bits, cost.op, cost.prng_streams) == (
        "prng",
        1,
        "add",
        ("weights",),
    )


def test_restore_re_selects_exactly_with_tied_scores():
    trained = layer(density=0.3, shape=(16, 27), seed=3)
    with torch.no_grad():
        trained.scores.copy_(tied_scores(trained.scores.shape, 9))
    arrays = METHOD.export(trained)
    fresh = layer(density=0.3, shape=(16, 27), seed=3)
    METHOD.restore(fresh, arrays)
    assert torch.equal(fresh.effective_weight(), trained.effective_weight())
    np.testing.assert_array_equal(METHOD.export(fresh)["signs"], arrays["signs"])
    with pytest.raises(ValueError, match="0 \\(hide\\)"):
        METHOD.restore(fresh, {"signs": np.full(16 * 27, 3, dtype=np.uint8)})


def item(name, symbols, shape, density, scope="layer") -> LayerItem:
    cfg = method_config("signed", scope=scope)
    return LayerItem(name, shape, cfg, density, {"signs": np.asarray(symbols, dtype=np.uint8)})


def test_check_rejects_signs_the_method_cannot_produce():
    lay = layer(density=0.3, shape=(16, 27))
    signs = METHOD.export(lay)["signs"].copy()
    METHOD.check([item("fc1", signs, (16, 27), 0.3)])
    extra = signs.copy()
    extra[np.flatnonzero(extra == 0)[0]] = 2
    with pytest.raises(ValueError, match="'fc1' shows 131 of 432"):
        METHOD.check([item("fc1", extra, (16, 27), 0.3)])
    bad = signs.copy()
    bad[0] = 3
    with pytest.raises(ValueError, match=r"'fc1'.*symbol 3"):
        METHOD.check([item("fc1", bad, (16, 27), 0.3)])
    # inverting a visible weight keeps the count: a valid mask
    flipped = signs.copy()
    flipped[np.flatnonzero(flipped == 1)[0]] = 2
    METHOD.check([item("fc1", flipped, (16, 27), 0.3)])


def test_global_check_counts_the_total_only():
    a = np.zeros(100, dtype=np.uint8)
    b = np.zeros(60, dtype=np.uint8)
    a[:40] = 1  # 40 + 8 = 48 = kept_count(160, 0.3), unevenly spread
    b[:8] = 2
    items = [item("a", a, (10, 10), 0.3, "global"), item("b", b, (6, 10), 0.3, "global")]
    METHOD.check(items)
    b[8] = 1
    with pytest.raises(ValueError, match="show 49 of 160"):
        METHOD.check(items)


def trained_mlp(scope: str):
    cfg = SupermaskConfig(method=method_config("signed", scope=scope), density=0.3, seed=7)
    model = models.create("mlp", cfg, **MLP)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 4
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_file_round_trip_is_bit_identical(scope, tmp_path):
    model, x = trained_mlp(scope)
    with torch.no_grad():
        expected = model(x)
    save(model, tmp_path / "m.hnn")
    again = load(tmp_path / "m.hnn")
    with torch.no_grad():
        assert torch.equal(again(x), expected)
    layers = [m for m in model.modules() if isinstance(m, SupermaskLayer)]
    shown = [int(m.support().sum()) for m in layers]
    sizes = [m.weight.numel() for m in layers]
    if scope == "layer":
        assert shown == [kept_count(n, 0.3) for n in sizes]
    else:
        assert sum(shown) == kept_count(sum(sizes), 0.3)
        assert all(layer.mask_group is layers[0].mask_group for layer in layers)
