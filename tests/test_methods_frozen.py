"""The ``frozen`` method (partially frozen random networks, Otsuka et al., TMLR 2025).

Checked against independent references: the freezing rule re-implemented in plain Python on
numpy PRNG words, ERK and EPL written naively (RigL's loop; water-filling) and on hand-computed
cases, edge-popup itself when nothing is frozen, and the stored file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, load, models, save
from hiddenite.errors import ConfigError
from hiddenite.fileformat import read_header
from hiddenite.layers import SupermaskLayer, SupermaskLinear
from hiddenite.masks import kept_count
from hiddenite.methods import LayerItem, get_method, method_config
from hiddenite.methods.frozen import (
    FrozenConfig,
    epl_densities,
    erk_densities,
    frozen_counts,
)
from hiddenite.prng import lanes_numpy, stream_id

MLP = {"in_channels": 1, "image_size": 6, "num_classes": 4, "hidden": (24, 12)}
CONV = {"in_channels": 1, "image_size": 8, "num_classes": 3, "width": 0.25}
SHAPES = [(16, 3, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3), (10, 64)]
MLP_SHAPES = [(300, 784), (100, 300), (10, 100)]
METHOD = get_method("frozen")


def frozen_layer(n_out=20, n_in=15, seed=7, layer_index=2, density=0.4, **config):
    cfg = FrozenConfig(**{"pruned": 0.3, "locked": 0.2, **config})
    return SupermaskLinear(
        n_in, n_out, density=density, seed=seed, layer_index=layer_index, method=cfg
    )


def build(arch="mlp", seed=3, density=0.3, **config):
    name, kwargs = ("mlp", MLP) if arch == "mlp" else ("conv2", CONV)
    cfg = SupermaskConfig(method=FrozenConfig(**config), seed=seed, density=density)
    return models.create(name, cfg, **kwargs)


def layers(model):
    return [m for m in model.modules() if isinstance(m, SupermaskLayer)]


def train_steps(model, steps=4, lr=2.0):
    shape = models.default_input_shape("mlp", **MLP)
    x = torch.randn((32, *shape), generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % MLP["num_classes"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return x


# ------------------------------------------------------------------------- config


def test_config_rejects_impossible_ratios():
    with pytest.raises(ConfigError, match=r"pruned \+ locked must be < 1"):
        FrozenConfig(pruned=0.6, locked=0.4)
    with pytest.raises(ConfigError, match=r"pruned \+ locked must be < 1"):
        method_config("frozen", pruned=0.7, locked=0.5)
    for bad in ({"pruned": 1.0}, {"pruned": -0.1}, {"locked": 1.0}, {"pruned": float("nan")}):
        with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
            FrozenConfig(**bad)
    with pytest.raises(ConfigError, match="distribution"):
        FrozenConfig(distribution="igq")
    with pytest.raises(ConfigError, match="inner"):
        FrozenConfig(inner="binarized")
    cfg = FrozenConfig(pruned=0.25, locked=0.125, distribution="erk")
    assert method_config(cfg.to_dict()) == cfg


def test_a_density_that_cannot_be_met_is_a_config_error():
    # above the unfrozen fraction, below the locked fraction: planning and a bare layer
    with pytest.raises(ConfigError, match="cannot be met"):
        METHOD.layer_configs(SHAPES, FrozenConfig(pruned=0.5), 0.6)
    with pytest.raises(ConfigError, match="cannot be met"):
        METHOD.layer_configs(SHAPES, FrozenConfig(pruned=0.2, locked=0.3), 0.2)
    with pytest.raises(ConfigError, match=r"choose a density in \[0, 0.5\]"):
        frozen_layer(density=0.8, pruned=0.5, locked=0.0)
    with pytest.raises(ConfigError, match="lower locked"):
        frozen_layer(density=0.1, pruned=0.2, locked=0.3)
    with pytest.raises(ConfigError):
        build(density=0.9, pruned=0.5)
    # the edge: density = 1 - pruned keeps every free weight
    layer = frozen_layer(density=0.5, pruned=0.5, locked=0.0)
    assert int(layer.support().sum()) == layer.weight.numel() - kept_count(300, 0.5)


# ------------------------------------------------------------------------- freezing


def naive_pattern(seed, layer_index, n, pruned, locked, n_lanes=4096):
    words = lanes_numpy(seed, layer_index, n, n_lanes, stream_id("frozen"))
    order = sorted(range(n), key=lambda i: (int(words[i]), i))
    p, r = kept_count(n, pruned), kept_count(n, locked)
    return set(order[:p]), set(order[p : p + r])


def test_frozen_positions_follow_the_documented_rule_with_exact_counts():
    for n_out, n_in, pruned, locked, density in (
        (20, 15, 0.3, 0.2, 0.4),
        (7, 9, 0.5, 0.0, 0.3),
        (33, 3, 0.1, 0.45, 0.5),
    ):
        layer = frozen_layer(n_out, n_in, density=density, pruned=pruned, locked=locked)
        n = n_out * n_in
        want_pruned, want_locked = naive_pattern(7, 2, n, pruned, locked)
        is_pruned, is_locked = METHOD.frozen_masks(layer)
        assert set(np.flatnonzero(is_pruned.numpy())) == want_pruned
        assert set(np.flatnonzero(is_locked.numpy())) == want_locked
        assert len(want_pruned) == kept_count(n, pruned)
        assert len(want_locked) == kept_count(n, locked)
        free = n - len(want_pruned) - len(want_locked)
        assert layer.scores.numel() == free
        support = layer.support().reshape(-1).numpy()
        assert int(support.sum()) == kept_count(n, density)  # density = overall kept
        assert not support[list(want_pruned)].any() and support[list(want_locked)].all()


def test_frozen_positions_depend_on_the_seed_and_layer_only():
    a, b = frozen_layer(seed=7), frozen_layer(seed=7)
    other_seed, other_layer = frozen_layer(seed=8), frozen_layer(layer_index=3)
    masks = [METHOD.frozen_masks(x) for x in (a, b, other_seed, other_layer)]
    assert all(torch.equal(u, v) for u, v in zip(masks[0], masks[1], strict=True))
    assert not torch.equal(masks[0][0], masks[2][0])
    assert not torch.equal(masks[0][0], masks[3][0])


def test_frozen_positions_never_change_in_training():
    model = build(pruned=0.4, locked=0.2, density=0.45)
    before = [(m.support().clone(), *METHOD.frozen_masks(m)) for m in layers(model)]
    train_steps(model, steps=5)
    changed = 0
    for m, (support, pruned, locked) in zip(layers(model), before, strict=True):
        after = m.support()
        assert not after[pruned].any() and after[locked].all()
        assert torch.equal(METHOD.frozen_masks(m)[0], pruned)
        assert int(after.sum()) == kept_count(after.numel(), m.density)
        changed += int((after != support).sum())
    assert changed > 0, "training moved no free mask bit"


def test_nothing_frozen_is_edge_popup_bit_for_bit():
    shape = models.default_input_shape("mlp", **MLP)
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(2))
    plain = models.create("mlp", SupermaskConfig(method="edge-popup", seed=4, density=0.3), **MLP)
    frozen = models.create(
        "mlp", SupermaskConfig(method=FrozenConfig(pruned=0.0), seed=4, density=0.3), **MLP
    )
    with torch.no_grad():
        assert torch.equal(frozen(x), plain(x))
    for f, p in zip(layers(frozen), layers(plain), strict=True):
        assert torch.equal(f.scores, p.scores.reshape(-1))


def test_scores_get_edge_popups_straight_through_gradient():
    layer = frozen_layer()
    x = torch.randn(6, 15, generator=torch.Generator().manual_seed(3))
    layer(x).square().sum().backward()
    grad_w = (2 * layer(x)).detach().T @ x  # d loss / d effective weight
    free = np.flatnonzero(
        ~(METHOD.frozen_masks(layer)[0] | METHOD.frozen_masks(layer)[1]).reshape(-1).numpy()
    )
    want = (grad_w * layer.weight).reshape(-1)[free] * torch.sgn(layer.scores.detach())
    torch.testing.assert_close(layer.scores.grad, want)


# ------------------------------------------------------------------------- distributions


def naive_erk(shapes, density):
    """RigL's get_sparsities_erdos_renyi, restated: density -> per-layer densities."""
    n = [math.prod(s) for s in shapes]
    dense = []
    while True:
        rhs, divisor, probs = 0.0, 0.0, {}
        for i, s in enumerate(shapes):
            if i in dense:
                rhs -= n[i] * (1 - density)
            else:
                rhs += n[i] * density
                probs[i] = sum(s) / n[i]
                divisor += probs[i] * n[i]
        eps = rhs / divisor
        biggest = max(probs.values())
        if biggest * eps > 1:
            dense += [i for i, p in probs.items() if p == biggest]
            continue
        return [1.0 if i in dense else eps * probs[i] for i in range(len(shapes))]


def naive_epl(shapes, density):
    n = [math.prod(s) for s in shapes]
    left, budget = list(range(len(n))), density * sum(n)
    out = [1.0] * len(n)
    while left:
        share = budget / len(left)
        small = [i for i in left if n[i] <= share]
        if not small:
            for i in left:
                out[i] = share / n[i]
            break
        for i in small:
            budget -= n[i]
            left.remove(i)
    return out


def test_erk_and_epl_on_hand_computed_cases():
    # ERK: raw 0.2 and 0.02, eps = 5050/220 makes the small layer 4.59 -> dense; then
    # eps = 4950/200 gives the big one 0.495. EPL: 2525 each caps the small one the same way.
    assert erk_densities([(10, 10), (100, 100)], 0.5) == pytest.approx([1.0, 0.495])
    assert epl_densities([(10, 10), (100, 100)], 0.5) == pytest.approx([1.0, 0.495])
    # EPL without capping: 1300 / 3 kept weights each
    got = epl_densities([(20, 50), (40, 50), (100, 100)], 0.1)
    assert got == pytest.approx([1300 / 3 / 1000, 1300 / 3 / 2000, 1300 / 3 / 10000])
    # ERK of a single layer is the density itself; at density 1 everything is dense
    assert erk_densities([(30, 40)], 0.3) == pytest.approx([0.3])
    assert erk_densities(SHAPES, 1.0) == [1.0] * len(SHAPES)


@pytest.mark.parametrize("shapes", [SHAPES, MLP_SHAPES, [(8, 4, 3, 3), (8, 8, 1, 1), (5, 72)]])
@pytest.mark.parametrize("unfrozen", [0.05, 0.3, 0.5, 0.8])
def test_erk_and_epl_match_naive_references(shapes, unfrozen):
    assert erk_densities(shapes, unfrozen) == pytest.approx(naive_erk(shapes, unfrozen))
    assert epl_densities(shapes, unfrozen) == pytest.approx(naive_epl(shapes, unfrozen))
    for got in (erk_densities(shapes, unfrozen), epl_densities(shapes, unfrozen)):
        kept = sum(d * math.prod(s) for d, s in zip(got, shapes, strict=True))
        assert kept == pytest.approx(unfrozen * sum(math.prod(s) for s in shapes))
        assert all(0 < d <= 1 for d in got)


@pytest.mark.parametrize("distribution", ["uniform", "erk", "epl"])
@pytest.mark.parametrize("shapes", [SHAPES, MLP_SHAPES])
@pytest.mark.parametrize(("pruned", "locked", "density"), [(0.5, 0.0, 0.3), (0.7, 0.1, 0.25)])
def test_layer_configs_meet_the_global_targets(distribution, shapes, pruned, locked, density):
    cfg = FrozenConfig(pruned=pruned, locked=locked, distribution=distribution)
    planned = METHOD.layer_configs(shapes, cfg, density)
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    reference = {"erk": naive_erk, "epl": naive_epl}.get(distribution)
    want_unfrozen = reference(shapes, 1 - pruned) if reference else [1 - pruned] * len(shapes)
    n_pruned = n_locked = 0
    for (layer_cfg, layer_density), n, unfrozen in zip(planned, sizes, want_unfrozen, strict=True):
        assert layer_cfg.distribution == "uniform" and layer_cfg.inner == "edge-popup"
        counts = frozen_counts(n, layer_cfg, layer_density)  # consistent: does not raise
        assert abs((n - counts.pruned) - unfrozen * n) <= 1  # the distribution, rounded
        if reference:  # locked shares the unfrozen weights evenly
            assert abs(counts.locked - locked * total * unfrozen * n / (total * (1 - pruned))) <= 1
        # the overall kept fraction is the density, clipped to [locked, 1 - pruned] by count
        want_kept = min(max(kept_count(n, density), counts.locked), n - counts.pruned)
        assert counts.kept == want_kept
        if counts.locked <= kept_count(n, density) <= n - counts.pruned:
            assert layer_density == density
        n_pruned += counts.pruned
        n_locked += counts.locked
    if distribution == "uniform":  # each layer rounds on its own
        assert abs(n_pruned - pruned * total) <= len(shapes) / 2 + 1
        assert abs(n_locked - locked * total) <= len(shapes) / 2 + 1
    else:
        assert n_pruned == kept_count(total, pruned)
        assert n_locked == kept_count(total, locked)


def test_erk_keeps_a_dense_capped_layer_dense():
    planned = METHOD.layer_configs(MLP_SHAPES, FrozenConfig(pruned=0.5, distribution="erk"), 0.3)
    last, density = planned[-1]  # the 10x100 output layer: ERK density 9.2 -> capped at 1
    assert last.pruned == 0.0 and density == 0.3
    first, density = planned[0]  # the big layer keeps fewer unfrozen weights than 1 - pruned
    assert first.pruned > 0.5 and density == 0.3


# ------------------------------------------------------------------------- storage


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_file_round_trip_stores_only_the_free_bits(distribution, tmp_path):
    model = build("conv", pruned=0.6, locked=0.1, density=0.3, distribution=distribution)
    shape = models.default_input_shape("conv2", **CONV)
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    info = save(model, tmp_path / "m.hnn")
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m.hnn")(x), expected)
    entries = read_header(tmp_path / "m.hnn").entries
    for layer, entry in zip(layers(model), entries, strict=True):
        (part,) = entry.parts
        c = layer.frozen_counts
        assert part.name == "mask" and part.alphabet == 2
        assert part.n == c.free == layer.weight.numel() - c.pruned - c.locked
        assert part.counts == (c.free - c.free_kept, c.free_kept)
        assert entry.config == layer.method_config
    assert sum(e.bytes for e in info.entries) > 0


def test_decoded_parts_the_method_cannot_produce_are_rejected():
    layer = frozen_layer()
    cfg, shape = layer.method_config, tuple(layer.weight.shape)
    bits = METHOD.export(layer)["mask"]
    METHOD.check_layer(LayerItem("fc", shape, cfg, layer.density, {"mask": bits}))
    flipped = bits.copy()
    flipped[np.flatnonzero(~flipped)[0]] = True
    with pytest.raises(ValueError, match="'fc' keeps"):
        METHOD.check_layer(LayerItem("fc", shape, cfg, layer.density, {"mask": flipped}))
    with pytest.raises(ValueError, match="'fc' stores"):
        METHOD.check_layer(LayerItem("fc", shape, cfg, layer.density, {"mask": bits[:-1]}))
    with pytest.raises(ValueError, match="'fc'"):
        METHOD.check_layer(LayerItem("fc", shape, cfg, 0.9, {"mask": bits}))


def test_parts_and_cost():
    cfg = FrozenConfig(pruned=0.5, locked=0.125)
    (part,) = METHOD.parts((8, 4, 3, 3), cfg, 0.3)
    assert part.n == 288 - kept_count(288, 0.5) - kept_count(288, 0.125) and part.alphabet == 2
    cost = METHOD.cost((8, 4, 3, 3), cfg, 0.3)
    assert cost.weight_source == "prng" and cost.weight_bits == 1 and cost.op == "add"
    assert cost.prng_streams == ("weights", "frozen")
    assert METHOD.scale_density(cfg, 0.3) == 0.3


# ------------------------------------------------------------------------- global scope


def test_scope_is_validated_and_version_1_reads_as_layer_scope():
    with pytest.raises(ConfigError, match="scope must be one of layer, global"):
        FrozenConfig(scope="model")
    cfg = FrozenConfig(pruned=0.25, scope="global", distribution="epl")
    assert cfg.to_dict()["version"] == 3 and method_config(cfg.to_dict()) == cfg
    v1 = {"name": "frozen", "version": 1, "pruned": 0.25, "locked": 0.0}
    v1 |= {"distribution": "uniform", "inner": "edge-popup"}
    assert method_config(v1) == FrozenConfig(pruned=0.25, scope="layer")
    with pytest.raises(ConfigError, match="version-1 config has no scope"):
        method_config({**v1, "scope": "global"})
    v2 = {**v1, "version": 2, "scope": "global"}
    assert method_config(v2) == FrozenConfig(pruned=0.25, scope="global")
    with pytest.raises(ConfigError, match="version-2 config has no inner_args"):
        method_config({**v2, "inner_args": {}})
    with pytest.raises(ConfigError, match="version 4"):
        method_config({**v1, "version": 4})


def naive_global_mask(model):
    """Reference: the frozen pattern from the documented rule, then the top |score| over the
    free positions of all layers, ties to the earliest layer and lowest index."""
    ls = layers(model)
    total = sum(m.weight.numel() for m in ls)
    locked_total = 0
    candidates = []  # (-|score|, layer, flat position)
    patterns = []
    for i, m in enumerate(ls):
        n = m.weight.numel()
        cfg = m.method_config
        pruned, locked = naive_pattern(m.seed, m.layer_index, n, cfg.pruned, cfg.locked)
        free = sorted(set(range(n)) - pruned - locked)
        scores = m.scores.detach().abs().tolist()
        candidates += [(-scores[j], i, p) for j, p in enumerate(free)]
        patterns.append(locked)
        locked_total += len(locked)
    m_keep = kept_count(total, ls[0].density) - locked_total
    chosen = sorted(candidates)[:m_keep]
    masks = [np.zeros(m.weight.numel(), dtype=bool) for m in ls]
    for i, locked in enumerate(patterns):
        masks[i][list(locked)] = True
    for _, i, p in chosen:
        masks[i][p] = True
    return masks


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_global_scope_keeps_the_exact_count_by_score_over_all_free_positions(distribution):
    model = build(pruned=0.4, locked=0.1, density=0.3, scope="global", distribution=distribution)
    ls = layers(model)
    before = [METHOD.frozen_masks(m) for m in ls]
    for step in range(2):  # at initialization and after training
        total = sum(m.weight.numel() for m in ls)
        kept = sum(int(m.support().sum()) for m in ls)
        assert kept == kept_count(total, 0.3)
        for m, want in zip(ls, naive_global_mask(model), strict=True):
            assert np.array_equal(m.support().reshape(-1).numpy(), want)
        if step == 0:
            train_steps(model, steps=4)
    for m, (pruned, locked) in zip(ls, before, strict=True):  # frozen positions never change
        pruned_now, locked_now = METHOD.frozen_masks(m)
        assert torch.equal(pruned_now, pruned) and torch.equal(locked_now, locked)
        assert not m.support()[pruned].any() and m.support()[locked].all()
    # the layers do not each meet the density: the top-k is global
    assert any(int(m.support().sum()) != kept_count(m.weight.numel(), 0.3) for m in ls)


def test_global_scope_with_nothing_frozen_is_global_edge_popup_bit_for_bit():
    shape = models.default_input_shape("mlp", **MLP)
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(2))
    plain_cfg = method_config("edge-popup", scope="global")
    plain = models.create("mlp", SupermaskConfig(method=plain_cfg, seed=4, density=0.3), **MLP)
    frozen = build(seed=4, density=0.3, pruned=0.0, scope="global")
    train_steps(plain, steps=3)
    train_steps(frozen, steps=3)
    with torch.no_grad():
        assert torch.equal(frozen(x), plain(x))
    for f, p in zip(layers(frozen), layers(plain), strict=True):
        assert torch.equal(f.support(), p.support())


def test_global_density_is_checked_over_all_layers():
    for pruned, locked, density in ((0.5, 0.0, 0.55), (0.2, 0.3, 0.1)):
        cfg = FrozenConfig(pruned=pruned, locked=locked, scope="global")
        with pytest.raises(ConfigError, match="cannot be met"):
            METHOD.layer_configs(SHAPES, cfg, density)
    # by count: two layers of 3 each freeze round(1.5) = 2 pruned, 2 of 6 stay unfrozen, but
    # density 0.5 keeps 3 of 6
    with pytest.raises(ConfigError, match=r"global density 0\.5 keeps 3 of 6 weights"):
        METHOD.layer_configs([(3, 1), (3, 1)], FrozenConfig(pruned=0.5, scope="global"), 0.5)
    # per layer, ERK leaves the big first layer fewer unfrozen weights than the density needs
    # (layer scope clips it); global scope keeps the density exactly, unclipped
    cfg = FrozenConfig(pruned=0.6, distribution="erk", scope="global")
    planned = METHOD.layer_configs(MLP_SHAPES, cfg, 0.35)
    assert [d for _, d in planned] == [0.35] * 3
    assert all(c.scope == "global" for c, _ in planned)
    assert planned[0][0].pruned > 0.65  # the first layer alone could not keep 35 %
    model = models.create(
        "mlp", SupermaskConfig(method=cfg, density=0.35, seed=1), in_channels=1, image_size=28
    )
    total = sum(m.weight.numel() for m in layers(model))
    assert sum(int(m.support().sum()) for m in layers(model)) == kept_count(total, 0.35)


def test_global_file_round_trip_stores_only_the_free_bits(tmp_path):
    model = build("conv", pruned=0.5, locked=0.1, density=0.3, scope="global")
    shape = models.default_input_shape("conv2", **CONV)
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    save(model, tmp_path / "m.hnn")
    again = load(tmp_path / "m.hnn")
    with torch.no_grad():
        assert torch.equal(again(x), expected)
    entries = read_header(tmp_path / "m.hnn").entries
    kept = 0
    for layer, entry, other in zip(layers(model), entries, layers(again), strict=True):
        (part,) = entry.parts
        c = layer.frozen_counts
        assert part.n == c.free == layer.weight.numel() - c.pruned - c.locked
        free_kept = int(layer.support().sum()) - c.locked
        assert part.counts == (c.free - free_kept, free_kept)
        assert entry.config == layer.method_config and entry.config.scope == "global"
        assert torch.equal(other.support(), layer.support())
        kept += int(layer.support().sum())
    assert kept == kept_count(sum(m.weight.numel() for m in layers(model)), 0.3)


def test_global_decoded_parts_are_checked_over_all_layers():
    model = build(pruned=0.3, locked=0.2, density=0.4, scope="global")
    items = [
        LayerItem(f"l{i}", tuple(m.weight.shape), m.method_config, m.density, METHOD.export(m))
        for i, m in enumerate(layers(model))
    ]
    METHOD.check(items)
    bits = items[1].arrays["mask"].copy()
    bits[np.flatnonzero(~bits)[0]] = True  # one more kept: a layer alone cannot tell
    METHOD.check_layer(LayerItem("l1", items[1].shape, items[1].config, 0.4, {"mask": bits}))
    with pytest.raises(ValueError, match=r"global density 0\.4 keeps"):
        METHOD.check(
            [
                items[0],
                LayerItem("l1", items[1].shape, items[1].config, 0.4, {"mask": bits}),
                items[2],
            ]
        )
    with pytest.raises(ValueError, match="'l1' stores"):
        METHOD.check([LayerItem("l1", items[1].shape, items[1].config, 0.4, {"mask": bits[:-1]})])
