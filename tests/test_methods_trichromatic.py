"""Tests for the ``trichromatic`` method: connectivity, sign and magnitude supermasks.

Reference: a naive numpy/Python re-implementation of the three selections (a full sort of
``(-|score|, position)`` per colour, the sign and magnitude ones over the kept positions only)
and of the effective weight ``w * connectivity * (1 - 2 flip) * (1 + coats passed)``, on scores
full of ties; analytic straight-through gradients; hand-counted part sizes.
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
from hiddenite.methods.trichromatic import TrichromaticConfig
from hiddenite.prng import stream_id

# (connectivity, sign, magnitude_coats, density): every non-empty subset of the colours
SUBSETS = {
    "C": (True, False, (), 0.3),
    "S": (False, True, (), 1.0),
    "M": (False, False, (0.4, 0.1), 1.0),
    "CS": (True, True, (), 0.3),
    "CM": (True, False, (0.2,), 0.3),
    "SM": (False, True, (0.5, 0.25, 0.1), 1.0),
    "CSM": (True, True, (0.1, 0.05), 0.3),
}
MLP = {"in_channels": 1, "image_size": 6, "num_classes": 4, "hidden": (24, 12)}


def config(subset: str, sign_density: float = 0.5) -> tuple[TrichromaticConfig, float]:
    connectivity, sign, coats, density = SUBSETS[subset]
    cfg = TrichromaticConfig(
        connectivity=connectivity, sign=sign, magnitude_coats=coats, sign_density=sign_density
    )
    return cfg, density


def floor_half_up(n: int, k: float) -> int:
    return math.floor(k * n + 0.5)


def tied_scores(shape, seed: int) -> torch.Tensor:
    """Scores in {-1.5, ..., 1.5} step 0.5: heavy ties, zeros and both signs."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(-3, 4, size=shape).astype(np.float32) * 0.5)


def naive_top(abs_scores: np.ndarray, positions: list[int], m: int) -> set[int]:
    """The ``m`` positions of largest ``|score|`` among ``positions``; ties: lowest index."""
    order = sorted(positions, key=lambda i: (-abs_scores[i], i))
    return set(order[:m])


def reference(w, density, cfg, scores, sign_scores, magnitude_scores):
    """Naive effective weight and (kept, flip, level) per flat position."""
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    n = w.size
    everything = list(range(n))
    if cfg.connectivity:
        kept = naive_top(np.abs(scores.reshape(-1)), everything, floor_half_up(n, density))
    else:
        kept = set(everything)
    kept_list = sorted(kept)
    flip = set()
    if cfg.sign:
        m = floor_half_up(len(kept), cfg.sign_density)
        flip = naive_top(np.abs(sign_scores.reshape(-1)), kept_list, m)
    level = np.zeros(n, dtype=np.int64)
    for coat in cfg.magnitude_coats:
        passed = naive_top(np.abs(magnitude_scores.reshape(-1)), kept_list, floor_half_up(n, coat))
        for i in passed:
            level[i] += 1
    factor = np.zeros(n, dtype=np.int64)
    for i in kept:
        factor[i] = (-1 if i in flip else 1) * (1 + level[i])
    return w * factor.astype(np.float32), kept_list, flip, level


def make_layer(kind: str, cfg, density: float, seed: int = 5):
    if kind == "conv":
        return SupermaskConv2d(3, 5, 3, density=density, seed=seed, layer_index=1, method=cfg)
    return SupermaskLinear(12, 10, density=density, seed=seed, layer_index=1, method=cfg)


def set_tied_scores(layer, seed: int) -> None:
    shape = tuple(layer.weight.shape)
    with torch.no_grad():
        for j, name in enumerate(layer.method.owned_state(layer)):
            getattr(layer, name).copy_(tied_scores(shape, seed + j))


def score_arrays(layer):
    zeros = np.zeros(tuple(layer.weight.shape), dtype=np.float32)
    return [
        getattr(layer, name).detach().numpy() if hasattr(layer, name) else zeros
        for name in ("scores", "sign_scores", "magnitude_scores")
    ]


def build_mlp(cfg, density: float, seed: int = 3):
    return models.create("mlp", SupermaskConfig(method=cfg, density=density, seed=seed), **MLP)


def supermask_layers(model):
    return [m for m in model.modules() if isinstance(m, SupermaskLayer)]


def train_steps(model, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(7)
    x = torch.randn((16, 1, 6, 6), generator=g)
    y = torch.arange(16) % 4
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


# --------------------------------------------------------------------------- effective weight


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("subset", sorted(SUBSETS))
def test_effective_weight_matches_naive_reference_with_ties(kind, subset):
    cfg, density = config(subset, sign_density=0.4)
    layer = make_layer(kind, cfg, density)
    for seed in (1, 2):
        set_tied_scores(layer, seed * 10)
        weights = layer.weight.numpy()
        want, kept, flip, level = reference(weights, density, cfg, *score_arrays(layer))
        got = layer.effective_weight().detach().reshape(-1).numpy()
        assert np.array_equal(got, want)
        # the exported parts are the reference's selections, in position order
        arrays = layer.method.export(layer)
        if cfg.connectivity:
            expected = np.zeros(layer.weight.numel(), dtype=bool)
            expected[kept] = True
            assert np.array_equal(arrays["connectivity"], expected)
        if cfg.sign:
            assert np.array_equal(arrays["sign"], np.array([i in flip for i in kept]))
        if cfg.magnitude_coats:
            assert np.array_equal(arrays["magnitude"].astype(np.int64), level[kept])
        support = layer.support().reshape(-1).numpy()
        assert np.array_equal(np.flatnonzero(support), np.array(kept))


@pytest.mark.parametrize("subset", sorted(SUBSETS))
def test_restore_from_parts_is_exact_on_tied_scores(subset):
    cfg, density = config(subset)
    trained = make_layer("conv", cfg, density)
    set_tied_scores(trained, 3)
    arrays = trained.method.export(trained)
    fresh = make_layer("conv", cfg, density)
    fresh.method.restore(fresh, arrays)
    assert torch.equal(fresh.effective_weight(), trained.effective_weight())
    again = fresh.method.export(fresh)
    assert sorted(again) == sorted(arrays)
    for name, values in arrays.items():
        assert np.array_equal(again[name], values)


def test_straight_through_gradients_to_each_score():
    cfg, density = config("CSM")
    layer = make_layer("conv", cfg, density)
    set_tied_scores(layer, 4)
    scores, sign_scores, magnitude_scores = (torch.from_numpy(a) for a in score_arrays(layer))
    _, kept, flip, level = reference(layer.weight.numpy(), density, cfg, *score_arrays(layer))
    n = layer.weight.numel()
    c = torch.zeros(n)
    c[kept] = 1.0
    s = torch.ones(n)
    s[sorted(flip)] = -1.0
    m = 1.0 + torch.from_numpy(level).float()
    c, s, m = (t.reshape(layer.weight.shape) for t in (c, s, m))
    upstream = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(2))
    (layer.effective_weight() * upstream).sum().backward()
    w = layer.weight
    coats = len(cfg.magnitude_coats)
    torch.testing.assert_close(layer.scores.grad, upstream * w * s * m * torch.sgn(scores))
    torch.testing.assert_close(
        layer.sign_scores.grad, -2.0 * upstream * w * c * m * torch.sgn(sign_scores)
    )
    torch.testing.assert_close(
        layer.magnitude_scores.grad, coats * upstream * w * c * s * torch.sgn(magnitude_scores)
    )
    assert w.grad is None and not w.requires_grad


# --------------------------------------------------------------------------- parts and storage


@pytest.mark.parametrize("subset", sorted(SUBSETS))
def test_part_sizes_cover_only_kept_positions(subset):
    cfg, density = config(subset)
    method = get_method("trichromatic")
    shape = (8, 4, 3, 3)  # n = 288; at density 0.3, 86 kept (86.4 rounds down)
    n, n_kept = 288, (86 if cfg.connectivity else 288)
    parts = {p.name: (p.n, p.alphabet) for p in method.parts(shape, cfg, density)}
    want = {}
    if cfg.connectivity:
        want["connectivity"] = (n, 2)
    if cfg.sign:
        want["sign"] = (n_kept, 2)
    if cfg.magnitude_coats:
        want["magnitude"] = (n_kept, len(cfg.magnitude_coats) + 1)
    assert parts == want
    layer = SupermaskConv2d(4, 8, 3, density=density, seed=1, method=cfg)
    arrays = method.export(layer)
    assert {k: v.shape for k, v in arrays.items()} == {k: (v[0],) for k, v in want.items()}
    if cfg.connectivity:
        assert int(arrays["connectivity"].sum()) == 86
    if cfg.sign:
        assert int(np.count_nonzero(arrays["sign"])) == floor_half_up(n_kept, cfg.sign_density)
    for j, coat in enumerate(cfg.magnitude_coats, start=1):
        assert int(np.count_nonzero(arrays["magnitude"].astype(int) >= j)) == floor_half_up(n, coat)
    method.check_layer(LayerItem("x", shape, cfg, density, arrays))


@pytest.mark.parametrize("subset", sorted(SUBSETS))
def test_file_round_trip_is_bit_identical_for_each_subset(subset, tmp_path):
    cfg, density = config(subset)
    model = build_mlp(cfg, density)
    train_steps(model)
    x = torch.randn((5, 1, 6, 6), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = model(x)
    info = save(model, tmp_path / "m.hnn")
    again = load(tmp_path / "m.hnn")
    with torch.no_grad():
        assert torch.equal(again(x), expected)
    for a, b in zip(supermask_layers(model), supermask_layers(again), strict=True):
        assert torch.equal(a.effective_weight(), b.effective_weight())
    assert {p.name for e in info.entries for p in e.parts} == _part_names(cfg)


def _part_names(cfg) -> set[str]:
    return {p.name for p in get_method("trichromatic").parts((4, 4), cfg, 1.0)}


def test_connectivity_leaves_out_sign_bits_of_pruned_weights(tmp_path):
    dense_sign, _ = config("S")
    cfg, _ = config("CS")
    a = save(build_mlp(dense_sign, 1.0), tmp_path / "s.hnn")
    b = save(build_mlp(cfg, 0.1), tmp_path / "cs.hnn")

    def signs(info) -> int:
        return sum(p.n for e in info.entries for p in e.parts if p.name == "sign")

    assert signs(b) < 0.15 * signs(a)


@pytest.mark.parametrize(
    "part, change, match",
    [
        ("connectivity", lambda a: ~a, "keeps"),
        ("sign", lambda a: np.ones_like(a), "flips"),
        ("sign", lambda a: a[:-1], "stores"),
        ("magnitude", lambda a: np.minimum(a.astype(np.uint8) + 1, 2), "coat 1"),
        ("magnitude", lambda a: np.where(a == 1, 0, a).astype(np.uint8), "coat 1"),
        ("magnitude", lambda a: np.full(a.shape, 3, np.uint8), "outside"),
    ],
)
def test_check_layer_rejects_impossible_parts(part, change, match):
    cfg, density = config("CSM")
    layer = make_layer("conv", cfg, density)
    arrays = layer.method.export(layer)
    arrays[part] = change(arrays[part])
    item = LayerItem("features.3", tuple(layer.weight.shape), cfg, density, arrays)
    with pytest.raises(ValueError, match=match) as error:
        layer.method.check_layer(item)
    assert "features.3" in str(error.value)


def test_check_layer_rejects_connectivity_off_below_density_one():
    cfg, _ = config("S")
    layer = make_layer("linear", cfg, 1.0)
    item = LayerItem("fc", (10, 12), cfg, 0.5, layer.method.export(layer))
    with pytest.raises(ValueError, match=r"'fc'.*density must be 1\.0"):
        layer.method.check_layer(item)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"connectivity": False, "sign": False}, "enable at least one colour"),
        ({"sign_density": 0.0}, "sign_density"),
        ({"sign_density": 1.0}, "sign_density"),
        ({"sign_density": -0.2}, "sign_density"),
        ({"magnitude_coats": (0.1, 0.2)}, "strictly decreasing"),
        ({"magnitude_coats": (0.1, 0.1)}, "strictly decreasing"),
        ({"magnitude_coats": (0.0,)}, "magnitude_coats"),
        ({"magnitude_coats": (1.0,)}, "magnitude_coats"),
        ({"connectivity": "yes"}, "true or false"),
    ],
)
def test_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        method_config("trichromatic", **kwargs)


def test_config_from_json_lists_and_defaults():
    cfg = method_config("trichromatic", magnitude_coats=[0.2, 0.05])
    assert cfg.magnitude_coats == (0.2, 0.05)
    assert method_config(cfg.to_dict()) == cfg
    default = method_config("trichromatic")
    assert (default.connectivity, default.sign, default.sign_density) == (True, True, 0.5)
    assert default.magnitude_coats == ()
    # magnitude only is a valid colour set
    assert method_config("trichromatic", connectivity=False, sign=False, magnitude_coats=[0.5])


def test_density_contradictions_are_config_errors():
    sign_only, _ = config("S")
    with pytest.raises(ConfigError, match=r"density must be 1\.0"):
        build_mlp(sign_only, 0.5)
    with pytest.raises(ConfigError, match=r"density must be 1\.0"):
        make_layer("linear", sign_only, 0.5)
    coats = TrichromaticConfig(magnitude_coats=(0.3, 0.1))
    with pytest.raises(ConfigError, match="below the density"):
        build_mlp(coats, 0.3)
    with pytest.raises(ConfigError, match="below the density"):
        make_layer("conv", coats, 0.2)
    assert make_layer("conv", coats, 0.31) is not None


# --------------------------------------------------------------------------- preset and cost


def test_scalar_supermask_preset_values():
    cfg = TrichromaticConfig.scalar_supermask(0.3)
    assert (cfg.connectivity, cfg.sign) == (True, True)
    assert cfg.magnitude_coats == (0.079, 0.032)
    model = build_mlp(cfg, 0.3)
    train_steps(model, steps=2)
    for layer in supermask_layers(model):
        w = layer.weight.reshape(-1)
        effective = layer.effective_weight().detach().reshape(-1)
        levels = torch.tensor([0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0])
        hits = effective[None, :] == w[None, :] * levels[:, None]  # {0, ±w, ±2w, ±3w}
        assert bool(hits.any(0).all())
        ratio = levels[hits.float().argmax(0)]
        n = w.numel()
        magnitude = ratio.abs()
        assert int((magnitude > 0).sum()) == floor_half_up(n, 0.3)
        assert int((magnitude >= 2).sum()) == floor_half_up(n, 0.079)
        assert int((magnitude == 3).sum()) == floor_half_up(n, 0.032)
        assert int((ratio < 0).sum()) == floor_half_up(floor_half_up(n, 0.3), 0.5)
    with pytest.raises(ConfigError):
        TrichromaticConfig.scalar_supermask(0.0)


def test_cost():
    method = get_method("trichromatic")
    shape = (8, 4, 3, 3)
    plain = method.cost(shape, TrichromaticConfig(), 0.3)
    assert (plain.weight_source, plain.weight_bits, plain.op) == ("prng", 1, "add")
    assert plain.prng_streams == ("weights",)
    for coats, bits in [((0.2,), 2), ((0.2, 0.1), 3), ((0.2, 0.1, 0.05), 3), ((0.2,) * 1, 2)]:
        cost = method.cost(shape, TrichromaticConfig(magnitude_coats=coats), 0.3)
        assert (cost.weight_bits, cost.op) == (bits, "shift-add")
    four = TrichromaticConfig(magnitude_coats=(0.25, 0.2, 0.15, 0.1))
    assert method.cost(shape, four, 0.3).weight_bits == 1 + 3


def test_initial_scores_streams_and_determinism():
    assert stream_id("sign-scores") == 7 and stream_id("magnitude-scores") == 8
    cfg, density = config("CSM")
    a, b = make_layer("conv", cfg, density, seed=9), make_layer("conv", cfg, density, seed=9)
    c = make_layer("conv", cfg, density, seed=10)
    names = ("scores", "sign_scores", "magnitude_scores")
    for name in names:
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))
    assert not torch.equal(a.scores, a.sign_scores)
    assert not torch.equal(a.sign_scores, a.magnitude_scores)
    bound = 1.0 / math.sqrt(a.fan_in)
    assert torch.equal(a.sign_scores, a.uniform(tuple(a.weight.shape), bound, "sign-scores"))
    assert torch.equal(a.effective_weight(), b.effective_weight())


def test_connectivity_alone_is_edge_popup():
    cfg, density = config("C")
    tri = make_layer("conv", cfg, density, seed=4)
    ref = make_layer("conv", "edge-popup", density, seed=4)
    assert torch.equal(tri.scores, ref.scores)  # the same "scores" stream
    upstream = torch.randn(tri.weight.shape, generator=torch.Generator().manual_seed(5))
    for layer in (tri, ref):
        (layer.effective_weight() * upstream).sum().backward()
    assert torch.equal(tri.effective_weight(), ref.effective_weight())
    assert torch.equal(tri.scores.grad, ref.scores.grad)
    assert np.array_equal(tri.method.export(tri)["connectivity"], ref.method.export(ref)["mask"])
