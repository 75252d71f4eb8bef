"""Training checkpoints: scores, per-channel state, optimizer state and config; no weights.

A checkpoint is one safetensors file (no pickle anywhere): tensors are the model's
``state_dict()`` (which never holds the frozen weights: they are non-persistent buffers
rebuilt from the seed) under ``model.``, and the optimizer's per-parameter state under
``optimizer.<index>.<name>``. The metadata header holds JSON: the format name and version,
the training config (model name, its keyword arguments and the SupermaskConfig), the epoch
reached, the metric history and the optimizer's param groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .errors import UserError

FORMAT = "hiddenite-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 8 * 1024**3

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
]


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable or inconsistent; the message says which and why."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, in memory."""

    config: dict[str, Any]
    epoch: int
    history: list[dict[str, Any]]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.model_state.items()
    }
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": checkpoint.config,
        "epoch": checkpoint.epoch,
        "history": checkpoint.history,
    }
    if checkpoint.optimizer_state is not None:
        opt_tensors, opt_meta = _flatten_optimizer(checkpoint.optimizer_state)
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    metadata = {"hiddenite": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read_metadata(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a checkpoint (file too short)")
        size = int.from_bytes(head, "little")
        if size > min(path.stat().st_size - 8, 100 * 1024**2):
            raise CheckpointError(f"{path}: not a checkpoint (bad header length)")
        try:
            header = json.loads(fh.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: not a checkpoint (header is not JSON)") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    try:
        data = json.loads(meta["hiddenite"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path}: not a hiddenite checkpoint (no hiddenite metadata)"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a hiddenite checkpoint (format is not {FORMAT})")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {data.get('format_version')!r} is not supported "
            f"by this hiddenite (reads version {FORMAT_VERSION})"
        )
    for key, kind in (("config", dict), ("epoch", int), ("history", list)):
        if not isinstance(data.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing or malformed")
    return data


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: Any) -> dict[int, dict]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)  # ValueError when a part is missing
            state.setdefault(int(index), {})[name] = value
    if not isinstance(scalars, dict):
        raise TypeError("scalars must be an object")
    for index, values in scalars.items():
        if not isinstance(values, dict):
            raise TypeError("scalar entries must be objects")
        state.setdefault(int(index), {}).update(values)
    return state


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (train one with `hiddenite train`)")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: file is larger than any checkpoint hiddenite writes")
    data = _read_metadata(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from None
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if "optimizer" in data:
        opt = data["optimizer"]
        if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list):
            raise CheckpointError(f"{path}: checkpoint optimizer state is malformed")
        try:
            state = _unflatten_optimizer(tensors, opt.get("scalars", {}))
        except (ValueError, TypeError, AttributeError):
            raise CheckpointError(f"{path}: checkpoint optimizer state is malformed") from None
        optimizer_state = {"state": state, "param_groups": opt["param_groups"]}
    return Checkpoint(
        config=data["config"],
        epoch=data["epoch"],
        history=data["history"],
        model_state=model_state,
        optimizer_state=optimizer_state,
    )
