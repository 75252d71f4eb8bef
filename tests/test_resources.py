"""Tests for hiddenite.resources: memory estimated from shapes, refused before allocation."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
from torch import nn

from hiddenite import models, resources
from hiddenite.cli import main
from hiddenite.convert import SupermaskConfig
from hiddenite.errors import ConfigError
from hiddenite.resources import (
    BACKWARD_FACTOR,
    EVAL_LIVE_OUTPUTS,
    MAX_MODEL_WEIGHTS,
    ResourceError,
    StepMemory,
    activation_values,
    check_activations,
    check_step_memory,
    check_weights,
    format_bytes,
    step_memory,
    weight_count,
)
from hiddenite.train import TrainConfig, check_memory, train


def test_weight_count_of_the_mlp_by_hand():
    with torch.device("meta"):
        mlp = models.MODELS["mlp"].builder(1, 28, 10)
    assert weight_count(mlp) == 784 * 300 + 300 * 100 + 100 * 10


def test_weight_cap_boundary():
    check_weights(MAX_MODEL_WEIGHTS, "at the cap")
    with pytest.raises(ResourceError, match=r"268,435,457 weights \(about 4\.3 GB to train\)"):
        check_weights(MAX_MODEL_WEIGHTS + 1, "one over")


def test_activation_values_by_hand():
    with torch.device("meta"):
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)
        )
    # input 2x1x4x4 = 32; conv 2x4x4x4 = 128; relu 128; flatten 128; linear 2x2 = 4
    assert activation_values(net, (2, 1, 4, 4)) == 32 + 128 + 128 + 128 + 4
    # an input that does not fit: the values up to the failing layer
    assert activation_values(net, (2, 1, 5, 5)) == 50 + 200 + 200 + 200


def test_check_activations_uses_the_smaller_of_limit_and_free_memory(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    check_activations(250, "small")
    with pytest.raises(ResourceError, match=r"1\.0 kB of memory available"):
        check_activations(251, "one value too many")
    monkeypatch.setattr(resources, "available_memory", lambda: None)
    with pytest.raises(ResourceError, match=r"limit of 17\.2 GB"):
        check_activations(resources.MAX_ACTIVATION_BYTES // 4 + 1, "over the limit")


def test_format_bytes():
    assert [format_bytes(n) for n in (12, 12_345, 3.2e9, 1.25e12)] == [
        "12 B",
        "12.3 kB",
        "3.2 GB",
        "1.2 TB",
    ]


@pytest.mark.parametrize(
    "name, kwargs, words",
    [
        ("mlp", {"hidden": [100_000_000]}, r"79,400,000,000 weights \(about 1\.3 TB to train\)"),
        ("conv4", {"width": 1000}, "1,929,219,136,000 weights"),
        ("resnet50", {"width": 10}, "2,365,124,480 weights"),
    ],
)
def test_huge_model_arguments_are_refused_before_allocation(name, kwargs, words):
    with pytest.raises(ResourceError, match=words):
        models.check_arguments(name, **kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"width": -1}, "width"),
        ({"width": 0}, "width"),
        ({"width": float("nan")}, "width"),
        ({"in_channels": 0}, "in_channels must be in"),
        ({"num_classes": True}, "num_classes must be an integer"),
        ({"image_size": 10**9}, "image_size must be in"),
    ],
)
def test_impossible_values_are_config_errors(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        models.check_arguments("conv4", **kwargs)


# --- the peak memory of a training or evaluation step (train/eval refuse what cannot fit) ---


def _meta_pair(name, config=None, **kwargs):
    """The supermask skeleton of zoo model ``name`` and its plain twin, both on ``meta``."""
    kwargs = {"in_channels": 1, "image_size": 28, "num_classes": 10, **kwargs}
    with torch.device("meta"):
        plain = models.create(name, **kwargs)
        skeleton = models.create(name, config or SupermaskConfig(), init_state=False, **kwargs)
    return skeleton, plain


def test_step_memory_of_a_small_mlp_by_hand():
    skeleton, plain = _meta_pair("mlp", hidden=[16])
    est = step_memory(skeleton, (8, 1, 28, 28), training=True, optimizer_values=1, forward=plain)
    w = 784 * 16 + 16 * 10  # frozen weights (buffers); scores of the same shapes (learned)
    acts = 8 * 784 + 8 * 784 + 8 * 16 + 8 * 16 + 8 * 10  # input, flatten, linear, relu, linear
    assert est == StepMemory(
        parameters=w, gradients=w, optimizer=w, buffers=w, masks=2 * w, activations=2 * acts
    )
    assert BACKWARD_FACTOR == 2
    assert est.values == 6 * w + 2 * acts == 101_984 and est.bytes == 4 * 101_984
    adam = step_memory(skeleton, (8, 1, 28, 28), training=True, optimizer_values=2, forward=plain)
    assert adam.optimizer == 2 * w and adam.values == est.values + w
    # evaluation: no gradients or optimizer state, the largest layer's mask, and the outputs
    # (all of them here: fewer than EVAL_LIVE_OUTPUTS x the largest, the input's 8 x 784)
    ev = step_memory(skeleton, (8, 1, 28, 28), training=False, forward=plain)
    assert EVAL_LIVE_OUTPUTS == 4 and acts < 4 * 8 * 784
    assert ev == StepMemory(w, 0, 0, w, 2 * 784 * 16, acts)
    # a deep chain: 4 x the largest output, not all of them (input 6 + 6 ReLUs of 6 = 42)
    with torch.device("meta"):
        chain = nn.Sequential(*[nn.ReLU() for _ in range(6)])
    assert step_memory(chain, (2, 3), training=False).activations == 4 * 6
    assert step_memory(chain, (2, 3), training=True).activations == 2 * 42
    # a plain model trains its weights: they are parameters, with gradients and momentum
    mlp = step_memory(plain, (8, 1, 28, 28), training=True)
    assert (mlp.parameters, mlp.gradients, mlp.optimizer, mlp.buffers) == (w, w, w, 0)


def _saved_for_backward(model, shape):
    """Values of the tensors autograd keeps for backward in one real training forward pass
    (parameters and buffers left out), split into weight-sized ones and the rest."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes() // 4, t.numel())
        return t

    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    weight_sizes = {  # by size: a linear layer keeps its masked weight transposed
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    }
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(shape))
    items = [v for k, v in kept.items() if k not in state]
    weights = sum(n for n, size in items if size in weight_sizes)
    return weights, sum(n for n, size in items if size not in weight_sizes)


@pytest.mark.parametrize(
    "name, shape",
    [("mlp", (32, 1, 28, 28)), ("conv4", (8, 1, 28, 28)), ("resnet18", (2, 1, 28, 28))],
)
def test_step_memory_against_what_autograd_keeps(name, shape):
    torch.manual_seed(0)
    skeleton, plain = _meta_pair(name)
    est = step_memory(skeleton, shape, training=True, forward=plain)
    real = models.create(name, SupermaskConfig(), in_channels=1, image_size=28, num_classes=10)
    real.train()
    # the plain twin on meta sees the same module outputs as the real supermask model
    hooked = 0

    def hook(_m, _i, out):
        nonlocal hooked
        hooked += out.numel()

    leaves = [m for m in real.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        real(torch.randn(shape))
    for h in handles:
        h.remove()
    assert est.activations == BACKWARD_FACTOR * (hooked + math.prod(shape))
    # what autograd really keeps: activations within [0.4, 1] x the forward values (measured
    # 0.50 mlp, 0.64 conv4, 0.60 resnet18: views such as Flatten's are hooked but not kept),
    # so the estimate (x BACKWARD_FACTOR, for the gradients) is within 5x of it; weight-sized
    # tensors (masked weights) at most the 2 per weight counted as masks (measured 0.12 to 1)
    weights, activations = _saved_for_backward(real, shape)
    forward_values = est.activations // BACKWARD_FACTOR
    assert 0.4 * forward_values <= activations <= forward_values
    assert weights <= est.masks


def _config(**kwargs):
    return TrainConfig(**{"epochs": 1, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "resnet18", "batch_size": 100_000},
        {"model": "conv4", "batch_size": 10_000_000},
        {"model": "mlp", "batch_size": 10**12},
    ],
)
def test_train_refuses_an_absurd_batch_before_reading_data(kwargs, tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 16 * 10**9)
    start = time.perf_counter()
    with pytest.raises(ResourceError) as info:  # tmp_path holds no data: none is read
        train(_config(**kwargs), tmp_path / "run", data_dir=tmp_path, log=None)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "\n" not in message and "16.0 GB available" in message
    assert f"--batch-size {kwargs['batch_size']} needs about" in message
    assert not (tmp_path / "run").exists()


def test_a_huge_image_is_refused_from_its_shape(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 16 * 10**9)
    config = _config(model="resnet18", batch_size=32)
    start = time.perf_counter()
    with pytest.raises(ResourceError, match=r"^resnet18 on folder: a training step .* TB"):
        check_memory(config, (3, 2048, 10), "folder")
    assert time.perf_counter() - start < 1.0
    check_memory(config, (3, 64, 10), "folder")  # the same model at 64x64 fits


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"model": "mlp"},
        {"model": "conv6", "batch_size": 256},
        {"model": "resnet18", "optimizer": "adam", "lr": 0.01},
        {"model": "resnet20", "eval_batch_size": 1000},
    ],
)
def test_fashion_mnist_configs_fit(kwargs, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 4 * 10**9)  # a small laptop
    config = _config(**kwargs)
    check_memory(config, (1, 28, 10), "fashion-mnist")
    check_memory(config, (1, 28, 10), "fashion-mnist", training=False)


def test_eval_refuses_an_absurd_eval_batch(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 16 * 10**9)
    config = _config(model="conv4", eval_batch_size=10**8)
    with pytest.raises(ResourceError, match=r"evaluation step at eval_batch_size 100000000"):
        check_memory(config, (1, 28, 10), "fashion-mnist test", training=False)
    small = dataclasses.replace(config, eval_batch_size=1000)
    check_memory(small, (1, 28, 10), "fashion-mnist test", training=False)


def test_check_step_memory_boundary():
    est = StepMemory(1, 0, 0, 0, 0, 249)
    check_step_memory(est, "exact", 1000)
    check_step_memory(est, "unknown memory", None)
    with pytest.raises(ResourceError, match=r"needs about 1\.0 kB .* than the 999 B available"):
        check_step_memory(est, "one byte over", 999)


def test_cli_train_refuses_with_one_line_and_exit_2(tmp_path, capsys):
    argv = ["train", "--batch-size", "10000000000", "--epochs", "1", "--no-progress"]
    argv += ["--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)]  # no data there
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "a training step at --batch-size 10000000000 needs about" in err
    assert not (tmp_path / "run").exists()
