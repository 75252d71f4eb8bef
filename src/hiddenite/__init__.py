"""Hiddenite: hidden neural networks regenerated from seeds.

Frozen random weights come from Xorshift generators (:mod:`hiddenite.prng`); only what a
supermask method learns over them (a binary mask, signs, coat levels, ...; see
:mod:`hiddenite.methods`) plus small per-channel parameters is kept.

Stable surface::

    hiddenite.prng.xorshift32 / xorshift64 / xorshift128
    hiddenite.models.create(name, config=None, **kwargs)
    hiddenite.supermask_(model, SupermaskConfig(method=..., density=...), filter_fn=None)
    hiddenite.method_config(name, **args) / hiddenite.methods.METHODS   the supermask methods
    hiddenite.to_dense(model)
    hiddenite.SupermaskConfig
    hiddenite.summary(model, codec=None)
    layer.weight / layer.effective_weight() / layer.mask()   on every supermask layer
    hiddenite.save(model, path) / hiddenite.load(path, model=None)   the .hnn file
    hiddenite.ModelFormatError                   any bad, truncated or hostile model file
    hiddenite.UserError                          base of every error a user's input causes
    hiddenite.codecs.encode(symbols, codec, alphabet=2) / decode(data, n, codec, alphabet=2)
"""

from . import codecs, hw, methods, models, prng
from ._version import __version__
from .convert import SupermaskConfig, supermask_, to_dense
from .errors import ConfigError, UserError
from .fileformat import ModelFormatError, load, save
from .layers import SupermaskConv2d, SupermaskLinear, is_supermask
from .methods import method_config
from .summary import summary

__all__ = [
    "ConfigError",
    "ModelFormatError",
    "SupermaskConfig",
    "SupermaskConv2d",
    "SupermaskLinear",
    "UserError",
    "__version__",
    "codecs",
    "hw",
    "is_supermask",
    "load",
    "method_config",
    "methods",
    "models",
    "prng",
    "save",
    "summary",
    "supermask_",
    "to_dense",
]
