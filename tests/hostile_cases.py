"""Generators of hostile inputs for every entry point of the ``hiddenite`` command, and a
time-bounded runner; shared by ``tests/test_hostile_inputs.py`` (a sample) and
``benchmarks/fuzz_hostile.py`` (a longer run of the same generators).

A :class:`World` is built once: a tiny Fashion-MNIST look-alike, two finished runs (SGD and
Adam), a model file, a larger model file and a spec. Each :class:`Case` copies what it needs
into its own folder, tampers with it, and returns the command line. :func:`run_case` runs
``hiddenite.cli.main`` in a forked child (stdout and stderr captured, killed after a timeout)
and reports the exit code, stderr, whether it hung, and whether any file it was handed (or
the world) changed. Tampered files keep valid checksums where the case says so, so the
validation behind the checksums is what gets exercised.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import os
import random
import select
import shutil
import signal
import stat
import struct
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hiddenite import SupermaskConfig, models, save

try:
    from hiddenite.checkpoint import tensors_sha256
except ImportError:  # a hiddenite before checkpoint checksums (the fuzz run's baseline)
    tensors_sha256 = None
from hiddenite.cli import main

MLP = ["--model", "mlp", "--model-arg", "hidden=[16]"]
FAMILIES = ("checkpoint", "model-file", "spec", "command-line", "special-file")


# --------------------------------------------------------------------------- the world


@dataclasses.dataclass(frozen=True)
class World:
    root: Path
    data: Path
    run_sgd: Path
    run_adam: Path
    model_file: Path
    big_model_file: Path
    spec: Path
    precision_file: Path  # format 4: an activation quantizer and an operator declared


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x00000800 | array.ndim)
    return header + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def build_world(root: Path) -> World:
    """Everything the cases start from (about two seconds on one core)."""
    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 128), ("t10k", 64)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            raw = gzip.compress(_idx(array), compresslevel=1)
            (data / f"{prefix}-{kind}-ubyte.gz").write_bytes(raw)
    runs = {}
    for optimizer in ("sgd", "adam"):
        out = root / f"run-{optimizer}"
        argv = ["train", *MLP, "--epochs", "1", "--batch-size", "64", "--no-progress"]
        argv += ["--optimizer", optimizer, "--data-dir", str(data), "--out", str(out)]
        code = _quiet(lambda argv=argv: main(argv))
        assert code == 0, f"building the world failed: {argv}"
        runs[optimizer] = out
    model_file = root / "mlp.hnn"
    assert _quiet(lambda: main(["export", str(runs["sgd"]), "-o", str(model_file)])) == 0
    big = root / "mlp-266k.hnn"  # 266,200 weights: too many for one PRNG lane per layer
    save(models.create("mlp", SupermaskConfig(density=0.5, seed=1)), big)
    spec = root / "spec.yaml"
    spec.write_text("name: mine\nclock_mhz: 200\n")
    precision = root / "mlp-precision.hnn"
    save(precision_model(), precision)
    return World(root, data, runs["sgd"], runs["adam"], model_file, big, spec, precision)


def precision_model() -> torch.nn.Module:
    """An MLP with a calibrated 4-bit quantizer on net.3's input and the Mitchell multiplier
    in inference on net.3: what a version 4 model file declares."""
    try:
        from hiddenite.ops import use_operator
        from hiddenite.quant import ActQuantConfig, add_act_quantizers_, calibrate
    except ImportError:  # a hiddenite before activation quantizers (the fuzz run's baseline)
        return models.create("mlp", SupermaskConfig(density=0.5, seed=2), hidden=[16])
    model = models.create("mlp", SupermaskConfig(density=0.5, seed=2), hidden=[16])
    add_act_quantizers_(model, ActQuantConfig(bits=4))
    calibrate(model, [torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))])
    use_operator(model, "mitchell", phase="inference", layers=["net.3"])
    return model


def _quiet(fn: Callable[[], int]) -> int:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile input: ``build(world, folder)`` makes its files and returns the argv.

    ``must_fail``: the input is certainly invalid (exit code 2 expected); otherwise it may also
    be accepted (exit 0), but never with a traceback or a hang. ``child`` runs in the child
    process before the command (e.g. to simulate a permission error where tests run as root).
    """

    family: str
    name: str
    build: Callable[[World, Path], list[str]]
    must_fail: bool = True
    child: Callable[[World, Path], None] | None = None

    @property
    def id(self) -> str:
        return f"{self.family}:{self.name}"


def _copy_run(world: World, folder: Path, optimizer: str = "sgd") -> Path:
    run = folder / "run"
    shutil.copytree(world.run_sgd if optimizer == "sgd" else world.run_adam, run)
    return run


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["hiddenite"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    return meta, tensors


def _write_checkpoint(path: Path, meta: Any, tensors: dict, *, resign: bool = True) -> None:
    if resign and isinstance(meta, dict) and tensors_sha256 is not None:
        meta = {**meta, "tensors_sha256": tensors_sha256(tensors)}
    text = meta if isinstance(meta, str) else json.dumps(meta)
    sha = hashlib.sha256(text.encode()).hexdigest()
    save_file(tensors, str(path), metadata={"hiddenite": text, "hiddenite_sha256": sha})


def _leaves(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, value) of a JSON document, containers included (root excluded)."""
    if path:
        yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):  # the first items stand for the rest
            yield from _leaves(v, (*path, i))


def _swaps(value: Any) -> list[Any]:
    """Values of another JSON type than ``value`` (never a valid replacement for it)."""
    if isinstance(value, bool):
        return ["yes", [], {}]
    if isinstance(value, int | float):
        return ["7", [], {}, True]
    if isinstance(value, str):
        return [7, [], {}, None]
    if isinstance(value, list):
        return ["x", 7, {}]
    if isinstance(value, dict):
        return ["x", 7, []]
    return ["x", [], {}]  # None


def _set(doc: Any, path: tuple, value: Any, *, delete: bool = False) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if delete:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


def _checkpoint_edits(meta: dict) -> list[tuple[str, Callable[[dict, dict], None], bool]]:
    """(name, edit(meta, tensors), must_fail) for one checkpoint's metadata and tensors."""
    edits: list[tuple[str, Callable[[dict, dict], None], bool]] = []
    for path, value in _leaves(meta):
        name = "/".join(map(str, path))
        # the config fills a missing field with its default; a free-form string may be any
        benign_delete = path[0] == "config" or path[:2] == ("optimizer", "scalars")
        if path[0] in ("format", "format_version", "tensors_sha256"):
            benign_delete = False
        for i, swap in enumerate(_swaps(value)):
            must = not (path[-1] == "data_seed" and swap is None)
            if path[:2] == ("optimizer", "param_groups") and isinstance(value, str | type(None)):
                must = True
            edits.append((f"{name}=swap{i}", lambda m, t, p=path, s=swap: _set(m, p, s), must))
        if isinstance(path[-1], str):
            edits.append(
                (
                    f"{name}=deleted",
                    lambda m, t, p=path: _set(m, p, None, delete=True),
                    not benign_delete,
                )
            )
        if isinstance(value, dict) and path[0] != "config":
            edits.append((f"{name}+unknown", lambda m, t, p=path: _set(m, (*p, "zz"), 1), True))
    edits += [
        ("epoch=-1", lambda m, t: m.update(epoch=-1), True),
        ("epoch=10**9", lambda m, t: m.update(epoch=10**9), True),
        ("deep-json", lambda m, t: m.update(config=json.loads("[" * 60 + "]" * 60)), True),
        ("history+row", lambda m, t: m["history"].append(dict(m["history"][0])), True),
        ("lr=nan", lambda m, t: m["history"][0].update(lr=float("nan")), True),
    ]
    for key in ("model.net.1.scores", "model.net.3.scores"):
        edits += [
            (f"{key}=nan", lambda m, t, k=key: t[k].view(-1).__setitem__(0, float("nan")), True),
            (f"{key}=inf", lambda m, t, k=key: t[k].view(-1).__setitem__(1, float("inf")), True),
            (f"{key}:reshaped", lambda m, t, k=key: t.update({k: t[k].reshape(-1)}), True),
            (f"{key}:float64", lambda m, t, k=key: t.update({k: t[k].double()}), True),
            (f"{key}:int32", lambda m, t, k=key: t.update({k: t[k].int()}), True),
            (f"{key}:dropped", lambda m, t, k=key: t.pop(k), True),
            (f"{key}:renamed", lambda m, t, k=key: t.update({k + "x": t.pop(k)}), True),
        ]
    edits += [
        ("extra-tensor", lambda m, t: t.update({"model.extra": torch.zeros(3)}), True),
        ("foreign-tensor", lambda m, t: t.update({"junk": torch.zeros(3)}), True),
        ("optimizer-tensor-shape", lambda m, t: _reshape_first_optimizer_tensor(t), True),
        ("optimizer-state-of-nothing", lambda m, t: t.update({"optimizer.99.x": t["junk"]})
         if "junk" in t else t.update({"optimizer.99.momentum_buffer": torch.zeros(2)}), True),
    ]  # fmt: skip
    return edits


def _reshape_first_optimizer_tensor(tensors: dict) -> None:
    key = next(k for k in sorted(tensors) if k.startswith("optimizer."))
    tensors[key] = torch.zeros(tensors[key].numel() + 1)


def _checkpoint_commands(world: World, run: Path, folder: Path) -> dict[str, list[str]]:
    data = ["--data-dir", str(world.data)]
    return {
        "eval": ["eval", str(run), *data],
        "export": ["export", str(run), "-o", str(folder / "out.hnn")],
        "summary": ["summary", str(run)],
        "resume": ["train", *MLP, "--epochs", "2", "--no-progress", "--resume", "--out",
                   str(run), *data],
        "simulate": ["simulate", str(run), "--out", str(folder / "sim")],
    }  # fmt: skip


def checkpoint_cases(rng: random.Random, world_meta: dict, flips: int) -> list[Case]:
    """Tampered checkpoints: every metadata field swapped for another type or deleted (valid
    checksums), tensors made NaN / reshaped / retyped / renamed (valid checksums), byte flips
    and truncations (stale checksums), and a run folder with special files in it."""
    cases = []
    commands = ("eval", "export", "summary", "resume", "simulate")
    edits = [(o, *e) for o in ("sgd", "adam") for e in _checkpoint_edits(world_meta[o])]
    for optimizer, name, edit, must in edits:
        command = rng.choice(commands)

        def build(world, folder, edit=edit, command=command, optimizer=optimizer, name=name):
            run = _copy_run(world, folder, optimizer)
            path = run / "checkpoint.safetensors"
            meta, tensors = _read_checkpoint(path)
            edit(meta, tensors)
            _write_checkpoint(path, meta, tensors, resign=not name.startswith("tensors_sha256"))
            return _checkpoint_commands(world, run, folder)[command]

        cases.append(Case("checkpoint", f"{optimizer}:{command}:{name}", build, must))
    for i in range(flips):
        command = rng.choice(commands)
        seed = rng.randrange(1 << 30)

        def flip(world, folder, command=command, seed=seed):
            run = _copy_run(world, folder)
            path = run / "checkpoint.safetensors"
            raw = bytearray(path.read_bytes())
            r = random.Random(seed)
            raw[r.randrange(len(raw))] ^= r.randrange(1, 256)
            path.write_bytes(bytes(raw))
            return _checkpoint_commands(world, run, folder)[command]

        def cut(world, folder, command=command, seed=seed):
            run = _copy_run(world, folder)
            path = run / "checkpoint.safetensors"
            raw = path.read_bytes()
            path.write_bytes(raw[: random.Random(seed).randrange(len(raw))])
            return _checkpoint_commands(world, run, folder)[command]

        cases.append(Case("checkpoint", f"{command}:flip{i}", flip))
        cases.append(Case("checkpoint", f"{command}:truncated{i}", cut))

    def deep_header(world, folder):
        run = _copy_run(world, folder)
        body = b'{"__metadata__": {"hiddenite": "x"}, "a": ' + b"[" * 100_000
        body += b"]" * 100_000 + b"}"
        (run / "checkpoint.safetensors").write_bytes(len(body).to_bytes(8, "little") + body)
        return ["eval", str(run), "--data-dir", str(world.data)]

    def deep_metadata(world, folder):
        run = _copy_run(world, folder)
        _, tensors = _read_checkpoint(run / "checkpoint.safetensors")
        _write_checkpoint(run / "checkpoint.safetensors", "[" * 100_000 + "]" * 100_000, tensors)
        return ["summary", str(run)]

    def garbage_after(world, folder):
        run = _copy_run(world, folder)
        with open(run / "checkpoint.safetensors", "ab") as fh:
            fh.write(b"\0" * 64)
        return ["export", str(run), "-o", str(folder / "out.hnn")]

    def special(kind, command):
        def build(world, folder):
            run = _copy_run(world, folder)
            target = run / ("checkpoint.safetensors" if kind != "config-dir" else "config.json")
            target.unlink()
            if kind == "fifo":
                os.mkfifo(target)
            else:
                target.mkdir()
            return _checkpoint_commands(world, run, folder)[command]

        return build

    def unreadable(world, folder):
        run = _copy_run(world, folder)
        return ["eval", str(run), "--data-dir", str(world.data)]

    def deny(world, folder):  # runs in the child: even root is refused
        real = os.open
        target = str(folder / "run" / "checkpoint.safetensors")

        def guarded(path, *args, **kwargs):
            if os.fspath(path) == target:
                raise PermissionError(13, "Permission denied", target)
            return real(path, *args, **kwargs)

        os.open = guarded

    def other_classes(world, folder):  # consistent, checksummed, but for 5 classes
        from hiddenite.checkpoint import Checkpoint, save_checkpoint
        from hiddenite.train import TrainConfig, build_model

        config = TrainConfig(model="mlp", model_kwargs={"hidden": [16], "num_classes": 5})
        run = folder / "run"
        save_checkpoint(run / "checkpoint.safetensors", Checkpoint(
            config=config.to_dict(), epoch=0, history=[],
            model_state=build_model(config).state_dict(), optimizer_state=None))  # fmt: skip
        return ["eval", str(run), "--data-dir", str(world.data)]

    cases += [
        Case("checkpoint", "eval:five-classes-on-ten", other_classes),
        Case("checkpoint", "eval:deep-header", deep_header),
        Case("checkpoint", "summary:deep-metadata", deep_metadata),
        Case("checkpoint", "export:garbage-after-data", garbage_after),
        Case("checkpoint", "eval:checkpoint-is-fifo", special("fifo", "eval")),
        Case("checkpoint", "resume:checkpoint-is-fifo", special("fifo", "resume")),
        Case("checkpoint", "export:checkpoint-is-dir", special("dir", "export")),
        Case("checkpoint", "resume:config-json-is-dir", special("config-dir", "resume")),
        Case("checkpoint", "eval:permission-denied", unreadable, child=deny),
    ]
    return cases


def _model_meta(header: dict) -> dict:
    """The metadata document of a model file's header (format 3: inside the zlib envelope)."""
    envelope = json.loads(header["__metadata__"]["hiddenite"])
    return json.loads(zlib.decompress(base64.b64decode(envelope["zlib"])))


def _resign_model(raw: bytes, edit: Callable[[dict], None]) -> bytes:
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    meta = _model_meta(header)
    edit(meta)
    inner = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    packed = base64.b64encode(zlib.compress(inner.encode())).decode()
    envelope = {"format": meta.get("format"), "format_version": meta.get("format_version")}
    text = json.dumps({**envelope, "zlib": packed}, sort_keys=True, separators=(",", ":"))
    header["__metadata__"] = {
        "hiddenite": text,
        "hiddenite_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + raw[8 + size :]


def model_file_cases(rng: random.Random, model_meta: dict, flips: int) -> list[Case]:
    """Hostile model files with valid checksums (every metadata field swapped or deleted),
    too few PRNG lanes, deep headers, byte flips, truncations and special files."""
    cases = []
    for path, value in _leaves(model_meta):
        name = "/".join(map(str, path))
        free = path[0] in ("supermask", "hiddenite_version") or "method" in path
        for i, swap in enumerate(_swaps(value)):
            if path == ("arch",) and swap is None:
                continue  # a user-built module: valid, and inspect shows it
            must = not (free and swap is None)
            command = rng.choice(("inspect", "simulate"))

            def build(world, folder, path=path, swap=swap, command=command):
                out = folder / "m.hnn"
                out.write_bytes(_resign_model(world.model_file.read_bytes(),
                                              lambda m: _set(m, path, swap)))  # fmt: skip
                return _model_commands(out, folder)[command]

            cases.append(Case("model-file", f"{command}:{name}=swap{i}", build, must))
        if isinstance(path[-1], str):

            def drop(world, folder, path=path):
                out = folder / "m.hnn"
                raw = world.model_file.read_bytes()
                out.write_bytes(_resign_model(raw, lambda m: _set(m, path, None, delete=True)))
                return ["inspect", str(out)]

            must = not (path[0] == "supermask" or "method" in path)
            cases.append(Case("model-file", f"inspect:{name}=deleted", drop, must))

    def one_lane(world, folder):
        out = folder / "m.hnn"
        raw = world.big_model_file.read_bytes()
        out.write_bytes(_resign_model(raw, lambda m: m["supermask"].update(n_lanes=1)))
        return ["simulate", str(out), "--out", str(folder / "sim")]

    def wide(world, folder):
        out = folder / "m.hnn"
        raw = world.model_file.read_bytes()
        out.write_bytes(_resign_model(raw, lambda m: m["arch"]["kwargs"].update(hidden=[10**9])))
        return ["simulate", str(out), "--out", str(folder / "sim")]

    def deep(world, folder):
        raw = world.model_file.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        head = raw[8 : 8 + size].rstrip()[:-1] + b', "d": ' + b"[" * 100_000
        head += b"]" * 100_000 + b"}"
        out = folder / "m.hnn"
        out.write_bytes(len(head).to_bytes(8, "little") + head + raw[8 + size :])
        return ["inspect", str(out)]

    cases += [
        Case("model-file", "simulate:n_lanes=1", one_lane),
        Case("model-file", "simulate:hidden=1e9", wide),
        Case("model-file", "inspect:deep-container-header", deep),
    ]
    for i in range(flips):
        seed = rng.randrange(1 << 30)
        command = rng.choice(("inspect", "simulate"))

        def flip(world, folder, seed=seed, command=command):
            raw = bytearray(world.model_file.read_bytes())
            r = random.Random(seed)
            raw[r.randrange(len(raw))] ^= r.randrange(1, 256)
            (folder / "m.hnn").write_bytes(bytes(raw))
            return _model_commands(folder / "m.hnn", folder)["simulate"]

        def cut(world, folder, seed=seed, command=command):
            raw = world.model_file.read_bytes()
            (folder / "m.hnn").write_bytes(raw[: random.Random(seed).randrange(len(raw))])
            return _model_commands(folder / "m.hnn", folder)[command]

        cases.append(Case("model-file", f"simulate:flip{i}", flip))
        cases.append(Case("model-file", f"{command}:truncated{i}", cut))
    return cases


def _quant(meta: dict) -> dict:
    return meta["activations"][0]


def _op(meta: dict) -> dict:
    return meta["operators"][0]


# Edits of the declarations of a version 4 file: (name, edit(meta), must_fail). Every field of
# a quantizer or operator entry swapped for another JSON type or deleted, then values of the
# right type that are still wrong. Deleting a field of the quantizer's config is benign (the
# config fills it with its default).
_Q_FIELDS = {"layer": "net.3", "signed": False, "scale": 0.5, "zero_point": 0, "range": [0, 1]}
_Q_CONFIG = {"bits": 4, "signed": "auto", "calibration": "minmax", "percentile": 99.99,
             "first_layer": False, "version": 1}  # fmt: skip
_OP_FIELDS = {"layer": "net.3", "training": "exact", "inference": "mitchell"}
PRECISION_EDITS: list[tuple[str, Callable[[dict], None], bool]] = [
    *(
        (f"activations/{k}=swap{i}", lambda m, k=k, s=s: _quant(m).update({k: s}), True)
        for k, v in _Q_FIELDS.items()
        for i, s in enumerate(_swaps(v))
    ),
    *((f"activations/{k}=deleted", lambda m, k=k: _quant(m).pop(k), True) for k in _Q_FIELDS),
    ("activations/config=deleted", lambda m: _quant(m).pop("config"), True),
    *(
        (
            f"activations/config/{k}=swap{i}",
            lambda m, k=k, s=s: _quant(m)["config"].update({k: s}),
            True,
        )
        for k, v in _Q_CONFIG.items()
        for i, s in enumerate(_swaps(v))
    ),
    *(
        (f"activations/config/{k}=deleted", lambda m, k=k: _quant(m)["config"].pop(k), False)
        for k in _Q_CONFIG
    ),
    *(
        (f"operators/{k}=swap{i}", lambda m, k=k, s=s: _op(m).update({k: s}), True)
        for k, v in _OP_FIELDS.items()
        for i, s in enumerate(_swaps(v))
    ),
    *((f"operators/{k}=deleted", lambda m, k=k: _op(m).pop(k), True) for k in _OP_FIELDS),
    ("activations=deleted", lambda m: m.pop("activations"), True),
    ("operators=deleted", lambda m: m.pop("operators"), True),
    ("activations+unknown", lambda m: _quant(m).update(zz=1), True),
    ("operators+unknown", lambda m: _op(m).update(zz=1), True),
    ("scale=0", lambda m: _quant(m).update(scale=0.0), True),
    ("scale=-1", lambda m: _quant(m).update(scale=-1.0), True),
    ("scale=1e-50", lambda m: _quant(m).update(scale=1e-50), True),
    ("scale=1e39", lambda m: _quant(m).update(scale=1e39), True),
    ("scale=0.1(not float32)", lambda m: _quant(m).update(scale=0.1), True),
    ("zero_point=3", lambda m: _quant(m).update(zero_point=3), True),
    ("range=reversed", lambda m: _quant(m).update(range=[1.0, 0.0]), True),
    ("range=one", lambda m: _quant(m).update(range=[1.0]), True),
    ("range=three", lambda m: _quant(m).update(range=[0.0, 1.0, 2.0]), True),
    ("bits=1", lambda m: _quant(m)["config"].update(bits=1), True),
    ("bits=99", lambda m: _quant(m)["config"].update(bits=99), True),
    (
        "signed=true,config=unsigned",
        lambda m: (_quant(m).update(signed=True), _quant(m)["config"].update(signed="unsigned")),
        True,
    ),
    ("quantizer-on-flatten", lambda m: _quant(m).update(layer="net.0"), True),
    ("quantizer-on-missing-layer", lambda m: _quant(m).update(layer="net.9"), True),
    ("quantizer-twice", lambda m: m["activations"].append(dict(_quant(m))), True),
    ("operator-unknown", lambda m: _op(m).update(inference="fast"), True),
    ("operator-exact-both", lambda m: _op(m).update(inference="exact"), True),
    ("operator-on-relu", lambda m: _op(m).update(layer="net.2"), True),
    ("operator-twice", lambda m: m["operators"].append(dict(_op(m))), True),
    ("version-3-with-declarations", lambda m: m.update(format_version=3), True),
    ("operator-on-net.1", lambda m: _op(m).update(layer="net.1"), False),
    ("no-declarations", lambda m: m.update(activations=[], operators=[]), False),
]


def precision_cases() -> list[Case]:
    """Version 4 files whose quantizer / operator declarations were edited (valid checksums)."""
    cases = []
    for name, edit, must in PRECISION_EDITS:  # simulate loads the model: every check runs

        def build(world, folder, edit=edit):
            out = folder / "m.hnn"
            out.write_bytes(_resign_model(world.precision_file.read_bytes(), edit))
            return _model_commands(out, folder)["simulate"]

        cases.append(Case("model-file", f"simulate:precision:{name}", build, must))
    return cases


def _model_commands(path: Path, folder: Path) -> dict[str, list[str]]:
    return {
        "inspect": ["inspect", str(path)],
        "simulate": ["simulate", str(path), "--out", str(folder / "sim")],
    }


SPEC_TEXTS = {
    "deep-flow": "a: " + "[" * 20_000 + "]" * 20_000,
    "deep-block": "".join(" " * i + f"k{i}:\n" for i in range(200)),
    "duplicate-key": "name: a\nclock_mhz: 100\nclock_mhz: 200\n",
    "alias": "name: a\nenergy: &e {add_8b_pj: 0.03}\nx: *e\n",
    "billion-laughs": "a: &a [1,1,1,1,1,1,1,1,1]\n"
    + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    ),
    "python-tag": "name: !!python/object/apply:os.system ['true']\n",
    "not-utf8": "name: \udcff",
    "huge": "# " + "x" * (2 << 20),
    "list": "- 1\n- 2\n",
    "scalar": "42\n",
    "unknown-field": "name: a\nclokc_mhz: 100\n",
    "tab-indent": "name: a\n\tclock_mhz: 1\n",
    "unclosed": "name: [a, b\n",
    "nul-bytes": "name: a\0\0\n",
}


def spec_cases(rng: random.Random, fields: list[str]) -> list[Case]:
    """Hostile spec YAML: deep, duplicate keys, aliases, tags, huge, wrong types per field."""
    cases = []
    texts = dict(SPEC_TEXTS)
    for field in fields:
        for i, value in enumerate(("fast", "[1, 2]", "{a: 1}", "-1", ".nan", ".inf", "1e400")):
            texts[f"{field}={i}"] = f"name: mine\n{field}: {value}\n"
    for name, text in texts.items():

        def build(world, folder, text=text):
            path = folder / "spec.yaml"
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
            return ["simulate", "mlp", "--density", "0.5", "--spec", str(path), "--out",
                    str(folder / "sim")]  # fmt: skip

        must = "=" not in name or not name.endswith(("=3", "=6"))  # -1 / 1e400 may be valid
        cases.append(Case("spec", name, build, must))
    return cases


def command_line_cases() -> list[Case]:
    """Bad values for every option that reaches our code (argparse's own checks included)."""
    table: list[tuple[str, Callable[[World, Path], list[str]]]] = []

    def add(name, fn):
        table.append((name, fn))

    def data(w):
        return ["--data-dir", str(w.data)]

    def train(w, f, *extra):
        return ["train", *MLP, "--epochs", "1", "--no-progress", *extra, "--out", str(f / "r"),
                *data(w)]  # fmt: skip

    for value in ("2", "-1", "0", "nan", "inf", "1e400"):
        add(f"summary --density {value}", lambda w, f, v=value: ["summary", "--density", v])
        add(f"train --density {value}", lambda w, f, v=value: train(w, f, "--density", v))
    for arg in ("width=-1", "width=0", "width=1000", "width=nan", "hidden=[100000000]",
                "hidden=[-3]", "hidden=x", "hidden={}", "nope=1", "in_channels=0",
                "num_classes=5", "in_channels=3", "image_size=32", "=3", "x", "hidden=[[1]]",
                "image_size=99999999999"):  # fmt: skip
        if not arg.startswith(("num_classes=5", "in_channels=3", "image_size=32")):
            # (without a data set, a zoo model may have any number of classes or channels)
            add(f"summary --model-arg {arg}", lambda w, f, a=arg: ["summary", "--model-arg", a])
        add(f"train --model-arg {arg}", lambda w, f, a=arg: ["train", "--epochs", "1", "--out",
            str(f / "r"), "--model-arg", a, "--no-progress", *data(w)])  # fmt: skip
    for arg in ("scope=nope", "nope=1", "x", "=", "scope=[]"):
        add(f"summary --method-arg {arg}", lambda w, f, a=arg: ["summary", "--method-arg", a])
    for option, values in (
        ("--epochs", ("0", "-1")),
        ("--batch-size", ("0", "-5", "10000000000")),
        ("--lr", ("0", "-1", "nan", "inf")),
        ("--momentum", ("2", "-0.5", "nan")),
        ("--weight-decay", ("-1", "inf")),
        ("--warmup-epochs", ("5", "-1")),
        ("--label-smoothing", ("1", "-0.1")),
        ("--val-fraction", ("1", "-0.1", "nan")),
        ("--train-subset", ("-1",)),
        ("--seed", ("-1", str(2**64))),
        ("--device", ("tpu", "cuda:99", "")),
        ("--epochs", ("x",)),
    ):
        for value in values:
            add(f"train {option} {value}", lambda w, f, o=option, v=value: train(w, f, o, v))
    for shape in ("0,1,1", "1,2", "a,b,c", "1,100000,100000", "99999999999,1,1", "1,-28,28",
                  "4096,4096,4096", ""):  # fmt: skip
        add(f"simulate --input-shape {shape!r}", lambda w, f, s=shape: [
            "simulate", "conv4", "--density", "0.5", "--input-shape", s, "--out",
            str(f / "sim")])  # fmt: skip
    for grid in ("codec=zstd", "skip_masked=maybe", "activations_on_chip=2", "density=2",
                 "density=0,0.5", "nope=1", "density=", "=1", "pe_dims=0x1x1x1",
                 "clock_mhz=fast", "energy.nope=1", "arch=nope", "density=nan"):  # fmt: skip
        add(f"sweep --grid {grid}", lambda w, f, g=grid: [
            "sweep", "mlp", "--density", "0.5", "--grid", g, "--out", str(f / "sw")])  # fmt: skip
    add("summary RUN --density 2", lambda w, f: ["summary", str(w.run_sgd), "--density", "2"])
    add("summary RUN --model conv2", lambda w, f: ["summary", str(w.run_sgd), "--model", "conv2"])
    add("simulate zoo without --density", lambda w, f: ["simulate", "mlp", "--out", str(f)])
    add("simulate FILE --density", lambda w, f: [
        "simulate", str(w.model_file), "--density", "0.5", "--out", str(f / "s")])  # fmt: skip
    add("export -o same as --onnx", lambda w, f: [
        "export", str(w.run_sgd), "-o", str(f / "a"), "--onnx", str(f / "a")])  # fmt: skip
    add("train into existing run", lambda w, f: [
        "train", *MLP, "--out", str(w.run_sgd), *data(w)])  # fmt: skip
    add("resume without run", lambda w, f: train(w, f, "--resume"))
    add("eval missing", lambda w, f: ["eval", str(f / "missing")])
    add("inspect missing", lambda w, f: ["inspect", str(f / "missing.hnn")])
    add("eval no data", lambda w, f: ["eval", str(w.run_sgd), "--data-dir", str(f)])
    add("run --epochs 0", lambda w, f: ["run", "--epochs", "0", "--out", str(f / "r")])
    add("unknown command", lambda w, f: ["frobnicate"])
    return [Case("command-line", name, fn) for name, fn in table]


def special_file_cases() -> list[Case]:
    """FIFOs, devices and directories for every path read or written."""
    cases = []

    def node(kind: str, folder: Path, name: str) -> Path:
        path = folder / name
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "file":
            path.write_bytes(b"x")
        return path

    for kind in ("fifo", "dir"):
        for name, argv in (
            ("inspect", lambda w, f, k: ["inspect", str(node(k, f, "m.hnn"))]),
            ("simulate", lambda w, f, k: ["simulate", str(node(k, f, "m.hnn")), "--out",
                                          str(f / "s")]),
            ("eval", lambda w, f, k: ["eval", str(node(k, f, "c.safetensors"))]),
            ("export", lambda w, f, k: ["export", str(node(k, f, "c.safetensors")), "-o",
                                        str(f / "o.hnn")]),
            ("--spec", lambda w, f, k: ["simulate", "mlp", "--density", "0.5", "--spec",
                                        str(node(k, f, "s.yaml")), "--out", str(f / "s")]),
            ("export -o", lambda w, f, k: ["export", str(w.run_sgd), "-o",
                                           str(node(k, f, "o.hnn"))]),
            ("export --onnx", lambda w, f, k: ["export", str(w.run_sgd), "-o", str(f / "o.hnn"),
                                               "--onnx", str(node(k, f, "o.onnx"))]),
            ("data file", lambda w, f, k: _data_with(w, f, k, node)),
        ):  # fmt: skip
            cases.append(Case("special-file", f"{name}:{kind}", lambda w, f, a=argv, k=kind: a(
                w, f, k)))  # fmt: skip
    for name, argv in (
        ("export -o a null device", lambda w, f: ["export", str(w.run_sgd), "-o",
                                                 str(_device(f, "null", 3))]),
        ("export -o a full device", lambda w, f: ["export", str(w.run_sgd), "-o",
                                                 str(_device(f, "full", 7))]),
        ("inspect /dev/zero", lambda w, f: ["inspect", "/dev/zero"]),
        ("eval /dev/zero", lambda w, f: ["eval", "/dev/zero"]),
        ("--spec /dev/zero", lambda w, f: ["simulate", "mlp", "--density", "0.5", "--spec",
                                           "/dev/zero", "--out", str(f / "s")]),
        ("train --out FILE", lambda w, f: ["train", *MLP, "--out", str(node("file", f, "r")),
                                           "--data-dir", str(w.data)]),
        ("train --out FILE/sub", lambda w, f: ["train", *MLP, "--out",
                                               str(node("file", f, "r") / "sub")]),
        ("simulate --out FILE", lambda w, f: ["simulate", "mlp", "--density", "0.5", "--out",
                                              str(node("file", f, "s"))]),
        ("sweep --out FILE", lambda w, f: ["sweep", "mlp", "--density", "0.5", "--grid",
                                           "density=0.1", "--out", str(node("file", f, "s"))]),
        ("run --out FILE", lambda w, f: ["run", "--quick", "--out", str(node("file", f, "r"))]),
        ("train metrics.csv dir", lambda w, f: _run_with_dir(w, f, "metrics.csv")),
    ):  # fmt: skip
        cases.append(Case("special-file", name, argv))
    return cases


def _device(folder: Path, name: str, minor: int) -> Path:
    """A private character device (memory devices, major 1) in the case folder, never one of
    /dev's: a reader that replaced its output would otherwise replace the machine's /dev/null.
    Without the right to make one (not root), a FIFO stands in for it."""
    path = folder / name
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except (PermissionError, AttributeError):
        os.mkfifo(path)
    return path


def _data_with(world: World, folder: Path, kind: str, node) -> list[str]:
    data = folder / "data"
    shutil.copytree(world.data, data)
    (data / "t10k-images-idx3-ubyte.gz").unlink()
    node(kind, data, "t10k-images-idx3-ubyte.gz")
    return ["eval", str(world.run_sgd), "--data-dir", str(data)]


def _run_with_dir(world: World, folder: Path, name: str) -> list[str]:
    run = _copy_run(world, folder)
    (run / name).unlink()
    (run / name).mkdir()
    return ["train", *MLP, "--epochs", "2", "--resume", "--no-progress", "--out", str(run),
            "--data-dir", str(world.data)]  # fmt: skip


def generate(world_meta: dict, model_meta: dict, spec_fields: list[str], *, seed: int = 0,
             flips: int = 8) -> list[Case]:  # fmt: skip
    """Every case of every family, in a fixed order for ``seed``."""
    rng = random.Random(seed)
    return [
        *checkpoint_cases(rng, world_meta, flips),
        *model_file_cases(rng, model_meta, flips),
        *precision_cases(),
        *spec_cases(rng, spec_fields),
        *command_line_cases(),
        *special_file_cases(),
    ]


def metadata_of(world: World) -> tuple[dict, dict, list[str]]:
    """The documents the generators mutate: a checkpoint's and a model file's metadata."""
    ckpt = {
        name: _read_checkpoint(run / "checkpoint.safetensors")[0]
        for name, run in (("sgd", world.run_sgd), ("adam", world.run_adam))
    }
    raw = world.model_file.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    model = _model_meta(json.loads(raw[8 : 8 + size]))
    from hiddenite.hw import ArchSpec

    return ckpt, model, [f for f in ArchSpec.field_names() if f != "energy"]


# --------------------------------------------------------------------------- running


def snapshot(*roots: Path) -> dict[str, tuple]:
    """(kind, size, sha256) of every entry under ``roots`` (special files by kind only)."""
    out: dict[str, tuple] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = os.lstat(path)
                if os.path.isfile(path) and not os.path.islink(path):
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    out[str(path)] = ("file", st.st_size, digest)
                else:
                    out[str(path)] = (oct(st.st_mode >> 12), 0, "")
    return out


@dataclasses.dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    hung: bool
    changed: list[str]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    def problem(self, case: Case) -> str | None:
        """None for a clean outcome, else what is wrong with it."""
        lines = self.stderr.strip().splitlines()
        if self.hung:
            return f"hung for {self.seconds:.0f} s"
        if self.traceback:
            return "traceback:\n" + self.stderr[-3000:]
        if self.code == 0 and not case.must_fail:
            return None  # a valid input after all: it may write its outputs
        if self.changed:
            return f"changed files: {self.changed[:3]}"
        if self.code != 2:
            return f"exit code {self.code}: {self.stderr[-500:]}"
        if lines and lines[0].startswith("usage:"):  # argparse: usage, then one error line
            return None if lines[-1].startswith("hiddenite") and ": error: " in lines[-1] else (
                f"argparse output {lines}")  # fmt: skip
        if len(lines) != 1 or not lines[0].startswith("hiddenite: error: "):
            return f"not one error line: {lines}"
        return None


def _drain(fds: dict[int, bytearray], deadline: float) -> bool:
    """Read the pipes until both close; False if the deadline passed first."""
    while fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select(list(fds), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                fds[fd] += chunk
            else:
                os.close(fd)
                del fds[fd]
    return True


def run_case(case: Case, world: World, folder: Path, timeout: float = 20.0) -> Outcome:
    """Build ``case`` in ``folder`` and run it in a forked child, killed after ``timeout``."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = case.build(world, folder)
    before = snapshot(folder, world.root)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    began = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: run the command, never return into the test runner
        code = 1
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = os.fdopen(1, "w", closefd=False)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if case.child is not None:
                case.child(world, folder)
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    os.close(err_w)
    buffers = {out_r: bytearray(), err_r: bytearray()}
    fds = dict(buffers)
    finished = _drain(fds, began + timeout)
    if not finished:
        os.kill(pid, signal.SIGKILL)
        for fd in fds:
            os.close(fd)
    _, status = os.waitpid(pid, 0)
    seconds = time.monotonic() - began
    code = os.waitstatus_to_exitcode(status) if finished else None
    after = snapshot(folder, world.root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return Outcome(
        code=code,
        stdout=buffers[out_r].decode(errors="replace"),
        stderr=buffers[err_r].decode(errors="replace"),
        seconds=seconds,
        hung=not finished,
        changed=changed,
    )
