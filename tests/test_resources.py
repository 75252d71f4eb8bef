"""Tests for hiddenite.resources: memory estimated from shapes, refused before allocation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hiddenite import models, resources
from hiddenite.errors import ConfigError
from hiddenite.resources import (
    MAX_MODEL_WEIGHTS,
    ResourceError,
    activation_values,
    check_activations,
    check_weights,
    format_bytes,
    weight_count,
)


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
