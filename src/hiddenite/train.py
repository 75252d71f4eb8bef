"""The training loop: hidden networks (or their dense twins) on in-memory image data.

No argument parsing here: everything comes from a :class:`TrainConfig`. A run directory
receives ``config.json``, ``metrics.csv``, ``metrics.json`` and ``checkpoint.safetensors``
(scores and per-channel state, never the frozen weights), each written atomically at the
end of every epoch, so ``resume`` continues exactly where the run stopped.

Determinism: the data order and augmentation of epoch ``e`` come from a generator seeded by
``(data_seed, e)``; on the CPU the same config gives the same result, bit for bit, whether
the run was interrupted and resumed or not.

Data-parallel (see :mod:`hiddenite.distributed`): when a ``torch.distributed`` process group
of several ranks is initialised (``torchrun ... -m hiddenite train``), ``batch_size`` is the
global batch, each rank trains on its piece of every batch (the loss is scaled so that the
all-reduced gradient is the global batch's mean), validation is sharded and all-reduced, and
only rank 0 writes files or logs. A last batch smaller than the number of ranks is skipped.
In one process or many, so is a training batch that would leave a batch norm a single
example to normalise (training-mode batch norm cannot).
Batch norms take the global batch's statistics over all ranks (``sync_batch_norm``, the
default; :func:`hiddenite.distributed.sync_batch_norms`), so N processes train as one; the
swap is undone before ``train`` returns, and checkpoints hold the same keys either way.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import distributed, models, resources
from .atomic import atomic_write_text
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    check_fits,
    load_checkpoint,
    save_checkpoint,
)
from .convert import ConfigError, SupermaskConfig
from .data import (
    Dataset,
    DatasetError,
    check_data_options,
    dataset_info,
    iterate_batches,
    known_data_shape,
    load_dataset,
    num_batches,
    resolve_name,
    settled_data_options,
    train_val_split,
)
from .errors import UserError
from .layers import SupermaskLayer
from .ops import OperatorChoice, use_operator
from .quant import ActQuantConfig, add_act_quantizers_, calibrate

TRAIN_CONFIG_VERSION = 1
OPTIMIZERS = ("sgd", "adam")
AMP_MODES = ("none", "bf16")

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "check_data_fit",
    "check_memory",
    "data_shape",
    "evaluate",
    "learning_rate",
    "load_trained",
    "predict",
    "train",
    "with_precision",
]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (versioned; round-trips through JSON).

    lr is the peak learning rate; it warms up linearly over ``warmup_epochs`` then follows
    a cosine to 0 at the end of ``epochs``. ``weight_decay`` applies to scores too unless
    ``score_decay`` is False. ``train_subset`` limits the training examples (0: all);
    ``val_fraction`` of the training set is held out for validation. ``data_options``: the
    image folder's settings (:class:`~hiddenite.data_folder.FolderOptions`; training fills in
    its mode and class names), empty for the bundled data sets. ``amp`` ``"bf16"`` runs the
    training forward pass under bfloat16 autocast (parameters and optimizer stay float32).

    Precision (``docs/precision.md``): ``act_quant`` puts activation quantizers on the model
    (:func:`hiddenite.quant.add_act_quantizers_`), calibrated on the first
    ``calibration_batches`` training batches before the first epoch, then trained with the
    straight-through estimator (QAT); None (default): float activations. ``operator``: what
    every ``Linear`` / ``Conv2d`` multiplies with in training and in inference (validation,
    ``eval``, the saved model), names registered in :mod:`hiddenite.ops` (``mitchell``: the
    logarithmic multiplier); default exact in both.

    ``sync_batch_norm`` (data-parallel runs only): True (default) normalises every training
    batch with the GLOBAL batch's statistics, gathered over the ranks, so N processes
    give one process's result; False (``--local-batch-norm``) lets each rank use its own
    piece's statistics (fewer collectives, a different optimisation). No effect in one
    process. Configs written before the field existed read as True.
    """

    model: str = "conv4"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    supermask: SupermaskConfig = field(default_factory=SupermaskConfig)
    dataset: str = "fashion-mnist"
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    score_decay: bool = True
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = False
    val_fraction: float = 0.1
    train_subset: int = 0
    data_seed: int | None = None
    eval_batch_size: int = 1000
    data_options: dict[str, Any] = field(default_factory=dict)
    amp: str = "none"
    act_quant: ActQuantConfig | None = None
    calibration_batches: int = 8
    operator: OperatorChoice = field(default_factory=OperatorChoice)
    sync_batch_norm: bool = True
    version: int = TRAIN_CONFIG_VERSION

    def __post_init__(self) -> None:
        def fail(name: str, problem: str) -> None:
            raise ConfigError(f"TrainConfig.{name}: {problem}")

        if not isinstance(self.supermask, SupermaskConfig):
            fail("supermask", "must be a SupermaskConfig")
        if not isinstance(self.model_kwargs, dict):
            fail(
                "model_kwargs", f"must be an object of keyword arguments, got {self.model_kwargs!r}"
            )
        for name in ("score_decay", "augment", "sync_batch_norm"):
            if not isinstance(getattr(self, name), bool):
                fail(name, f"must be true or false, got {getattr(self, name)!r}")
        try:
            models.model_info(self.model)
        except ValueError as exc:
            fail("model", str(exc))
        try:  # names, types and values of the arguments, on the meta device
            models.check_arguments(self.model, **self.model_kwargs)
        except ValueError as exc:
            fail("model_kwargs", str(exc))
        try:
            resolve_name(self.dataset)
        except Exception as exc:  # DatasetError or ValueError: both name the valid choices
            fail("dataset", str(exc))
        try:
            check_data_options(self.dataset, self.data_options)
        except DatasetError as exc:
            fail("data_options", str(exc))
        if self.act_quant is not None and not isinstance(self.act_quant, ActQuantConfig):
            fail("act_quant", f"must be an ActQuantConfig or null, got {self.act_quant!r}")
        if not isinstance(self.operator, OperatorChoice):
            fail("operator", f"must be an OperatorChoice, got {self.operator!r}")
        if self.amp != "none" and self.operator.training != OperatorChoice().training:
            fail(
                "operator",
                f"training with {self.operator.training!r} products needs float32: use "
                "amp='none' or an exact training operator",
            )
        for name in ("epochs", "batch_size", "eval_batch_size", "calibration_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, f"must be a positive integer, got {value!r}")
        if isinstance(self.train_subset, bool) or not isinstance(self.train_subset, int):
            fail("train_subset", f"must be an integer, got {self.train_subset!r}")
        if self.train_subset < 0:
            fail("train_subset", f"must be >= 0 (0 = all), got {self.train_subset}")
        if self.amp not in AMP_MODES:
            fail("amp", f"unknown {self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"unknown {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name, low, high in (
            ("lr", 0.0, math.inf),
            ("momentum", 0.0, 1.0),
            ("weight_decay", 0.0, math.inf),
            ("label_smoothing", 0.0, 1.0),
            ("warmup_epochs", 0.0, math.inf),
            ("val_fraction", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(name, f"must be a number, got {value!r}")
            if not (low <= value < high or (name == "momentum" and value == high)):
                fail(name, f"must be in [{low}, {high}), got {value}")
        if self.lr == 0:
            fail("lr", "must be > 0")
        if self.warmup_epochs > self.epochs:
            fail("warmup_epochs", f"{self.warmup_epochs} exceeds epochs ({self.epochs})")
        if self.data_seed is not None and (
            isinstance(self.data_seed, bool)
            or not isinstance(self.data_seed, int)
            or self.data_seed < 0
        ):
            fail("data_seed", f"must be a non-negative integer or null, got {self.data_seed!r}")
        if self.version != TRAIN_CONFIG_VERSION or isinstance(self.version, bool):
            fail("version", f"{self.version} is not supported (this build: {TRAIN_CONFIG_VERSION})")

    @property
    def seed_for_data(self) -> int:
        return self.supermask.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["supermask"] = self.supermask.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"TrainConfig: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"TrainConfig: unknown field(s) {', '.join(unknown)}")
        data = dict(data)
        if "supermask" in data:
            data["supermask"] = SupermaskConfig.from_dict(data["supermask"])
        if data.get("act_quant") is not None:
            data["act_quant"] = ActQuantConfig.from_dict(data["act_quant"])
        if "operator" in data:
            op = data["operator"]
            if not isinstance(op, dict) or set(op) != {"training", "inference"}:
                raise ConfigError(
                    f"TrainConfig.operator: expected {{'training': NAME, 'inference': NAME}}, "
                    f"got {op!r}"
                )
            try:
                data["operator"] = OperatorChoice(op["training"], op["inference"])
            except UserError as exc:
                raise ConfigError(f"TrainConfig.operator: {exc}") from None
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model and the per-epoch metrics."""

    model: nn.Module
    config: TrainConfig
    history: list[dict[str, Any]]
    out_dir: Path | None


def build_model(config: TrainConfig) -> nn.Module:
    """The zoo model of ``config``, shaped for its data set, converted by its SupermaskConfig."""
    in_channels, image_size, num_classes = dataset_info(config.dataset, config.data_options)
    kwargs = {
        "in_channels": in_channels,
        "image_size": image_size,
        "num_classes": num_classes,
        **config.model_kwargs,
    }
    return with_precision(models.create(config.model, config.supermask, **kwargs), config)


def with_precision(model: nn.Module, config: TrainConfig) -> nn.Module:
    """``model`` with ``config``'s activation quantizers (observing until calibrated) and
    operators set, in place."""
    if config.act_quant is not None:
        add_act_quantizers_(model, config.act_quant)
    if config.operator != OperatorChoice():  # exact in both phases needs nothing set
        for phase in ("training", "inference"):
            use_operator(model, getattr(config.operator, phase), phase=phase)
    return model


def resolve_device(name: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available) as a device.

    ValueError (one line, naming the fix) for an unknown name or a missing CUDA device.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(
            f"--device {name!r} is not a device torch knows (use cpu, cuda or auto)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r}: no CUDA device is available here; use --device cpu")
    return device


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step`` (linear warm-up, then cosine to 0)."""
    total = config.epochs * steps_per_epoch
    warm = round(config.warmup_epochs * steps_per_epoch)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def training_passes(model: nn.Module) -> Generator[float, None, None]:
    """The passes of one training step of ``model``, as its methods declare them
    (:meth:`~hiddenite.methods.Method.training_passes`): yields each pass's loss weight, with
    the layers in that pass's state; one plain pass (weight 1) when no method declares any."""
    groups: dict[int, tuple[Any, list[nn.Module]]] = {}
    for module in model.modules():
        if isinstance(module, SupermaskLayer):
            groups.setdefault(id(module.method), (module.method, []))[1].append(module)
    declared = []
    for method, layers in groups.values():
        passes = method.training_passes(layers)
        if passes is not None:
            declared.append((method.name, passes))
    if len(declared) > 1:
        names = " and ".join(name for name, _ in declared)
        raise ConfigError(f"methods {names} each declare their own training passes: use one")
    if not declared:
        yield 1.0
        return
    yield from declared[0][1]  # closing this generator closes the method's


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # the methods' learned state over frozen weights (scores, ...): decayed only on request
    scores = {
        id(getattr(module, key))
        for module in model.modules()
        if isinstance(module, SupermaskLayer) and not module.trains_weights
        for key in module.method.owned_state(module)
    }
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if id(param) in scores and not config.score_decay else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy (fraction correct) of ``model`` on ``dataset``."""
    if len(dataset) == 0:
        return {"loss": math.nan, "accuracy": math.nan}
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in iterate_batches(
        dataset, batch_size, shuffle=False, generator=None, augment=False, device=device
    ):
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return {"loss": loss_sum / len(dataset), "accuracy": correct / len(dataset)}


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Predicted class of every example (int64, in data-set order)."""
    was_training = model.training
    model.eval()
    out = [
        model(x).argmax(1).cpu()
        for x, _ in iterate_batches(
            dataset, batch_size, shuffle=False, generator=None, augment=False, device=device
        )
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def _write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    text = buf.getvalue()
    atomic_write_text(out_dir / "metrics.csv", text)

    def finite(value):  # NaN (no validation set) is not JSON: write null
        return None if isinstance(value, float) and not math.isfinite(value) else value

    clean = [{key: finite(value) for key, value in row.items()} for row in history]
    js = json.dumps(clean, indent=2, allow_nan=False)
    atomic_write_text(out_dir / "metrics.json", js)


def _splits(config: TrainConfig, data_dir: str | Path | None) -> tuple[Dataset, Dataset]:
    full = load_dataset(config.dataset, "train", data_dir, config.data_options)
    train_set, val_set = train_val_split(full, config.val_fraction, config.seed_for_data)
    if config.train_subset and config.train_subset < len(train_set):
        train_set = train_set.subset(torch.arange(config.train_subset))
    return train_set, val_set


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _smallest_group(batch: int, world: distributed.World | None, synced: bool) -> int:
    """Examples in the smallest set a batch norm normalises together in this training batch:
    the whole batch in one process or with synced batch norms (0 if a rank gets none), else
    the smallest rank's piece."""
    if world is None:
        return batch
    if batch < world.size:
        return 0
    return batch if synced else batch // world.size


def _gather_epoch(model, val_set, config, world, device, sums):
    """Sharded validation plus the epoch's training sums, all-reduced over the ranks."""
    lo, hi = distributed.shard_bounds(len(val_set), world)
    piece = val_set.subset(torch.arange(lo, hi))
    val = evaluate(model, piece, config.eval_batch_size, device) if len(piece) else None
    local = [0.0, 0.0] if val is None else [val["loss"] * len(piece), val["accuracy"] * len(piece)]
    loss, right, n, *train_sums = distributed.all_sum([*local, len(piece), *sums], device)
    metrics = {"loss": loss / n, "accuracy": round(right) / n} if n else None
    nan = {"loss": math.nan, "accuracy": math.nan}
    return metrics or nan, (train_sums[0], round(train_sums[1]), round(train_sums[2]))


def data_shape(dataset) -> tuple[int, int, int]:
    """``(in_channels, image_size, num_classes)`` of an in-memory data set or image folder."""
    return dataset.in_channels, dataset.image_size, dataset.num_classes


def check_data_fit(config: TrainConfig, shape: tuple[int, int, int], what: str) -> None:
    """ConfigError if a model argument contradicts the data (channels, size, classes)."""
    for key, value in zip(("in_channels", "image_size", "num_classes"), shape, strict=True):
        given = config.model_kwargs.get(key, value)
        if given != value:
            raise ConfigError(
                f"TrainConfig.model_kwargs: {key}={given!r} does not fit {what} ({key} {value}); "
                "leave it out"
            )


def check_memory(
    config: TrainConfig,
    shape: tuple[int, int, int],
    what: str,
    device: str | torch.device = "cpu",
    *,
    training: bool = True,
) -> None:
    """ResourceError (one line, with the estimate and the memory available) if a training step
    at ``batch_size`` (per process) or, with ``training`` False, an evaluation step at
    ``eval_batch_size`` of ``config``'s model on data of ``shape`` (channels, size, classes)
    cannot fit; from shapes alone (:func:`hiddenite.resources.step_memory`), on ``meta``."""
    in_channels, image_size, num_classes = shape
    kwargs = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    kwargs.update(config.model_kwargs)
    with torch.device("meta"):
        plain = models.create(config.model, **kwargs)
        skeleton = models.create(config.model, config.supermask, init_state=False, **kwargs)
    world = distributed.current_world()
    batch = config.batch_size if training else config.eval_batch_size
    if training and world is not None:
        batch = -(-batch // world.size)
    optimizer_values = {"sgd": 1 if config.momentum else 0, "adam": 2}[config.optimizer]
    estimate = resources.step_memory(
        skeleton,
        (batch, in_channels, image_size, image_size),
        training=training,
        optimizer_values=optimizer_values,
        forward=plain,
    )
    device = torch.device(device)
    free = (
        torch.cuda.mem_get_info(device)[0]
        if device.type == "cuda"
        else resources.available_memory()
    )
    step = (
        f"a training step at --batch-size {batch}"
        if training
        else (f"an evaluation step at eval_batch_size {batch}")
    )
    resources.check_step_memory(estimate, f"{config.model} on {what}: {step}", free)


def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
    datasets: tuple[Dataset, Dataset] | None = None,
) -> TrainResult:
    """Train ``config``'s model; write metrics and checkpoints to ``out_dir`` (if given).

    With ``resume`` the run continues from ``out_dir``'s checkpoint (the stored config is
    used; ``config.epochs`` may extend it). ``datasets`` = (train, val) overrides loading.
    ``progress`` None shows a bar only on a terminal.
    """
    out = Path(out_dir) if out_dir is not None else None
    history: list[dict[str, Any]] = []
    start_epoch = 0
    state = None
    if resume:
        if out is None:
            raise ValueError("resume needs the run directory (out_dir)")
        resume_path = out / "checkpoint.safetensors"  # every rank reads it; rank 0 writes
        state, stored = _read_run(resume_path)
        config = dataclasses.replace(stored, epochs=max(config.epochs, stored.epochs))
        start_epoch, history = state.epoch, list(state.history)
    what = config.dataset if datasets is None else "the training data"
    known = (
        known_data_shape(config.dataset, config.data_options)
        if datasets is None
        else data_shape(datasets[0])
    )
    if known is not None:  # before any data is read
        check_data_fit(config, known, what)
        check_memory(config, known, what, device)
    train_set, val_set = datasets if datasets is not None else _splits(config, data_dir)
    options = settled_data_options(config.dataset, config.data_options, train_set)
    config = dataclasses.replace(config, data_options=options)  # an image folder's classes
    check_data_fit(config, data_shape(train_set), what)  # an image folder's, now read
    if known is None:  # before the model is allocated
        check_memory(config, data_shape(train_set), what, device)
    world = distributed.current_world()
    if world is not None and config.batch_size % world.size:
        raise UserError(
            f"--batch-size {config.batch_size} (the global batch) is not a multiple of the "
            f"{world.size} processes: choose a multiple of {world.size}"
        )
    if world is not None and not world.is_main:
        out, log, progress = None, None, False  # rank 0 alone writes and prints
    model = build_model(config).to(device)
    optimizer = _optimizer(model, config)
    if state is not None:
        _restore(resume_path, state, config, model, optimizer)
    elif config.act_quant is not None:  # QAT starts from calibrated scales
        used = calibrate(
            model,
            iterate_batches(
                train_set,
                config.batch_size,
                shuffle=False,
                generator=None,
                augment=False,
                device=device,
            ),
            max_batches=config.calibration_batches,
        )
        if log is not None:
            log(f"calibrated {config.act_quant.bits}-bit activation quantizers on {used} batches")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        text = config.to_json()
        atomic_write_text(out / "config.json", text)
    steps = num_batches(train_set, config.batch_size)
    net: nn.Module = model
    synced = None
    if world is not None:
        distributed.check_frozen_identical(model, torch.device(device))
        if config.sync_batch_norm:  # after calibration, which every rank runs whole
            synced = distributed.sync_batch_norms(model)
        net = distributed.wrap(model, torch.device(device))
    least = 2 if _has_batch_norm(model) else 1  # examples a training batch needs
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed_for_data * 1_000_003 + epoch)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = iterate_batches(
            train_set,
            config.batch_size,
            shuffle=True,
            generator=generator,
            augment=config.augment,
            device=device,
            shard=None if world is None else (world.rank, world.size),
        )
        bar = tqdm(
            batches,
            total=steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=(not progress) if progress is not None else None,
            leave=False,
        )
        for i, (x, y) in enumerate(bar):
            lr = learning_rate(config, epoch * steps + i, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = min(config.batch_size, len(train_set) - i * config.batch_size)
            if _smallest_group(batch, world, synced is not None) < least:
                continue  # a rank would get no example, or a batch norm a single one
            autocast = torch.autocast(x.device.type, torch.bfloat16, enabled=config.amp == "bf16")
            optimizer.zero_grad(set_to_none=True)
            # one pass, or the passes a method declares (e.g. one per precision): the
            # weighted losses' gradients add up; the first pass's predictions are counted
            passes = training_passes(model)
            try:
                for k, weight in enumerate(passes):
                    with autocast:
                        logits = net(x).float()
                    if world is None:
                        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                        scale = len(y)
                    else:  # DDP averages over ranks: sum / batch x size gives the global mean
                        loss = F.cross_entropy(
                            logits, y, label_smoothing=config.label_smoothing, reduction="sum"
                        ) * (world.size / batch)
                        scale = batch / world.size
                    (loss * weight).backward()
                    loss_sum += float(loss.detach()) * scale * weight
                    if k == 0:
                        correct += int((logits.argmax(1) == y).sum())
            finally:
                passes.close()
            optimizer.step()
            seen += len(y)
        if world is None:
            val = evaluate(model, val_set, config.eval_batch_size, device)
        else:
            val, (loss_sum, correct, seen) = _gather_epoch(
                model, val_set, config, world, device, [loss_sum, correct, seen]
            )
        row = {
            "epoch": epoch + 1,
            "lr": learning_rate(config, (epoch + 1) * steps - 1, steps),
            "train_loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "seconds": time.perf_counter() - began,
        }
        history.append(row)
        if log is not None:
            log(
                f"epoch {row['epoch']}/{config.epochs}  train loss {row['train_loss']:.4f}  "
                f"acc {row['train_accuracy']:.4f}  val loss {row['val_loss']:.4f}  "
                f"acc {row['val_accuracy']:.4f}  ({row['seconds']:.1f} s)"
            )
        if out is not None:
            save_checkpoint(
                out / "checkpoint.safetensors",
                Checkpoint(
                    config=config.to_dict(),
                    epoch=epoch + 1,
                    history=history,
                    model_state=model.state_dict(),
                    optimizer_state=optimizer.state_dict(),
                ),
            )
            _write_metrics(out, history)
    if world is not None:  # when train returns on any rank, rank 0's files are complete
        distributed.all_sum([0.0], torch.device(device))
    if synced is not None:  # the plain batch norms back (same tensors): nothing downstream sees
        synced.restore()
    model.eval()
    return TrainResult(model=model, config=config, history=history, out_dir=out)


def load_trained(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """Rebuild a trained model from a checkpoint (weights regenerated from the seed)."""
    state, config = _read_run(path)
    model = build_model(config)
    _restore(path, state, config, model)
    return model.to(device).eval(), config


def _read_run(path: str | Path) -> tuple[Checkpoint, TrainConfig]:
    """A checkpoint and its config, both checked: the one reading path of every command."""
    state = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(state.config)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint config is invalid ({exc})") from None
    if state.epoch > config.epochs:
        raise CheckpointError(
            f"{path}: checkpoint epoch {state.epoch} exceeds its config's epochs ({config.epochs})"
        )
    # fitted on the meta device first: a config naming a bigger model than the checkpoint
    # holds is refused before that model is allocated
    in_channels, image_size, num_classes = dataset_info(config.dataset, config.data_options)
    kwargs = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    with torch.device("meta"):
        skeleton = models.create(
            config.model, config.supermask, init_state=False, **{**kwargs, **config.model_kwargs}
        )
        with_precision(skeleton, config)
    check_fits(path, state, skeleton, _optimizer(skeleton, config))
    return state, config


def _restore(
    path: str | Path,
    state: Checkpoint,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Check that ``state`` fits ``model`` and the optimizer ``config`` builds exactly (the
    same checks whether or not the optimizer state is used), then load it."""
    check_fits(
        path, state, model, optimizer if optimizer is not None else _optimizer(model, config)
    )
    model.load_state_dict(state.model_state)
    if optimizer is not None and state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
