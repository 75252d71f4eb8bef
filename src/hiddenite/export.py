"""From a training run to a model file: the architecture of a run and checkpoint export.

Sits above both :mod:`hiddenite.train` and :mod:`hiddenite.fileformat`, so that neither
imports the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

from .data import dataset_info
from .fileformat import ModelFileInfo, _full_kwargs, save
from .train import TrainConfig, load_trained

__all__ = ["arch_of", "export_checkpoint"]


def arch_of(config: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The (zoo name, full keyword arguments) of a :class:`~hiddenite.train.TrainConfig`.

    The same arguments :func:`hiddenite.train.build_model` passes: the data set's input
    channels, image size and class count, then the config's ``model_kwargs``.
    """
    in_channels, image_size, num_classes = dataset_info(config.dataset, config.data_options)
    kwargs = {
        "in_channels": in_channels,
        "image_size": image_size,
        "num_classes": num_classes,
        **config.model_kwargs,
    }
    return config.model, _full_kwargs(config.model, kwargs)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    codec: str | None = None,
    param_dtype: str = "float32",
    check: Callable[[nn.Module], None] | None = None,
) -> ModelFileInfo:
    """Export a training checkpoint (file or run folder) to a model file; return its header.

    The architecture and SupermaskConfig come from the checkpoint's TrainConfig. ``check`` is
    called with the trained model before anything is written (it raises to stop the export,
    e.g. when a second output could not be made from it).
    """
    model, config = load_trained(checkpoint)
    if check is not None:
        check(model)
    return save(
        model,
        path,
        arch=arch_of(config),
        config=config.supermask,
        codec=codec,
        param_dtype=param_dtype,
    )
