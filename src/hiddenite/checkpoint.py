"""Training checkpoints: scores, per-channel state, optimizer state and config; no weights.

A checkpoint is one safetensors file (no pickle anywhere): tensors are the model's
``state_dict()`` (which never holds the frozen weights: they are non-persistent buffers
rebuilt from the seed) under ``model.``, and the optimizer's per-parameter state under
``optimizer.<index>.<name>``. The container metadata holds two strings: ``hiddenite``, a JSON
document (format name and version, the training config, the epoch reached, the metric history,
the optimizer's param groups and ``tensors_sha256``), and ``hiddenite_sha256``, the sha256 of
that JSON text. ``tensors_sha256`` is the sha256 of every tensor in key order (key, dtype,
shape, bytes), so a flipped bit anywhere in the file is caught.

Reading is as strict as the model file's: bounded sizes and JSON nesting, both checksums,
every field type- and range-checked, floating tensors finite (:func:`load_checkpoint`);
:func:`check_fits` then compares the state with the model and optimizer it is loaded into
(names, shapes, dtypes, param groups, the optimizer's per-parameter keys) before any of it is
used. Version 1 checkpoints (no checksums) are still read, with every other check.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .errors import UserError
from .validate import check_json_depth, open_regular

FORMAT = "hiddenite-checkpoint"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
MAX_CHECKPOINT_BYTES = 8 * 1024**3
MAX_HEADER_BYTES = 100 * 1024**2
MAX_EPOCH = 1_000_000
MAX_PARAM_GROUPS = 64
META_KEY = "hiddenite"
META_SHA_KEY = "hiddenite_sha256"
# The columns of one history row, as hiddenite.train writes them.
HISTORY_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
)
# Per-parameter state each optimizer keeps once it has stepped (a parameter that never had a
# gradient has none); a checkpoint must hold exactly these (plus the optional ones).
_OPTIMIZER_STATE = {
    "SGD": ({"momentum_buffer"}, set()),
    "Adam": ({"step", "exp_avg", "exp_avg_sq"}, {"max_exp_avg_sq"}),
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOP_FIELDS = {"format", "format_version", "config", "epoch", "history"}

__all__ = [
    "HISTORY_FIELDS",
    "Checkpoint",
    "CheckpointError",
    "check_fits",
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


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor in key order: key, dtype and shape (as JSON), then its bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode("utf-8") + b"\0")
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (format version 2, with checksums)."""
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
    meta["tensors_sha256"] = tensors_sha256(tensors)
    text = json.dumps(meta)
    metadata = {META_KEY: text, META_SHA_KEY: hashlib.sha256(text.encode("utf-8")).hexdigest()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


# --------------------------------------------------------------------------- reading


def _json(text: str | bytes, what: str, path: Path) -> Any:
    check_json_depth(text, f"{path}: {what}", CheckpointError)
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: not a checkpoint ({what} is not JSON)") from None


def _read_metadata(path: Path) -> tuple[dict[str, Any], str | None]:
    with open_regular(path, "checkpoint", CheckpointError) as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a checkpoint (file too short)")
        size = int.from_bytes(head, "little")
        file_bytes = path.stat().st_size
        if size > min(file_bytes - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: not a checkpoint (bad header length)")
        try:
            raw = fh.read(size)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    header = _json(raw, "header", path)
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    text = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: not a hiddenite checkpoint (no hiddenite metadata)")
    try:
        data = _json(text, "hiddenite metadata", path)
    except CheckpointError as exc:
        if "levels deep" in str(exc):
            raise
        raise CheckpointError(
            f"{path}: not a hiddenite checkpoint (no hiddenite metadata)"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a hiddenite checkpoint (format is not {FORMAT})")
    version = data.get("format_version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported "
            f"by this hiddenite (reads version {FORMAT_VERSION})"
        )
    sha = meta.get(META_SHA_KEY)
    if version >= 2:
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise CheckpointError(f"{path}: checkpoint lacks its metadata checksum")
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != sha:
            raise CheckpointError(
                f"{path}: checkpoint metadata checksum mismatch: the header is corrupted or "
                "was edited"
            )
    allowed = _TOP_FIELDS | {"optimizer"} | ({"tensors_sha256"} if version >= 2 else set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise CheckpointError(f"{path}: checkpoint has unknown field(s) {', '.join(unknown)}")
    for key, kind in (("config", dict), ("epoch", int), ("history", list)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing or malformed")
    if version >= 2:
        digest = data.get("tensors_sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise CheckpointError(f"{path}: checkpoint field 'tensors_sha256' is malformed")
    return data, data.get("tensors_sha256")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_history(path: Path, epoch: int, history: list) -> None:
    if not 0 <= epoch <= MAX_EPOCH:
        raise CheckpointError(f"{path}: checkpoint epoch {epoch} is not in [0, {MAX_EPOCH}]")
    if len(history) > epoch:
        raise CheckpointError(
            f"{path}: checkpoint history has {len(history)} rows, more than its epoch {epoch}"
        )
    for i, row in enumerate(history):
        what = f"{path}: checkpoint history row {i + 1}"
        if not isinstance(row, dict) or set(row) != set(HISTORY_FIELDS):
            raise CheckpointError(f"{what} must hold exactly {', '.join(HISTORY_FIELDS)}")
        if row["epoch"] != i + 1 or isinstance(row["epoch"], bool):
            raise CheckpointError(f"{what} has epoch {row['epoch']!r}, expected {i + 1}")
        for key in HISTORY_FIELDS[1:]:
            value = row[key]
            if not _number(value) or math.isinf(value):
                raise CheckpointError(f"{what}: {key} must be a finite number or NaN")
        for key in ("lr", "seconds"):
            if not row[key] >= 0:
                raise CheckpointError(f"{what}: {key} must be >= 0, got {row[key]!r}")


def _check_param_groups(path: Path, groups: Any) -> None:
    what = f"{path}: checkpoint optimizer param_groups"
    if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_PARAM_GROUPS:
        raise CheckpointError(f"{what} must be a list of 1 to {MAX_PARAM_GROUPS} objects")
    seen: set[int] = set()
    for group in groups:
        if not isinstance(group, dict):
            raise CheckpointError(f"{what} must hold objects")
        params = group.get("params")
        if not isinstance(params, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 1 << 31 for p in params
        ):
            raise CheckpointError(f"{what}: 'params' must be a list of parameter indices")
        if seen & set(params) or len(set(params)) != len(params):
            raise CheckpointError(f"{what}: a parameter index appears twice")
        seen.update(params)
        for key, value in group.items():
            if key == "params":
                continue
            items = value if isinstance(value, list) else [value]
            if len(items) > 8 or not all(
                v is None or isinstance(v, bool | str) or _number(v) for v in items
            ):
                raise CheckpointError(f"{what}: {key!r} must be a scalar or a short list")
            if any(_number(v) and not math.isfinite(v) for v in items):
                raise CheckpointError(f"{what}: {key!r} must be finite")


def _unflatten_optimizer(
    path: Path, tensors: dict[str, torch.Tensor], scalars: Any
) -> dict[int, dict]:
    bad = CheckpointError(f"{path}: checkpoint optimizer state is malformed")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            parts = key.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
                raise bad
            state.setdefault(int(parts[1]), {})[parts[2]] = value
    if not isinstance(scalars, dict):
        raise bad
    for index, values in scalars.items():
        if not index.isdigit() or not isinstance(values, dict):
            raise bad
        for value in values.values():
            if not (value is None or isinstance(value, bool) or _number(value)):
                raise bad
            if _number(value) and not math.isfinite(value):
                raise bad
        state.setdefault(int(index), {}).update(values)
    return state


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint` (never unpickles).

    Checks the framing, sizes, JSON nesting, both checksums (version 2), every metadata field
    and that every floating tensor is finite; :func:`check_fits` checks it against a model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (train one with `hiddenite train`)")
    if path.is_file() and path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: file is larger than any checkpoint hiddenite writes")
    data, digest = _read_metadata(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt checkpoint ({first})") from None
    if digest is not None and tensors_sha256(tensors) != digest:
        raise CheckpointError(
            f"{path}: checkpoint tensor checksum mismatch (tensors_sha256): the data is corrupted"
        )
    for key, value in tensors.items():
        if not key.startswith(("model.", "optimizer.")):
            raise CheckpointError(f"{path}: checkpoint holds an unexpected tensor {key!r}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: checkpoint tensor {key!r} holds NaN or infinity")
    _check_history(path, data["epoch"], data["history"])
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if "optimizer" in data:
        opt = data["optimizer"]
        if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list):
            raise CheckpointError(f"{path}: checkpoint optimizer state is malformed")
        if set(opt) - {"param_groups", "scalars"}:
            raise CheckpointError(f"{path}: checkpoint optimizer state is malformed")
        _check_param_groups(path, opt["param_groups"])
        state = _unflatten_optimizer(path, tensors, opt.get("scalars", {}))
        optimizer_state = {"state": state, "param_groups": opt["param_groups"]}
    elif any(k.startswith("optimizer.") for k in tensors):
        raise CheckpointError(f"{path}: checkpoint optimizer state is malformed")
    return Checkpoint(
        config=data["config"],
        epoch=data["epoch"],
        history=data["history"],
        model_state=model_state,
        optimizer_state=optimizer_state,
    )


# --------------------------------------------------------------------------- fitting


def _check_model_state(path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module):
    want = model.state_dict()
    extra = sorted(set(state) - set(want))
    lacking = sorted(set(want) - set(state))
    if extra or lacking:
        raise CheckpointError(
            f"{path}: checkpoint does not fit its model (unexpected {extra[:3]}, missing "
            f"{lacking[:3]})"
        )
    for key, value in state.items():
        ref = want[key]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise CheckpointError(
                f"{path}: checkpoint does not fit its model ({key!r} is {value.dtype} "
                f"{list(value.shape)}, the model has {ref.dtype} {list(ref.shape)})"
            )
        if key.endswith("running_var") and bool((value < 0).any()):
            raise CheckpointError(f"{path}: checkpoint tensor {key!r} holds negative variances")
        if key.endswith("num_batches_tracked") and bool((value < 0).any()):
            raise CheckpointError(f"{path}: checkpoint tensor {key!r} is negative")


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists)."""
    return list(value) if isinstance(value, tuple) else value


def _check_optimizer_state(path: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer):
    what = f"{path}: checkpoint optimizer state"
    fresh = optimizer.state_dict()
    groups = saved["param_groups"]
    if len(groups) != len(fresh["param_groups"]):
        raise CheckpointError(
            f"{what} has {len(groups)} parameter groups, the optimizer {len(fresh['param_groups'])}"
        )
    params: dict[int, torch.Tensor] = {}
    for group, ref, live in zip(groups, fresh["param_groups"], optimizer.param_groups, strict=True):
        if set(group) != set(ref):
            lacking = sorted(set(ref) - set(group))
            extra = sorted(set(group) - set(ref))
            raise CheckpointError(
                f"{what}: a parameter group lacks {lacking} / has unexpected {extra}"
            )
        if group["params"] != ref["params"]:
            raise CheckpointError(f"{what}: parameter groups do not fit the model's parameters")
        for key, value in ref.items():
            if key in ("params", "lr", "initial_lr"):
                continue
            if _plain(group[key]) != _plain(value) or type(group[key]) is not type(_plain(value)):
                raise CheckpointError(
                    f"{what}: {key} is {group[key]!r}, the run's config gives {value!r}"
                )
        if not (_number(group["lr"]) and group["lr"] >= 0):
            raise CheckpointError(f"{what}: lr must be a number >= 0, got {group['lr']!r}")
        params.update(zip(ref["params"], live["params"], strict=True))
    required, optional = _OPTIMIZER_STATE.get(type(optimizer).__name__, (set(), set()))
    for index, values in saved["state"].items():
        if index not in params:
            raise CheckpointError(f"{what}: state for parameter {index}, which does not exist")
        names = set(values)
        if required and not (required <= names <= required | optional):
            raise CheckpointError(
                f"{what}: parameter {index} holds {sorted(names)}; "
                f"{type(optimizer).__name__} keeps {sorted(required)}"
            )
        param = params[index]
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{what}: {name!r} of parameter {index} is not a tensor")
            if value.numel() == 1 and value.dim() == 0:
                if not value.is_floating_point() or not bool(value >= 0):
                    raise CheckpointError(f"{what}: {name!r} of parameter {index} is malformed")
            elif value.shape != param.shape or value.dtype != param.dtype:
                raise CheckpointError(
                    f"{what}: {name!r} of parameter {index} is {value.dtype} "
                    f"{list(value.shape)}, the parameter {param.dtype} {list(param.shape)}"
                )


def check_fits(
    path: str | Path,
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Raise CheckpointError unless ``checkpoint`` fits ``model`` (and ``optimizer``) exactly.

    Every state tensor must have the model's name, shape and dtype; the optimizer's param
    groups must list the same parameters with the same keys and hyperparameters (the learning
    rate excepted: the schedule sets it) and each parameter's state must be what that optimizer
    keeps, shaped like the parameter. Nothing is loaded: call ``load_state_dict`` after.
    """
    path = Path(path)
    _check_model_state(path, checkpoint.model_state, model)
    if optimizer is not None and checkpoint.optimizer_state is not None:
        _check_optimizer_state(path, checkpoint.optimizer_state, optimizer)
