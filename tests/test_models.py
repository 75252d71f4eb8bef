"""Tests for hiddenite.models: the zoo builds, runs, converts and rebuilds bit-exactly.

Independent references: published parameter counts (torchvision ResNet-18/50, the CIFAR
ResNet-18 of kuangliu/pytorch-cifar, Ramanujan et al.'s Conv-2/4/6/8 table) corrected for
what these models leave out (non-affine batch norm, no biases).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from hiddenite import SupermaskConfig, is_supermask, models, supermask_
from hiddenite.errors import ConfigError
from hiddenite.masks import kept_count
from hiddenite.methods import method_config

NAMES = list(models.MODELS)
IMAGENET = {"resnet18-imagenet", "resnet50"}


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def score_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("scores"))


def cheap_kwargs(name: str, small: bool = False) -> dict:
    kw = {}
    if name in IMAGENET:
        kw["image_size"] = 32  # stem /4, then stages down to 1x1: the smallest sensible input
    if small:
        if name == "mlp":
            kw["hidden"] = (30, 10)
        else:
            kw["width"] = 0.125
    return kw


@functools.cache
def plain(name: str) -> nn.Module:
    """One plain (unconverted) model per name, shared by the tests that only read it."""
    return models.create(name).eval()


def batch(name: str, seed: int = 0, **kw) -> torch.Tensor:
    shape = models.default_input_shape(name, **kw)
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))


def test_zoo_names():
    assert set(NAMES) == {
        "mlp",
        "conv2",
        "conv4",
        "conv6",
        "conv8",
        "conv2-bn",
        "conv4-bn",
        "conv6-bn",
        "conv8-bn",
        "resnet20",
        "resnet14",
        "se-resnet14",
        "se-conv2",
        "se-conv4",
        "se-conv6",
        "se-conv8",
        "resnet18",
        "resnet20-folded",
        "resnet18-folded",
        "resnet18-imagenet",
        "resnet50",
    }
    for name, info in models.MODELS.items():
        assert info.name == name and info.description
        assert models.model_info(name) is info


def test_default_input_shapes():
    assert models.default_input_shape("mlp") == (1, 28, 28)
    assert models.default_input_shape("conv4") == (1, 28, 28)
    assert models.default_input_shape("resnet20") == (1, 28, 28)
    assert models.default_input_shape("resnet50") == (3, 224, 224)
    assert models.default_input_shape("resnet18-imagenet", image_size=64) == (3, 64, 64)
    assert models.default_input_shape("conv2", in_channels=3, image_size=32) == (3, 32, 32)


@pytest.mark.parametrize("name", NAMES)
def test_every_model_builds_and_runs_plain(name):
    kw = cheap_kwargs(name)
    model = plain(name)  # built at the default size; the ImageNet ResNets pool adaptively
    assert not any(is_supermask(m) for m in model.modules())
    num_classes = models.MODELS[name].defaults["num_classes"]
    with torch.no_grad():
        y = model(batch(name, **kw))
    assert y.shape == (2, num_classes) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_model_hidden_runs_and_rebuilds_bit_identically(name):
    kw = cheap_kwargs(name, small=True)
    cfg = SupermaskConfig(density=0.3, seed=1234)
    model = models.create(name, cfg, **kw)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(is_supermask(m) and m.method.name == "edge-popup" for m in layers)
    assert [m.layer_index for m in layers] == list(range(len(layers)))
    for m in layers:
        assert int(m.mask().sum()) == kept_count(m.weight.numel(), 0.3)
    # move scores and batch-norm statistics away from their initial values
    with torch.no_grad():
        for m in layers:
            m.scores.mul_(torch.rand(m.scores.shape, generator=torch.Generator().manual_seed(7)))
        model.train()(batch(name, 1, **kw))
    model.eval()
    x = batch(name, 2, **kw)
    with torch.no_grad():
        y = model(x)
    num_classes = models.MODELS[name].defaults["num_classes"]
    assert y.shape == (2, num_classes) and torch.isfinite(y).all()
    state = model.state_dict()
    for layer_name, m in model.named_modules():
        if is_supermask(m):  # frozen weights are regenerated, never saved
            assert f"{layer_name}.weight" not in state and f"{layer_name}.scores" in state
    rebuilt = models.create(name, cfg, **kw).eval()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), y)
    if name not in ("mlp", "conv4", "resnet20"):
        return  # the check below is about the seed, not the architecture: keep it cheap
    other_seed = models.create(name, SupermaskConfig(density=0.3, seed=1235), **kw).eval()
    other_seed.load_state_dict(state)
    with torch.no_grad():
        assert not torch.equal(other_seed(x), y)


def test_resnet50_hidden_score_count():
    # torchvision resnet50: 25,557,032 parameters, of which 53,120 are batch-norm affine
    # terms and 1,000 the fc bias; here BN is non-affine and fc has no bias
    assert weight_count(plain("resnet50")) == 25_557_032 - 53_120 - 1_000
    hidden = models.create("resnet50", SupermaskConfig(density=0.3, seed=0))
    n = score_count(hidden)
    assert abs(n - 25.5e6) <= 0.01 * 25.5e6
    assert n == 25_502_912
    # nothing but scores is learned (non-affine batch norm, no biases)
    assert sum(p.numel() for p in hidden.parameters()) == n


def test_resnet18_counts_match_published():
    # torchvision resnet18: 11,689,512 = weights + 9,600 BN affine + 1,000 fc bias
    assert weight_count(plain("resnet18-imagenet")) == 11_689_512 - 9_600 - 1_000
    # CIFAR ResNet-18 (kuangliu/pytorch-cifar): 11,173,962 = weights + 9,600 BN + 10 bias
    cifar = models.create("resnet18", in_channels=3, image_size=32)
    assert weight_count(cifar) == 11_173_962 - 9_600 - 10


def test_mlp_count():
    assert weight_count(plain("mlp")) == 784 * 300 + 300 * 100 + 100 * 10


@pytest.mark.parametrize(
    ("name", "published"),
    [("conv2", 4.3e6), ("conv4", 2.4e6), ("conv6", 2.26e6), ("conv8", 5.3e6)],
)
def test_conv_models_on_cifar_shape(name, published):
    model = models.create(name, in_channels=3, image_size=32).eval()
    # Ramanujan et al. (edge-popup), CIFAR-10 parameter counts
    assert abs(weight_count(model) - published) <= 0.02 * published
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    hidden = models.create(
        name, SupermaskConfig(seed=3), in_channels=3, image_size=32, width=0.125
    ).eval()
    with torch.no_grad():
        assert hidden(x).shape == (2, 10)


def test_width_scales_channels():
    narrow = models.create("conv4", width=0.5)
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    fcs = [m for m in narrow.modules() if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fcs] == [128, 128, 10]
    wide = models.create("resnet20", width=2.0)
    convs = [m for m in wide.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 32 and max(c.out_channels for c in convs) == 128
    assert wide.fc.in_features == 128
    base, half = plain("resnet18"), models.create("resnet18", width=0.5)
    assert 0.2 < weight_count(half) / weight_count(base) < 0.3  # about width**2
    tiny = models.create("conv2", width=0.001)  # never below one channel
    assert all(m.out_channels >= 1 for m in tiny.modules() if isinstance(m, nn.Conv2d))


def test_other_kwargs():
    model = models.create("resnet20", num_classes=7, in_channels=3, bn_affine=True)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.affine for bn in bns)
    assert all(
        not bn.affine
        for bn in models.create("resnet20").modules()
        if isinstance(bn, nn.BatchNorm2d)
    )
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 20, 20)).shape == (2, 7)
    mlp = models.create("mlp", hidden=(50,), num_classes=3)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [50, 3]


def test_conv_with_batch_norm():
    plain = models.create("conv4", width=0.5)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in plain.modules())
    bn = models.create("conv4-bn", width=0.5)
    kinds = [type(m).__name__ for m in [*bn.features, *bn.classifier]]
    assert kinds == [
        *["Conv2d", "BatchNorm2d", "ReLU"] * 2,
        "MaxPool2d",
        *["Conv2d", "BatchNorm2d", "ReLU"] * 2,
        "MaxPool2d",
        "Flatten",
        *["Linear", "BatchNorm1d", "ReLU"] * 2,
        "Linear",
    ]
    assert all(m.affine for m in bn.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d))
    # the convolutions and linear layers are the same as without (same names in order)
    shapes = [
        tuple(m.weight.shape) for m in plain.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    assert shapes == [
        tuple(m.weight.shape) for m in bn.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        assert bn.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    hidden = models.create("conv2-bn", SupermaskConfig(density=0.5), width=0.25)
    assert sum(is_supermask(m) for m in hidden.modules()) == 5
    with pytest.raises(ConfigError, match="batch_norm"):
        models.create("conv4", batch_norm=True)  # a zoo name, not an argument


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="resnet99") as info:
        models.create("resnet99")
    for name in NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError):
        models.default_input_shape("nope")


def test_unknown_kwarg_lists_valid_arguments():
    with pytest.raises(ValueError, match="width") as info:
        models.create("mlp", width=2.0)
    for arg in ("in_channels", "image_size", "num_classes", "hidden"):
        assert arg in str(info.value)
    with pytest.raises(ValueError, match="hidden"):
        models.create("resnet20", hidden=(3,))
    with pytest.raises(ValueError, match="bn_affine"):
        models.create("conv4", bn_affine=True)


def test_image_too_small_for_conv8():
    with pytest.raises(ValueError):
        models.create("conv8", image_size=8)


def test_dense_method_and_keep_dense_through_create():
    model = models.create("mlp", SupermaskConfig(method="dense", seed=5))
    layers = [m for m in model.modules() if is_supermask(m)]
    assert layers and all(m.method.name == "dense" and m.trains_weights for m in layers)
    assert all(m.density == 1.0 for m in layers)
    assert score_count(model) == 0
    model = models.create("resnet20", SupermaskConfig(keep_first_dense=True, keep_last_dense=True))
    layers = [m for m in model.modules() if is_supermask(m)]
    assert layers[0].method.name == "dense" and layers[-1].method.name == "dense"
    assert layers[0].density == layers[-1].density == 1.0
    assert layers[-1] is model.fc
    assert all(m.method.name == "edge-popup" and not m.trains_weights for m in layers[1:-1])


def test_global_scope_through_create():
    cfg = SupermaskConfig(density=0.3, method=method_config("edge-popup", scope="global"))
    model = models.create("mlp", cfg, hidden=(30, 10))
    layers = [m for m in model.modules() if is_supermask(m)]
    group = layers[0].mask_group
    assert group is not None and all(m.mask_group is group for m in layers)
    total = sum(m.weight.numel() for m in layers)
    assert sum(int(m.mask().sum()) for m in layers) == kept_count(total, 0.3)


def test_init_state_false_leaves_zero_scores():
    cfg = SupermaskConfig(density=0.3, seed=2)
    drawn = models.create("mlp", cfg, hidden=(30, 10))
    blank = models.create("mlp", cfg, init_state=False, hidden=(30, 10))
    for a, b in zip(drawn.modules(), blank.modules(), strict=True):
        if is_supermask(a):
            assert torch.equal(b.scores, torch.zeros_like(b.scores))
            assert torch.equal(a.weight, b.weight)
    blank.load_state_dict(drawn.state_dict())
    x = batch("mlp", 3)
    with torch.no_grad():
        assert torch.equal(blank.eval()(x), drawn.eval()(x))


def test_model_errors_are_config_errors():
    with pytest.raises(ConfigError, match="nope"):
        models.model_info("nope")
    with pytest.raises(ConfigError, match="width"):
        models.check_arguments("mlp", width=2.0)
    with pytest.raises(ConfigError, match="conv8"):
        models.check_arguments("conv8", image_size=8)
    models.check_arguments("conv8", image_size=32)  # fine: no error


@pytest.mark.parametrize("name", ["mlp", "conv2", "resnet20", "se-resnet14", "resnet18-folded"])
def test_a_model_built_for_loading_skips_torch_init_and_equals_the_plain_build(name):
    """``init_state=False`` builds on ``meta`` and resets only the unconverted modules: no
    torch random draw, the same state as converting the ordinary build (the layers' biases,
    left for the loader, aside)."""
    config = SupermaskConfig(density=0.3, seed=2)
    before = torch.random.get_rng_state()
    fast = models.create(name, config, init_state=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # torch's init never ran
    info = models.model_info(name)
    plain = info.builder(**models._arguments(info, {}))
    supermask_(plain, config, init_state=False)
    want, got = plain.state_dict(keep_vars=True), fast.state_dict(keep_vars=True)
    assert list(got) == list(want)
    biases = {f"{n}.bias" for n, m in plain.named_modules() if is_supermask(m)}
    for key in set(want) - biases:
        assert torch.equal(got[key], want[key]), key
    for a, b in zip(fast.modules(), plain.modules(), strict=True):
        assert type(a) is type(b)
        if is_supermask(a):
            assert torch.equal(a.weight, b.weight)
