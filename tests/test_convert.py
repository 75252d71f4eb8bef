"""Tests for hiddenite.convert: supermask_, to_dense and SupermaskConfig.

The models here are hand-written and unknown to hiddenite: convolutions and linear layers
nested in Sequential, ModuleList and plain attributes, mixed with batch norm and activations.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, supermask_, to_dense
from hiddenite.convert import (
    CONFIG_VERSION,
    ConfigError,
    LayerPlan,
    can_materialize,
    materialize_,
    plan_layers,
)
from hiddenite.init import frozen_weights
from hiddenite.layers import SupermaskConv2d, SupermaskLayer, SupermaskLinear, is_supermask
from hiddenite.masks import GlobalThreshold, kept_count
from hiddenite.methods import DenseConfig, EdgePopupConfig, method_config
from hiddenite.methods.edge_popup import SCOPES
from hiddenite.ops import OperatorChoice, operator_choices, set_operator_choices_
from hiddenite.quant import ActQuantConfig, add_act_quantizers_, calibrate, input_quantizers

# named_modules() order of the five candidate layers of TinyNet
ORDER = ["stem.0", "blocks.0", "blocks.1", "head.proj", "fc"]


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 12)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.proj(x))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            [nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.Conv2d(8, 16, 3, stride=2, padding=1)]
        )
        self.bn = nn.BatchNorm2d(16)
        self.head = Head()
        self.fc = nn.Linear(12, 5, bias=False)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        x = self.bn(x).mean(dim=(2, 3))
        return self.fc(self.head(x))


def inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def method_names(model: nn.Module) -> list[str]:
    """The method name of each candidate layer of TinyNet, in ORDER."""
    return [get(model, n).method.name for n in ORDER]


GLOBAL = method_config("edge-popup", scope="global")


def trained(model: nn.Module, steps: int = 2) -> nn.Module:
    """A couple of optimizer steps so masks, BN statistics and biases are not at init."""
    model.train()
    for step in range(steps):
        model.zero_grad()
        model(inputs(100 + step)).square().mean().backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.5 * p.grad  # in place, like an optimizer step
    return model


# --------------------------------------------------------------------------- supermask_


def test_swaps_exactly_the_conv_and_linear_layers_in_order():
    model = TinyNet()
    bn, stem_bn, act = model.bn, model.stem[1], model.head.act
    out = supermask_(model, SupermaskConfig(density=0.3, seed=7))
    assert out is model
    converted = [(n, m) for n, m in model.named_modules() if is_supermask(m)]
    assert [n for n, _ in converted] == ORDER
    assert [m.layer_index for _, m in converted] == [0, 1, 2, 3, 4]
    for _, m in converted:
        assert m.method.name == "edge-popup" and m.seed == 7 and m.density == 0.3
        assert m.method_config == EdgePopupConfig() and not m.trains_weights
    assert isinstance(get(model, "stem.0"), SupermaskConv2d)
    assert isinstance(get(model, "head.proj"), SupermaskLinear)
    # everything else is the very same object
    assert model.bn is bn and model.stem[1] is stem_bn and model.head.act is act
    plain = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert plain == []


def test_converted_layers_keep_hyperparameters_and_get_seeded_weights():
    reference = TinyNet()
    model = supermask_(TinyNet(), SupermaskConfig(density=0.5, seed=3, init="kaiming-normal"))
    for index, name in enumerate(ORDER):
        old, new = get(reference, name), get(model, name)
        assert new.weight.shape == old.weight.shape
        assert (new.bias is None) == (old.bias is None)
        if isinstance(old, nn.Conv2d):
            for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
                assert getattr(new, attr) == getattr(old, attr)
        expected = frozen_weights(
            tuple(old.weight.shape),
            init="kaiming-normal",
            seed=3,
            layer_index=index,
            fan_in=math.prod(old.weight.shape[1:]),
            density=0.5,
            scale_by_density=True,  # the SupermaskConfig default
        )
        assert torch.equal(new.weight, expected)
    y = model(inputs())
    assert y.shape == (4, 5) and torch.isfinite(y).all()


def test_conversion_is_deterministic_across_instances():
    a = supermask_(TinyNet(), SupermaskConfig(seed=99))
    b = supermask_(TinyNet(), SupermaskConfig(seed=99))
    a.eval(), b.eval()
    assert torch.equal(a(inputs()), b(inputs()))
    c = supermask_(TinyNet(), SupermaskConfig(seed=100)).eval()
    assert not torch.equal(a(inputs()), c(inputs()))


def test_filter_fn_selects_and_renumbers():
    seen = []

    def only_convs(module, name):
        seen.append((type(module), name))
        return isinstance(module, nn.Conv2d)

    model = supermask_(TinyNet(), SupermaskConfig(), filter_fn=only_convs)
    # called with (module, qualified name), in named_modules order (how many times each:
    # test_filter_fn_is_called_once_per_candidate)
    assert list(dict.fromkeys(name for _, name in seen)) == ORDER
    assert all(kind in (nn.Conv2d, nn.Linear) for kind, _ in seen)
    assert [get(model, n).layer_index for n in ORDER[:3]] == [0, 1, 2]
    assert type(get(model, "head.proj")) is nn.Linear and type(model.fc) is nn.Linear

    model = supermask_(TinyNet(), SupermaskConfig(), filter_fn=lambda m, n: n != "stem.0")
    assert type(model.stem[0]) is nn.Conv2d
    assert [get(model, n).layer_index for n in ORDER[1:]] == [0, 1, 2, 3]


def test_filter_fn_is_called_once_per_candidate():
    seen = []

    def only_convs(module, name):
        seen.append(name)
        return isinstance(module, nn.Conv2d)

    supermask_(TinyNet(), SupermaskConfig(), filter_fn=only_convs)
    assert seen == ORDER
    # a filter with state (here: the first two candidates) must convert exactly those
    calls = []

    def first_two(module, name):
        calls.append(name)
        return len(calls) <= 2

    model = supermask_(TinyNet(), SupermaskConfig(), filter_fn=first_two)
    assert [is_supermask(get(model, n)) for n in ORDER] == [True, True, False, False, False]


def test_keep_first_and_last_dense():
    cfg = SupermaskConfig(keep_first_dense=True, keep_last_dense=True, seed=4)
    model = supermask_(TinyNet(), cfg)
    assert method_names(model) == ["dense", "edge-popup", "edge-popup", "edge-popup", "dense"]
    first = get(model, "stem.0")
    assert isinstance(first, SupermaskConv2d) and isinstance(first.weight, nn.Parameter)
    assert first.trains_weights and first.method_config == DenseConfig()
    assert not hasattr(first, "scores")
    # a dense layer keeps every weight; the converted ones keep the configured density
    assert first.density == 1.0 and model.fc.density == 1.0
    assert all(get(model, n).density == 0.5 for n in ORDER[1:-1])
    hidden_twin = get(supermask_(TinyNet(), SupermaskConfig(seed=4)), "stem.0")
    unscaled = get(supermask_(TinyNet(), SupermaskConfig(seed=4, scale_by_density=False)), "stem.0")
    assert torch.equal(first.weight.detach(), unscaled.weight)  # same frozen init
    # the hidden layer divides by sqrt(density) (the default scaled init); dense layers do not
    assert torch.allclose(hidden_twin.weight * math.sqrt(0.5), first.weight.detach(), rtol=1e-6)
    only_first = supermask_(TinyNet(), SupermaskConfig(keep_first_dense=True))
    assert method_names(only_first) == ["dense"] + ["edge-popup"] * 4
    only_last = supermask_(TinyNet(), SupermaskConfig(keep_last_dense=True))
    assert method_names(only_last) == ["edge-popup"] * 4 + ["dense"]


def test_keep_dense_with_a_single_candidate():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    supermask_(model, SupermaskConfig(keep_first_dense=True, keep_last_dense=True))
    assert model[1].method.name == "dense" and model[1].density == 1.0


def test_dense_method_config():
    model = supermask_(TinyNet(), SupermaskConfig(method="dense", density=0.3, seed=4))
    assert method_names(model) == ["dense"] * len(ORDER)
    assert all(get(model, n).trains_weights for n in ORDER)
    # a dense layer keeps every weight (density 1.0) and is never scaled by the density
    assert all(get(model, n).density == 1.0 for n in ORDER)
    unscaled = supermask_(TinyNet(), SupermaskConfig(density=0.3, seed=4, scale_by_density=False))
    for name in ORDER:
        assert torch.equal(get(model, name).weight.detach(), get(unscaled, name).weight)
    assert not any(name.endswith("scores") for name, _ in model.named_parameters())


def test_global_scope_shares_one_threshold():
    cfg = SupermaskConfig(method=GLOBAL, density=0.3, keep_last_dense=True, seed=2)
    model = supermask_(TinyNet(), cfg)
    hidden = [get(model, n) for n in ORDER[:-1]]
    groups = {id(layer.mask_group) for layer in hidden}
    assert len(groups) == 1
    group = hidden[0].mask_group
    assert isinstance(group, GlobalThreshold)
    assert group.layers == hidden
    assert group.density == 0.3 and group.attribute == "scores"
    # the dense twin is not in the group
    assert model.fc.method.name == "dense" and model.fc not in group.layers
    assert getattr(model.fc, "mask_group", None) is None
    total = sum(layer.scores.numel() for layer in hidden)
    kept = sum(int(layer.mask().sum()) for layer in hidden)
    assert kept == kept_count(total, 0.3)
    # after training the per-layer fractions drift apart but the total stays exact
    trained(model)
    kept = sum(int(layer.mask().sum()) for layer in hidden)
    assert kept == kept_count(total, 0.3)
    layer_scope = supermask_(TinyNet(), SupermaskConfig(density=0.3))
    for name in ORDER:
        layer = get(layer_scope, name)
        assert layer.mask_group is None
        assert int(layer.mask().sum()) == kept_count(layer.weight.numel(), 0.3)


def test_second_call_raises_and_changes_nothing():
    model = supermask_(TinyNet(), SupermaskConfig(seed=5))
    layers = [get(model, n) for n in ORDER]
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"no nn\.Conv2d or nn\.Linear"):
        supermask_(model, SupermaskConfig(seed=6))
    assert [get(model, n) for n in ORDER] == layers
    assert all(get(model, n).seed == 5 for n in ORDER)
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)


def test_second_call_converts_only_what_is_left():
    model = supermask_(TinyNet(), SupermaskConfig(), filter_fn=lambda m, n: n.startswith("stem"))
    stem = model.stem[0]
    supermask_(model, SupermaskConfig())
    assert model.stem[0] is stem
    assert all(is_supermask(get(model, n)) for n in ORDER)


def test_layer_indices_unique_after_two_calls():
    model = supermask_(TinyNet(), SupermaskConfig(), filter_fn=lambda m, n: n.startswith("stem"))
    supermask_(model, SupermaskConfig())
    indices = [get(model, n).layer_index for n in ORDER]
    assert len(set(indices)) == len(indices)


def test_no_candidates_raises():
    with pytest.raises(ValueError):
        supermask_(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)), SupermaskConfig())
    with pytest.raises(ValueError):
        supermask_(TinyNet(), SupermaskConfig(), filter_fn=lambda m, n: False)


def test_subclasses_of_linear_are_not_candidates():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(MyLinear(4, 4), nn.Linear(4, 2))
    supermask_(model, SupermaskConfig())
    assert type(model[0]) is MyLinear and is_supermask(model[1])


def test_config_type_is_checked():
    with pytest.raises(TypeError):
        supermask_(TinyNet(), {"density": 0.5})


def test_bare_layer_is_converted_or_rejected():
    layer = nn.Linear(6, 3)
    try:
        out = supermask_(layer, SupermaskConfig())
    except (ValueError, TypeError):
        return
    assert is_supermask(out)


def test_shared_module_stays_shared():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a

    model = supermask_(Tied(), SupermaskConfig())
    assert is_supermask(model.a) and model.a is model.b


# --------------------------------------------------------------------------- to_dense


CONFIGS = [
    SupermaskConfig(density=0.3, seed=1),
    SupermaskConfig(density=0.5, seed=2, method=GLOBAL, init="kaiming-uniform"),
    SupermaskConfig(density=0.1, seed=3, keep_first_dense=True, keep_last_dense=True),
    SupermaskConfig(method="dense", seed=4),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["layer", "global", "keep-dense", "dense"])
def test_to_dense_plain_modules_identical_outputs(cfg):
    model = trained(supermask_(TinyNet(), cfg)).eval()
    x = inputs(7)
    before = model(x)
    original_state = copy.deepcopy(model.state_dict())
    dense = to_dense(model)
    assert dense is not model
    assert not any(isinstance(m, SupermaskLayer) for m in dense.modules())
    for name in ORDER:
        layer = get(dense, name)
        assert type(layer) in (nn.Conv2d, nn.Linear)
        src = get(model, name)
        assert torch.equal(layer.weight, src.effective_weight().detach())
        assert (layer.bias is None) == (src.bias is None)
        assert layer.training is False
    assert torch.equal(dense(x), before)
    # the original is untouched
    assert all(is_supermask(get(model, n)) for n in ORDER)
    assert torch.equal(model(x), before)
    state = model.state_dict()
    assert state.keys() == original_state.keys()
    assert all(torch.equal(state[k], original_state[k]) for k in state)
    # a plain state_dict: weights (and biases, BN), no scores
    keys = set(dense.state_dict())
    assert not any(k.endswith("scores") for k in keys)
    assert {f"{n}.weight" for n in ORDER} <= keys


def test_to_dense_inplace_and_training_flag():
    model = supermask_(TinyNet(), SupermaskConfig(seed=8))
    model.train()
    out = to_dense(model, inplace=True)
    assert out is model
    assert not any(isinstance(m, SupermaskLayer) for m in model.modules())
    assert all(get(model, n).training for n in ORDER)
    dense_weight = model.fc.weight
    assert isinstance(dense_weight, nn.Parameter) and dense_weight.requires_grad


def test_to_dense_weights_are_sparse_with_exact_count():
    model = supermask_(TinyNet(), SupermaskConfig(density=0.25, seed=9))
    dense = to_dense(model)
    for name in ORDER:
        w = get(dense, name).weight
        assert int((w != 0).sum()) == kept_count(w.numel(), 0.25)


# --------------------------------------------------------------------------- SupermaskConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("density", 0.0),
        ("density", 1.5),
        ("density", -0.3),
        ("density", float("nan")),
        ("density", "0.5"),
        ("density", True),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", True),
        ("seed", 1.0),
        ("seed", "7"),
        ("init", "xavier"),
        ("method", 3),
        ("method", None),
        ("scale_by_density", 1),
        ("keep_first_dense", "yes"),
        ("keep_last_dense", None),
        ("gain", 0.0),
        ("gain", -1.0),
        ("gain", float("inf")),
        ("gain", float("nan")),
        ("gain", False),
        ("n_lanes", 0),
        ("n_lanes", 4.0),
        ("n_lanes", True),
        ("prng_version", 2),
        ("version", 3),
        ("version", 0),
        ("version", True),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"SupermaskConfig\.{field}\b"):
        SupermaskConfig(**{field: value})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_config_rejects_unknown_method_and_bad_method_arguments():
    with pytest.raises(ConfigError, match=r"unknown supermask method 'nope'") as info:
        SupermaskConfig(method="nope")
    assert "edge-popup" in str(info.value) and "dense" in str(info.value)  # the choices
    with pytest.raises(ConfigError, match=r"'edge-popup': scope"):
        SupermaskConfig(method=method_config("edge-popup", scope="model"))
    with pytest.raises(ConfigError, match=r"'edge-popup': scope"):
        SupermaskConfig.from_dict({"method": {"name": "edge-popup", "scope": "model"}})
    with pytest.raises(ConfigError, match="has no argument"):
        SupermaskConfig.from_dict({"method": {"name": "dense", "scope": "global"}})


def test_config_accepts_edges():
    SupermaskConfig(density=1.0, seed=0)
    SupermaskConfig(density=1, seed=2**64 - 1)
    SupermaskConfig(density=1e-9, gain=1, n_lanes=1)
    assert SCOPES == ("layer", "global")
    for scope in SCOPES:
        assert (
            SupermaskConfig(method=method_config("edge-popup", scope=scope)).method.scope == scope
        )


def test_config_defaults_and_frozen():
    cfg = SupermaskConfig()
    assert cfg.density == 0.5 and cfg.method == EdgePopupConfig() and cfg.method.scope == "layer"
    assert cfg.method_name == "edge-popup"
    assert cfg.n_lanes == 4096 and cfg.version == CONFIG_VERSION == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.density = 0.1
    # a method name becomes that method's typed config with its default arguments
    assert SupermaskConfig(method="dense").method == DenseConfig()
    assert SupermaskConfig(method="edge-popup") == cfg


@pytest.mark.parametrize(
    "cfg",
    [
        SupermaskConfig(),
        SupermaskConfig(
            density=0.3,
            init="kaiming-normal",
            seed=2**64 - 1,
            method="dense",
            scale_by_density=True,
            keep_first_dense=True,
            keep_last_dense=True,
            gain=1 / 3,
            n_lanes=17,
        ),
        SupermaskConfig(density=0.1 + 0.2, gain=math.pi),
        SupermaskConfig(density=0.2, method=GLOBAL, keep_last_dense=True, seed=5),
    ],
)
def test_config_json_round_trip(cfg):
    text = cfg.to_json()
    assert SupermaskConfig.from_json(text) == cfg
    assert SupermaskConfig.from_dict(cfg.to_dict()) == cfg
    data = json.loads(text)
    assert set(data) == {f.name for f in dataclasses.fields(SupermaskConfig)}
    assert list(data) == sorted(data)
    assert data["density"] == cfg.density and data["seed"] == cfg.seed
    assert data["version"] == 2
    # the method is stored as its own versioned config dict
    assert data["method"] == cfg.method.to_dict()
    assert data["method"]["name"] == cfg.method_name


def test_config_from_json_errors():
    good = SupermaskConfig().to_dict()
    with pytest.raises(ConfigError, match="unknown field"):
        SupermaskConfig.from_dict({**good, "prune_rate": 0.5})
    with pytest.raises(ConfigError, match="prune_rate"):
        SupermaskConfig.from_json(json.dumps({"prune_rate": 0.5}))
    with pytest.raises(ConfigError, match=r"SupermaskConfig\.version"):
        SupermaskConfig.from_json(json.dumps({**good, "version": 99}))
    with pytest.raises(ConfigError, match=r"SupermaskConfig\.density"):
        SupermaskConfig.from_json(json.dumps({**good, "density": 2}))
    with pytest.raises(ConfigError):
        SupermaskConfig.from_json("{not json")
    with pytest.raises(ConfigError):
        SupermaskConfig.from_json("[1, 2]")
    # missing keys take their defaults
    assert SupermaskConfig.from_json('{"density": 0.25}') == SupermaskConfig(density=0.25)


# --------------------------------------------------------------------------- version 1 configs


def _version_1(**fields) -> dict:
    """A SupermaskConfig dict as version 1 wrote it (mode hidden/dense and scope)."""
    base = {
        "density": 0.3,
        "init": "kaiming-normal",
        "seed": 17,
        "mode": "hidden",
        "scope": "layer",
        "scale_by_density": True,
        "keep_first_dense": False,
        "keep_last_dense": True,
        "gain": 1.5,
        "n_lanes": 64,
        "prng_version": 1,
        "version": 1,
    }
    base.update(fields)
    return base


def test_version_1_dense_mode_loads_as_the_dense_method():
    cfg = SupermaskConfig.from_dict(_version_1(mode="dense"))
    assert cfg == SupermaskConfig(
        density=0.3,
        init="kaiming-normal",
        seed=17,
        method=DenseConfig(),
        scale_by_density=True,
        keep_last_dense=True,
        gain=1.5,
        n_lanes=64,
    )
    assert cfg.version == 2 and cfg.method_name == "dense"
    # and it survives a version-2 round trip unchanged
    assert SupermaskConfig.from_json(cfg.to_json()) == cfg


def test_version_1_hidden_global_loads_as_global_edge_popup():
    cfg = SupermaskConfig.from_dict(_version_1(mode="hidden", scope="global"))
    assert cfg == SupermaskConfig(
        density=0.3,
        init="kaiming-normal",
        seed=17,
        method=method_config("edge-popup", scope="global"),
        scale_by_density=True,
        keep_last_dense=True,
        gain=1.5,
        n_lanes=64,
    )
    assert cfg.version == 2 and cfg.method == EdgePopupConfig(scope="global")
    assert SupermaskConfig.from_json(json.dumps(_version_1(mode="hidden", scope="global"))) == cfg


def test_version_1_defaults_and_errors():
    # mode and scope may be missing: hidden, layer scope (version 1's defaults)
    assert SupermaskConfig.from_dict({"density": 0.25, "version": 1}) == SupermaskConfig(
        density=0.25
    )
    assert SupermaskConfig.from_dict({"mode": "hidden", "version": 1}).method == EdgePopupConfig()
    with pytest.raises(ConfigError, match="frozen"):
        SupermaskConfig.from_dict(_version_1(mode="frozen"))
    with pytest.raises(ConfigError, match="scope"):
        SupermaskConfig.from_dict(_version_1(scope="model"))
    # version 2 has no mode/scope fields
    with pytest.raises(ConfigError, match="unknown field"):
        SupermaskConfig.from_dict({**_version_1(), "version": 2})


# --------------------------------------------------------------------------- plan_layers


def test_plan_layers_indices_names_methods_and_densities():
    model = TinyNet()
    plans = plan_layers(model, SupermaskConfig(density=0.3, seed=1))
    assert all(isinstance(p, LayerPlan) for p in plans)
    assert [p.name for p in plans] == ORDER
    assert [p.names for p in plans] == [(n,) for n in ORDER]
    assert [p.index for p in plans] == [0, 1, 2, 3, 4]
    assert [p.shape for p in plans] == [tuple(get(model, n).weight.shape) for n in ORDER]
    assert [p.n for p in plans] == [get(model, n).weight.numel() for n in ORDER]
    assert all(p.config == EdgePopupConfig() and p.density == 0.3 for p in plans)
    # planning converts nothing
    assert not any(is_supermask(m) for m in model.modules())
    # and it is exactly what supermask_ then does
    supermask_(model, SupermaskConfig(density=0.3, seed=1))
    for plan in plans:
        layer = get(model, plan.name)
        assert layer.layer_index == plan.index and layer.density == plan.density
        assert layer.method_config == plan.config


def test_plan_layers_keep_dense_and_method_configs():
    cfg = SupermaskConfig(density=0.2, method=GLOBAL, keep_first_dense=True, keep_last_dense=True)
    plans = plan_layers(TinyNet(), cfg)
    first, *middle, last = plans
    for dense in (first, last):
        assert isinstance(dense.config, DenseConfig) and dense.density == 1.0
    assert all(p.config == EdgePopupConfig(scope="global") and p.density == 0.2 for p in middle)
    plans = plan_layers(TinyNet(), SupermaskConfig(density=0.2, keep_first_dense=True))
    assert isinstance(plans[0].config, DenseConfig) and plans[0].density == 1.0
    assert [p.density for p in plans[1:]] == [0.2] * 4
    # the dense method keeps every weight in every layer
    plans = plan_layers(TinyNet(), SupermaskConfig(density=0.2, method="dense"))
    assert all(p.config == DenseConfig() and p.density == 1.0 for p in plans)


def test_plan_layers_filter_shared_modules_and_second_call():
    plans = plan_layers(TinyNet(), SupermaskConfig(), filter_fn=lambda m, n: n != "stem.0")
    assert [p.name for p in plans] == ORDER[1:] and [p.index for p in plans] == [0, 1, 2, 3]

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a
            self.c = nn.Linear(4, 2)

    plans = plan_layers(Tied(), SupermaskConfig())
    assert [p.names for p in plans] == [("a", "b"), ("c",)] and [p.index for p in plans] == [0, 1]
    # after a first conversion the numbering continues after the existing supermask layers
    model = supermask_(TinyNet(), SupermaskConfig(), filter_fn=lambda m, n: n.startswith("stem"))
    plans = plan_layers(model, SupermaskConfig())
    assert [p.name for p in plans] == ORDER[1:] and [p.index for p in plans] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"no nn\.Conv2d or nn\.Linear"):
        plan_layers(TinyNet(), SupermaskConfig(), filter_fn=lambda m, n: False)


def test_plan_layers_on_a_meta_skeleton():
    with torch.device("meta"):
        skeleton = TinyNet()
    assert skeleton.fc.weight.device.type == "meta"
    cfg = SupermaskConfig(density=0.4, keep_first_dense=True)
    plans = plan_layers(skeleton, cfg)
    real = plan_layers(TinyNet(), cfg)
    assert plans == real
    assert [p.index for p in plans] == [0, 1, 2, 3, 4]
    assert isinstance(plans[0].config, DenseConfig) and plans[0].density == 1.0
    assert [p.density for p in plans[1:]] == [0.4] * 4


@pytest.mark.parametrize("gain", [1e38, 16.000001, float("inf"), float("nan"), 0.0, -1.0])
def test_gains_that_could_overflow_float32_are_refused(gain):
    with pytest.raises(ConfigError, match="gain"):
        SupermaskConfig(gain=gain)


def test_the_largest_gain_keeps_the_deepest_unnormalised_zoo_model_finite():
    from hiddenite import models

    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28) * 3  # a few standard deviations of a normalised image
    for density in (0.05, 1.0):
        config = SupermaskConfig(gain=16.0, density=density, init="kaiming-normal", seed=2)
        model = models.create("conv8", config, width=0.25).eval()
        with torch.no_grad():
            out = model(x)
        assert torch.isfinite(out).all()
        assert out.abs().max() < 2.0**100  # far inside float32's 2**128


def test_a_boolean_version_is_not_version_1():
    data = {**SupermaskConfig().to_dict(), "version": True}
    with pytest.raises(ConfigError, match="version"):
        SupermaskConfig.from_dict(data)
    with pytest.raises(ConfigError, match="version True"):
        method_config({"name": "edge-popup", "version": True})


@pytest.mark.parametrize("method", ["edge-popup", "signed"])
def test_materialize_gives_the_state_of_building_on_the_device(method):
    """A model converted on ``meta`` and given memory equals the same model built and
    converted on the CPU with ``init_state=False``: weights, learned state (zero), batch
    norms (reset); nothing left on ``meta``; parameters stay parameters, buffers buffers."""

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 4, 1, bias=False),
            nn.BatchNorm2d(4, affine=False),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 5, bias=False),
        )

    config = SupermaskConfig(density=0.3, seed=3, method=method)
    with torch.device("meta"):
        skeleton = supermask_(build(), config, init_state=False)
    assert can_materialize(skeleton)
    model = materialize_(skeleton, "cpu")
    reference = supermask_(build(), config, init_state=False)
    got, want = model.state_dict(keep_vars=True), reference.state_dict(keep_vars=True)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].device.type == "cpu", key
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert isinstance(got[key], nn.Parameter) == isinstance(want[key], nn.Parameter), key
        assert got[key].requires_grad == want[key].requires_grad, key
        assert torch.equal(got[key], want[key]), key
    assert all(t.device.type == "cpu" for t in model.parameters())
    assert all(t.device.type == "cpu" for t in model.buffers())
    x = torch.randn(2, 3, 6, 6)
    model.eval(), reference.eval()
    assert torch.equal(model(x), reference(x))


def test_to_dense_keeps_input_quantizers_and_operators():
    """A quantized model multiplying with Mitchell's operator: the dense copy holds the same
    quantizers (frozen at the same scales) and operators, and computes the same outputs."""
    model = trained(supermask_(TinyNet(), SupermaskConfig(density=0.3, seed=5))).eval()
    add_act_quantizers_(model, ActQuantConfig(bits=4))
    calibrate(model, [inputs(1), inputs(2)])
    set_operator_choices_(model, {"blocks.0": OperatorChoice("exact", "mitchell")})
    x = inputs(7)
    before = model(x)
    dense = to_dense(model)
    assert [n for n, _ in input_quantizers(dense)] == [n for n, _ in input_quantizers(model)]
    for (_, a), (_, b) in zip(input_quantizers(dense), input_quantizers(model), strict=True):
        assert a is not b and a.frozen and torch.equal(a.scale, b.scale)
    assert operator_choices(dense) == operator_choices(model) != {}
    assert torch.equal(dense(x), before)
