"""Freezing composed with the other binary-mask methods (``frozen`` with ``inner=NAME``).

Checked against hand-computed counts and a naive re-derivation of the frozen pattern (the
``frozen`` stream's words ranked in plain Python): frozen positions never change in training
and cost no stored bits, every part's count is exact, impossible combinations are one-line
ConfigErrors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, load, models, save
from hiddenite.errors import ConfigError
from hiddenite.fileformat import read_header
from hiddenite.layers import SupermaskLayer
from hiddenite.masks import kept_count
from hiddenite.methods import get_method, method_config
from hiddenite.methods.frozen import FrozenConfig
from hiddenite.methods.signed import INVERT

MLP = {"in_channels": 1, "image_size": 6, "num_classes": 4, "hidden": (24, 12)}
INNERS = {
    "trichromatic": {"magnitude_coats": [0.12, 0.04]},
    "signed": {},
    "multicoat": {"coat_ratios": [0.3]},
}


def build(inner: str, locked: float = 0.1, pruned: float = 0.3, density: float = 0.3, **kw):
    config = method_config(
        "frozen", inner=inner, locked=locked, pruned=pruned, inner_args=INNERS[inner], **kw
    )
    cfg = SupermaskConfig(method=config, seed=5, density=density)
    return models.create("mlp", cfg, **MLP)


def supermask_layers(model) -> list[SupermaskLayer]:
    return [m for m in model.modules() if isinstance(m, SupermaskLayer)]


def naive_pattern(layer) -> tuple[set[int], set[int]]:
    """(pruned, locked) position sets: words ranked ascending, ties by index, in Python."""
    n = layer.weight.numel()
    words = layer.words(n, "frozen").tolist()
    order = sorted(range(n), key=lambda i: (words[i], i))
    pruned = kept_count(n, layer.method_config.pruned)
    locked = kept_count(n, layer.method_config.locked)
    return set(order[:pruned]), set(order[pruned : pruned + locked])


def effective_factor(layer) -> torch.Tensor:
    """The effective weight over the frozen weight, flat (every frozen weight is non-zero)."""
    with torch.no_grad():
        return (layer.method.weight(layer) / layer.weight).reshape(-1)


def train(model, steps: int = 4) -> None:
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=2.0, weight_decay=0.01
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 6, 6, generator=gen)
    y = torch.randint(0, 4, (32,), generator=gen)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_frozen_positions_never_change_in_training(inner):
    model = build(inner)
    layers = supermask_layers(model)
    before = [effective_factor(layer) for layer in layers]
    train(model)
    changed = 0
    for layer, start in zip(layers, before, strict=True):
        pruned, locked = naive_pattern(layer)
        factor = effective_factor(layer)
        for i in pruned:
            assert factor[i] == 0  # frozen pruned: never used
        for i in locked:
            # frozen locked: kept; signed keeps it (+1), multicoat at level 1; trichromatic
            # learns its sign and level (used, so stored)
            if inner == "trichromatic":
                assert factor[i] != 0
            else:
                assert factor[i] == 1
        changed += int((factor != start).sum())
    assert changed > 0  # the free positions did learn


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_only_free_positions_are_stored_and_counts_are_exact(inner):
    model = build(inner)
    train(model, 2)
    layer = supermask_layers(model)[0]  # 24x36 = 864 weights
    # by hand: density 0.3 keeps floor(259.2 + 0.5) = 259, pruned 0.3 freezes 259,
    # locked 0.1 locks floor(86.4 + 0.5) = 86: 864 - 259 - 86 = 519 free, 259 - 86 = 173 kept
    assert layer.frozen_counts.free == 519 and layer.frozen_counts.free_kept == 173
    arrays = layer.method.export(layer)
    parts = {p.name: p for p in layer.method.parts((24, 36), layer.method_config, 0.3)}
    assert {k: v.size for k, v in arrays.items()} == {k: p.n for k, p in parts.items()}
    factor = effective_factor(layer)
    assert int(np.count_nonzero(factor.numpy())) == 259
    if inner == "trichromatic":
        assert arrays["connectivity"].size == 519
        assert int(arrays["connectivity"].sum()) == 173
        assert arrays["sign"].size == 259 and int(arrays["sign"].sum()) == 130  # 0.5 of 259
        level = arrays["magnitude"].astype(int)  # coats 0.12 and 0.04 of 864: 104 and 35
        assert (int((level >= 1).sum()), int((level >= 2).sum())) == (104, 35)
    elif inner == "signed":
        assert arrays["signs"].size == 519
        assert int(np.count_nonzero(arrays["signs"])) == 173
        inverted = int((arrays["signs"] == INVERT).sum())
        assert inverted == int((factor < 0).sum())  # locked ones are never inverted
    else:  # multicoat: coat 2 keeps kept_count(864, 0.3 * 0.3) = 78 weights, all free
        level = arrays["levels"].astype(int)
        assert level.size == 519
        assert (int((level >= 1).sum()), int((level >= 2).sum())) == (173, 78)
        assert int((factor == 2).sum()) == 78


def test_stored_bits_shrink_by_the_frozen_fraction():
    shape, density = (24, 36), 0.3
    plain = get_method("trichromatic").parts(shape, method_config("trichromatic"), density)
    frozen = method_config("frozen", inner="trichromatic", pruned=0.3, locked=0.1)
    composed = get_method("frozen").parts(shape, frozen, density)
    assert [(p.name, p.n) for p in plain] == [("connectivity", 864), ("sign", 259)]
    assert [(p.name, p.n) for p in composed] == [("connectivity", 519), ("sign", 259)]


def test_pattern_is_the_naive_ranking_and_restores_bit_exactly(tmp_path):
    model = build("trichromatic")
    train(model, 2)
    for layer in supermask_layers(model):
        pruned, locked = (m.reshape(-1) for m in layer.method.frozen_masks(layer))
        want_pruned, want_locked = naive_pattern(layer)
        assert set(torch.nonzero(pruned).reshape(-1).tolist()) == want_pruned
        assert set(torch.nonzero(locked).reshape(-1).tolist()) == want_locked
    path = tmp_path / "m.hnn"
    save(model, path)
    again = load(path)
    x = torch.randn(7, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again(x), model(x))
    # the file's connectivity holds only the free positions
    parts = {p.name: p.n for p in read_header(path).entries[0].parts}
    assert parts["connectivity"] == 519


def test_connectivity_scores_of_frozen_positions_get_no_gradient():
    model = build("trichromatic")
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    model(x).square().sum().backward()
    layer = supermask_layers(model)[0]
    pruned, locked = (m.reshape(-1) for m in layer.method.frozen_masks(layer))
    grad = layer.scores.grad.reshape(-1)
    assert torch.all(grad[pruned | locked] == 0) and torch.any(grad[~(pruned | locked)] != 0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"inner": "binarized"}, "inner 'binarized' cannot be frozen"),
        ({"inner": "analog"}, "inner 'analog' cannot be frozen"),
        ({"inner": "frozen"}, "freezing cannot nest"),
        ({"inner": "nope"}, "unknown supermask method 'nope'"),
        ({"inner": "trichromatic", "inner_args": {"connectivity": False}}, "connectivity=False"),
        ({"inner": "signed", "inner_args": {"scope": "global"}}, "per-layer selection"),
        ({"inner": "trichromatic", "scope": "global"}, "scope must be 'layer'"),
        ({"inner": "signed", "inner_args": {"bits": 2}}, "'signed' has no argument"),
        ({"inner": "trichromatic", "inner_args": [1]}, "must be a JSON object"),
        ({"inner_args": {"scope": "global"}}, "must be empty with inner='edge-popup'"),
        ({"inner": "multicoat", "pruned": 0.6, "locked": 0.4}, r"pruned \+ locked must be < 1"),
    ],
)
def test_impossible_combinations_are_one_line_config_errors(args, match):
    with pytest.raises(ConfigError, match=match) as info:
        method_config("frozen", **args)
    assert "\n" not in str(info.value)


def test_impossible_densities_of_the_inner_method_are_config_errors():
    # a magnitude coat at or above the density; coat 2 larger than the free kept positions
    with pytest.raises(ConfigError, match="must all be below the density"):
        build("trichromatic", density=0.1, pruned=0.5, locked=0.05)
    cfg = SupermaskConfig(
        method=FrozenConfig(inner="multicoat", pruned=0.3, locked=0.25, inner_args={}),
        density=0.3,
        seed=5,
    )
    with pytest.raises(ConfigError, match="coat 2 keeps"):
        models.create("mlp", cfg, **MLP)


def test_config_json_round_trip_keeps_inner_args():
    cfg = FrozenConfig(inner="trichromatic", inner_args={"sign_density": 0.25, "sign": True})
    data = cfg.to_dict()
    assert data["inner_args"] == {"sign": True, "sign_density": 0.25}
    assert method_config(data) == cfg and cfg.inner_config.sign_density == 0.25
