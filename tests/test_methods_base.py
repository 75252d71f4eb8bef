"""Tests for hiddenite.methods.base: typed method configs, the registry, parts and costs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hiddenite.errors import ConfigError
from hiddenite.methods import (
    METHODS,
    DenseConfig,
    EdgePopupConfig,
    LayerCost,
    Method,
    MethodConfig,
    Part,
    get_method,
    method_config,
    register_method,
)
from hiddenite.methods.dense import Dense


def test_every_registered_method_names_its_config():
    assert {"edge-popup", "dense"} <= set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and method.config_type.method == name
        assert isinstance(method_config(name), method.config_type)


def test_configs_coerce_json_and_reject_wrong_types():
    multicoat = method_config({"name": "multicoat", "version": 1, "coat_ratios": [0.5, 0.25]})
    assert multicoat.coat_ratios == (0.5, 0.25)  # a JSON list becomes the declared tuple
    with pytest.raises(ConfigError, match="expected a number"):
        method_config("multicoat", coat_ratios=["a"])
    with pytest.raises(ConfigError, match="expected a string"):
        method_config("edge-popup", scope=3)
    with pytest.raises(ConfigError, match="expected an integer"):
        method_config("analog", bits=2.0)
    with pytest.raises(ConfigError, match="expected true or false"):
        method_config("binarized", scale=1)


def test_configs_are_versioned_and_named():
    data = EdgePopupConfig(scope="global").to_dict()
    assert data == {"name": "edge-popup", "version": 1, "scope": "global"}
    with pytest.raises(ConfigError, match="version 2 is not supported"):
        method_config({**data, "version": 2})
    with pytest.raises(ConfigError, match="names 'dense', expected 'edge-popup'"):
        EdgePopupConfig.from_dict({**data, "name": "dense"})
    with pytest.raises(ConfigError, match="unknown supermask method 'zip'"):
        method_config("zip")
    with pytest.raises(ConfigError, match="a name or a MethodConfig"):
        method_config(3)


def test_replace_and_describe():
    config = EdgePopupConfig()
    assert method_config(config, scope="global") == EdgePopupConfig(scope="global")
    assert config.describe() == "edge-popup(scope='layer')"
    assert DenseConfig().describe() == "dense()"


def test_the_registry_refuses_a_second_method_under_a_taken_name():
    @dataclass(frozen=True)
    class OtherConfig(MethodConfig):
        method = "dense"

    class Other(Dense):
        config_type = OtherConfig

    with pytest.raises(ValueError, match="already registered"):
        register_method(Other())
    assert get_method("dense").config_type is DenseConfig
    register_method(get_method("dense"))  # the same method again is a no-op


def test_parts_and_costs_validate():
    assert Part("mask", 10, 2).is_symbols and not Part("weight", 10, None).is_symbols
    assert Part("mask", 10, 2).to_dict() == {"name": "mask", "n": 10, "alphabet": 2}
    with pytest.raises(ValueError, match="weight_source"):
        LayerCost("flash", 1, "add", ())
    with pytest.raises(ValueError, match="op"):
        LayerCost("prng", 1, "fma", ())
    with pytest.raises(ValueError, match="weight_bits"):
        LayerCost("prng", 0, "add", ())


def test_a_method_must_define_what_it_computes_stores_and_costs():
    class Incomplete(Method):  # nothing implemented
        name = "incomplete"
        config_type = DenseConfig

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
