"""Hiddenite: hidden neural networks regenerated from seeds.

Frozen random weights come from Xorshift generators (:mod:`hiddenite.prng`); only a binary
supermask over them (plus small per-channel parameters) is learned and kept.

Stable surface::

    hiddenite.prng.xorshift32 / xorshift64 / xorshift128
    hiddenite.models.create(name, config=None, **kwargs)
    hiddenite.supermask_(model, SupermaskConfig(...), filter_fn=None)
    hiddenite.to_dense(model)
    hiddenite.SupermaskConfig
    hiddenite.summary(model, input_shape=None)
    layer.scores / layer.weight / layer.mask()   on every supermask layer
    hiddenite.save(model, path, arch=(name, kwargs)) / hiddenite.load(path)   the .hnn file
    hiddenite.ModelFormatError                   any bad, truncated or hostile model file
    hiddenite.codecs.encode(bits, codec) / decode(data, n, codec)   mask codecs
"""

from . import codecs, hw, models, prng
from .convert import ConfigError, SupermaskConfig, supermask_, to_dense
from .fileformat import ModelFormatError, load, save
from .layers import SupermaskConv2d, SupermaskLinear, is_supermask
from .summary import summary

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ModelFormatError",
    "SupermaskConfig",
    "SupermaskConv2d",
    "SupermaskLinear",
    "__version__",
    "codecs",
    "hw",
    "is_supermask",
    "load",
    "models",
    "prng",
    "save",
    "summary",
    "supermask_",
    "to_dense",
]
