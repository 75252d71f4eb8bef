"""Supermask methods, one module each, registered by name in :data:`METHODS`.

=================  ==============================================================
name               what is learned / stored
=================  ==============================================================
``edge-popup``     top-k of a score per weight; a binary mask (layer or global)
``dense``          the dense twin: trained float weights
``trichromatic``   connectivity, sign and magnitude masks (C/S/M colours)
``multicoat``      C nested top-k coats of one score; a level 0..C per weight
``signed``         top-k visible weights, each kept or inverted; keep/hide/invert
``frozen``         edge-popup over the free positions of a seed-frozen layer; 1 bit each
``binarized``      baseline: trained latent weights, sign x per-channel mean|w|
``analog``         fixed seed topology; learned sign + b-bit magnitude per link
``progressive``    ProgressiveNN: N {-1,+1} digit planes, run at any 1..N bits
=================  ==============================================================

``method_config("edge-popup", scope="global")`` builds a method's typed config;
``get_method(name)`` returns the registered :class:`Method`.
"""

from . import (
    analog,
    binarized,
    dense,
    edge_popup,
    frozen,
    multicoat,
    progressive,
    signed,
    trichromatic,
)
from .base import (
    METHODS,
    LayerCost,
    LayerItem,
    Method,
    MethodConfig,
    Part,
    get_method,
    method_config,
    register_method,
)
from .dense import DenseConfig
from .edge_popup import EdgePopupConfig

__all__ = [
    "METHODS",
    "DenseConfig",
    "EdgePopupConfig",
    "LayerCost",
    "LayerItem",
    "Method",
    "MethodConfig",
    "Part",
    "analog",
    "binarized",
    "dense",
    "edge_popup",
    "frozen",
    "get_method",
    "method_config",
    "multicoat",
    "progressive",
    "register_method",
    "signed",
    "trichromatic",
]
