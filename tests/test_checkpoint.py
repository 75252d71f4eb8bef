"""Tests for hiddenite.checkpoint: safetensors checkpoints, atomic writes, broken files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from hiddenite import checkpoint as ckpt_mod
from hiddenite.atomic import atomic_write
from hiddenite.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    check_fits,
    load_checkpoint,
    save_checkpoint,
)
from hiddenite.convert import SupermaskConfig, supermask_

CONFIG = {"model": "mlp", "model_kwargs": {"hidden": [4]}, "epochs": 2}
HISTORY = [
    {
        "epoch": e,
        "lr": 0.05,
        "train_loss": 1.25,
        "train_accuracy": 0.25,
        "val_loss": 1.5,
        "val_accuracy": 0.5,
        "seconds": 0.1,
    }
    for e in (1, 2, 3)
]


# --------------------------------------------------------------------------- helpers


def tiny_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    return supermask_(model, SupermaskConfig(density=0.5, seed=1, keep_last_dense=True))


def trained(optimizer: str, steps: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = tiny_model()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def make_checkpoint(optimizer: str = "sgd") -> tuple[Checkpoint, nn.Module, torch.optim.Optimizer]:
    model, opt = trained(optimizer)
    return (
        Checkpoint(
            config=dict(CONFIG),
            epoch=3,
            history=list(HISTORY),
            model_state=model.state_dict(),
            optimizer_state=opt.state_dict(),
        ),
        model,
        opt,
    )


def saved(tmp_path: Path, name: str = "checkpoint.safetensors") -> Path:
    path = tmp_path / name
    save_checkpoint(path, make_checkpoint()[0])
    return path


def meta(**changes) -> dict:
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dict(CONFIG),
        "epoch": 0,
        "history": [],
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def write_crafted(path: Path, hiddenite_meta, tensors=None) -> Path:
    """A checkpoint with this metadata and valid checksums (a version 2 dict gets its
    ``tensors_sha256`` unless it has one)."""
    tensors = {"model.0.scores": torch.zeros(2)} if tensors is None else tensors
    if isinstance(hiddenite_meta, dict) and hiddenite_meta.get("format_version") == 2:
        hiddenite_meta = {"tensors_sha256": ckpt_mod.tensors_sha256(tensors), **hiddenite_meta}
    text = hiddenite_meta if isinstance(hiddenite_meta, str) else json.dumps(hiddenite_meta)
    sha = hashlib.sha256(text.encode()).hexdigest()
    save_file(tensors, str(path), metadata={"hiddenite": text, "hiddenite_sha256": sha})
    return path


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert a[key].dtype == b[key].dtype, key


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_round_trip(tmp_path, optimizer):
    original, model, opt = make_checkpoint(optimizer)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, original)
    loaded = load_checkpoint(path)
    assert loaded.config == CONFIG
    assert loaded.epoch == 3
    assert loaded.history == HISTORY
    assert_state_equal(loaded.model_state, model.state_dict())
    # frozen weights are not part of the state; BN statistics and counters are
    assert "0.weight" not in loaded.model_state
    assert {"0.scores", "1.running_mean", "1.num_batches_tracked", "3.weight"} <= set(
        loaded.model_state
    )
    want = opt.state_dict()
    got = loaded.optimizer_state
    assert got["param_groups"] == json.loads(json.dumps(want["param_groups"]))
    assert set(got["state"]) == set(want["state"])
    for index, values in want["state"].items():
        assert set(got["state"][index]) == set(values)
        for name, value in values.items():
            assert torch.equal(got["state"][index][name], value), (index, name)
    if optimizer == "sgd":
        assert all("momentum_buffer" in v for v in got["state"].values())
    else:
        assert all(float(v["step"]) == 3.0 for v in got["state"].values())
        assert all({"exp_avg", "exp_avg_sq"} <= set(v) for v in got["state"].values())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_restored_optimizer_continues_identically(tmp_path, optimizer):
    original, model, opt = make_checkpoint(optimizer)
    save_checkpoint(tmp_path / "c.safetensors", original)
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    model2 = tiny_model()
    model2.load_state_dict(loaded.model_state)
    if optimizer == "sgd":
        opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    opt2.load_state_dict(loaded.optimizer_state)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(5))
    for m, o in ((model, opt), (model2, opt2)):
        loss = m(x).square().mean()
        o.zero_grad()
        loss.backward()
        o.step()
    assert_state_equal(model.state_dict(), model2.state_dict())


def test_no_optimizer_state(tmp_path):
    model = tiny_model()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Checkpoint(dict(CONFIG), 0, [], model.state_dict(), None))
    loaded = load_checkpoint(path)
    assert loaded.optimizer_state is None
    assert loaded.epoch == 0 and loaded.history == []
    assert_state_equal(loaded.model_state, model.state_dict())


def test_file_layout(tmp_path):
    path = saved(tmp_path)
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        header = json.loads(fh.metadata()["hiddenite"])
    assert all(k.startswith(("model.", "optimizer.")) for k in keys)
    assert "model.0.weight" not in keys and "model.3.weight" in keys
    assert header["format"] == FORMAT and header["format_version"] == FORMAT_VERSION
    assert header["config"] == CONFIG and header["epoch"] == 3
    assert "param_groups" in header["optimizer"]
    # no pickle: the file is a safetensors header and raw tensor bytes
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + size])["__metadata__"]["hiddenite"]


def test_directory_resolves_to_its_checkpoint(tmp_path):
    saved(tmp_path)
    assert load_checkpoint(tmp_path).epoch == 3
    assert load_checkpoint(str(tmp_path)).epoch == 3


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such checkpoint.*hiddenite train"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)  # a folder without a run
    assert str(tmp_path / "checkpoint.safetensors") in str(info.value)
    assert "hiddenite train" in str(info.value)


# --------------------------------------------------------------------------- atomic writes


def test_save_overwrites_atomically_and_leaves_no_temp_files(tmp_path):
    path = saved(tmp_path)
    first = path.read_bytes()
    c, _, _ = make_checkpoint("adam")
    c.epoch = 2
    c.history = c.history[:2]
    save_checkpoint(path, c)
    assert path.read_bytes() != first
    assert load_checkpoint(path).epoch == 2
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_creates_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c.safetensors"
    save_checkpoint(path, make_checkpoint()[0])
    assert load_checkpoint(path).epoch == 3


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch, error):
    path = saved(tmp_path)
    before = path.read_bytes()
    seen: list[str] = []

    def broken_save_file(tensors, filename, metadata=None):
        seen.append(filename)
        Path(filename).write_bytes(b"partial" * 100)  # half a file, then the failure
        raise error

    monkeypatch.setattr(ckpt_mod, "save_file", broken_save_file)
    c, _, _ = make_checkpoint("adam")
    with pytest.raises(type(error)):
        save_checkpoint(path, c)
    assert seen and Path(seen[0]).parent == tmp_path and seen[0] != str(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert load_checkpoint(path).epoch == 3


def test_atomic_write_bytes_success_and_failure(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("one"))
    assert target.read_text() == "one"

    def fail(tmp):
        Path(tmp).write_text("tw")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, fail)
    assert target.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644


def test_checkpoint_file_respects_umask(tmp_path):
    """safetensors writes its own file: the mode is still set from the umask."""
    old = os.umask(0o022)
    try:
        save_checkpoint(
            tmp_path / "c.safetensors",
            Checkpoint(
                config={},
                epoch=0,
                history=[],
                model_state={"a": torch.ones(2)},
                optimizer_state=None,
            ),
        )
    finally:
        os.umask(old)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- broken files


def test_empty_file(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not a checkpoint \(file too short\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [3, 20, 200, -1], ids=["3B", "20B", "200B", "all-but-1"])
def test_truncated(tmp_path, keep):
    path = saved(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert any(
        s in message for s in ("file too short", "bad header length", "corrupt checkpoint")
    ), message


def test_truncated_tensor_data_says_corrupt(tmp_path):
    path = saved(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-16])  # header intact, tensor bytes cut
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "c.safetensors"
    g = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8)))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "header, problem",
    [
        (b"\xff" * 8, "bad header length"),
        ((10**12).to_bytes(8, "little"), "bad header length"),
        (len(b"{not json}").to_bytes(8, "little") + b"{not json}", "header is not JSON"),
        (len(b"\xff\xfe\xfd").to_bytes(8, "little") + b"\xff\xfe\xfd", "header is not JSON"),
        (len(b"[1, 2]").to_bytes(8, "little") + b"[1, 2]", "no hiddenite metadata"),
        (
            len(b'{"__metadata__": "x"}').to_bytes(8, "little") + b'{"__metadata__": "x"}',
            "no hiddenite metadata",
        ),
    ],
    ids=["ff-length", "huge-length", "not-json", "not-utf8", "json-list", "metadata-string"],
)
def test_bad_headers(tmp_path, header, problem):
    path = tmp_path / "c.safetensors"
    path.write_bytes(header + b"\x00" * 64)
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(path)


def test_safetensors_file_without_hiddenite_metadata(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match=r"not a hiddenite checkpoint.*no hiddenite metadata"):
        load_checkpoint(path)
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no hiddenite metadata"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "hiddenite_meta, problem",
    [
        ("{not json", "no hiddenite metadata"),
        ([1, 2], "format is not hiddenite-checkpoint"),
        (meta(format="hiddenite-model"), "format is not hiddenite-checkpoint"),
        (meta(format_version=3), "format version 3 is not supported"),
        (meta(format_version="1"), "format version '1' is not supported"),
        (meta(format_version=None), "format version None is not supported"),
        (meta(config=None), "field 'config' is missing"),
        (meta(config=[1]), "field 'config' is missing or malformed"),
        (meta(epoch="1"), "field 'epoch'"),
        (meta(history={}), "field 'history'"),
        (meta(optimizer=[1]), "optimizer state is malformed"),
        (meta(optimizer={"scalars": {}}), "optimizer state is malformed"),
    ],
    ids=[
        "not-json",
        "json-list",
        "other-format",
        "version-2",
        "version-string",
        "no-version",
        "no-config",
        "config-list",
        "epoch-string",
        "history-dict",
        "optimizer-list",
        "no-param-groups",
    ],
)
def test_bad_hiddenite_metadata(tmp_path, hiddenite_meta, problem):
    path = write_crafted(tmp_path / "c.safetensors", hiddenite_meta)
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(path)


def test_wrong_format_version_message(tmp_path):
    path = write_crafted(tmp_path / "c.safetensors", meta(format_version=99))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: checkpoint format version 99 is not supported by this hiddenite "
        f"(reads version {FORMAT_VERSION})"
    )


@pytest.mark.parametrize(
    "optimizer_meta, tensors",
    [
        ({"param_groups": []}, {"optimizer.x.step": torch.zeros(1)}),
        ({"param_groups": []}, {"optimizer.step": torch.zeros(1)}),
        ({"param_groups": [], "scalars": []}, {"model.a": torch.zeros(1)}),
        ({"param_groups": [], "scalars": {"0": 5}}, {"model.a": torch.zeros(1)}),
        ({"param_groups": [], "scalars": {"a": {}}}, {"model.a": torch.zeros(1)}),
    ],
    ids=["index-not-int", "no-name", "scalars-list", "scalar-entry-int", "scalar-index"],
)
def test_malformed_optimizer_layout_is_a_checkpoint_error(tmp_path, optimizer_meta, tensors):
    path = write_crafted(tmp_path / "c.safetensors", meta(optimizer=optimizer_meta), tensors)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_corrupt_tensor_entry(tmp_path):
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + size].replace(b'"F32"', b'"F99"', 1)
    assert len(header) == size
    raw[8 : 8 + size] = header
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(path)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blob=st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_other_errors(tmp_path, blob):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_small_length_prefixed_headers(tmp_path, data):
    """A plausible length prefix followed by arbitrary JSON-ish bytes: always CheckpointError."""
    body = data.draw(
        st.one_of(
            st.binary(max_size=64),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c),
                max_leaves=6,
            ).map(lambda v: json.dumps({"__metadata__": v}).encode()),
        )
    )
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# --------------------------------------------------------------------------- integrity (v2)


def _rewrite_metadata(path: Path, edit) -> None:
    """Re-frame ``path`` with its hiddenite JSON passed through ``edit`` (checksums kept)."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    data = json.loads(metadata["hiddenite"])
    edit(data, tensors)
    text = json.dumps(data)
    sha = hashlib.sha256(text.encode()).hexdigest()
    save_file(tensors, str(path), metadata={"hiddenite": text, "hiddenite_sha256": sha})


def test_version_2_carries_both_checksums(tmp_path):
    path = saved(tmp_path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    text = metadata["hiddenite"]
    assert metadata["hiddenite_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    data = json.loads(metadata["hiddenite"])
    # the digest, recomputed by hand: key, dtype, shape as JSON, a NUL, then the raw bytes
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        digest.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode() + b"\0")
        digest.update(bytes(t.reshape(-1).view(torch.uint8).tolist()))
    assert data["tensors_sha256"] == digest.hexdigest()


def test_flipped_data_byte_is_a_checksum_error(tmp_path):
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="tensor checksum mismatch"):
        load_checkpoint(path)


def test_edited_metadata_is_a_checksum_error(tmp_path):
    path = saved(tmp_path)
    raw = path.read_bytes()
    edited = raw.replace(b'\\"epoch\\": 3', b'\\"epoch\\": 2', 1)
    assert edited != raw and len(edited) == len(raw)
    path.write_bytes(edited)
    with pytest.raises(CheckpointError, match="metadata checksum mismatch"):
        load_checkpoint(path)


def test_missing_metadata_checksum(tmp_path):
    save_file(
        {"model.a": torch.zeros(1)},
        str(tmp_path / "c"),
        metadata={"hiddenite": json.dumps(meta(tensors_sha256="0" * 64))},
    )
    with pytest.raises(CheckpointError, match="lacks its metadata checksum"):
        load_checkpoint(tmp_path / "c")


def test_version_1_is_still_read(tmp_path):
    path = tmp_path / "v1.safetensors"
    save_file(
        {"model.a": torch.ones(2)},
        str(path),
        metadata={"hiddenite": json.dumps(meta(format_version=1))},
    )
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.model_state["a"], torch.ones(2)) and loaded.epoch == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_learned_tensor(tmp_path, value):
    tensors = {"model.0.scores": torch.tensor([0.5, value])}
    path = write_crafted(tmp_path / "c.safetensors", meta(), tensors)
    with pytest.raises(CheckpointError, match=r"'model\.0\.scores' holds NaN or infinity"):
        load_checkpoint(path)


def _row(epoch, **changes):
    return {**HISTORY[0], "epoch": epoch, **changes}


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"epoch": -1}, "epoch -1 is not in"),
        ({"epoch": 1, "history": [_row(1), _row(2)]}, "history has 2 rows, more than its"),
        ({"epoch": 1, "history": [[1, 2]]}, "must hold exactly"),
        ({"epoch": 1, "history": [{"epoch": 1}]}, "must hold exactly"),
        ({"epoch": 1, "history": [_row(2)]}, "has epoch 2, expected 1"),
        ({"epoch": 1, "history": [_row(1, lr="x")]}, "lr must be a finite number"),
        ({"epoch": 1, "history": [_row(1, seconds=-1.0)]}, "seconds must be >= 0"),
        ({"epoch": 1, "history": [_row(1, train_loss=True)]}, "train_loss must be"),
        ({"unknown": 1}, "unknown field"),
        ({"optimizer": {"param_groups": [], "scalars": {}}}, "param_groups must be a list"),
        ({"optimizer": {"param_groups": [{"params": ["a"]}]}}, "'params' must be a list"),
        ({"optimizer": {"param_groups": [{"params": [0, 0]}]}}, "appears twice"),
        ({"optimizer": {"param_groups": [{"params": [0], "lr": {"a": 1}}]}}, "'lr' must be"),
        ({"optimizer": {"param_groups": [{"params": [0]}], "x": 1}}, "optimizer state"),
        ({"tensors_sha256": "abc"}, "'tensors_sha256' is malformed"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_every_field_is_checked(tmp_path, changes, problem):
    path = write_crafted(tmp_path / "c.safetensors", meta(**changes))
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(path)


def test_deeply_nested_header_is_a_clean_error(tmp_path):
    path = tmp_path / "c.safetensors"
    body = b'{"__metadata__": {"hiddenite": "x"}, "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(CheckpointError, match="nests 100001 levels deep"):
        load_checkpoint(path)
    deep = "[" * 100_000 + "]" * 100_000
    path = write_crafted(tmp_path / "d.safetensors", deep)
    with pytest.raises(CheckpointError, match="levels deep"):
        load_checkpoint(path)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "c.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is a FIFO"):
        load_checkpoint(fifo)


# --------------------------------------------------------------------------- check_fits


def test_check_fits_accepts_its_own_model_and_optimizer(tmp_path):
    for name in ("sgd", "adam"):
        original, model, opt = make_checkpoint(name)
        save_checkpoint(tmp_path / name, original)
        check_fits(tmp_path / name, load_checkpoint(tmp_path / name), model, opt)


def _fresh(name):
    _, model, opt = make_checkpoint(name)
    return model, opt


@pytest.mark.parametrize(
    "name, edit, problem",
    [
        ("sgd", lambda d, t: d["optimizer"]["param_groups"][0].pop("momentum"), "lacks"),
        ("sgd", lambda d, t: d["optimizer"]["param_groups"][0].update(momentum=0.5), "momentum"),
        ("sgd", lambda d, t: d["optimizer"]["param_groups"][0].update(lr=-1), "lr must be"),
        ("sgd", lambda d, t: d["optimizer"]["param_groups"].append({"params": []}), "groups"),
        (
            "sgd",
            lambda d, t: t.update({"optimizer.0.momentum": t.pop("optimizer.0.momentum_buffer")}),
            "SGD keeps",
        ),
        ("adam", lambda d, t: t.pop("optimizer.1.exp_avg"), "Adam keeps"),
        ("adam", lambda d, t: t.update({"optimizer.1.exp_avg": torch.zeros(7)}), "exp_avg"),
        ("adam", lambda d, t: t.update({"optimizer.99.exp_avg": torch.zeros(7)}), "not exist"),
        ("sgd", lambda d, t: t.update({"model.0.scores": torch.zeros(3)}), "does not fit"),
        ("sgd", lambda d, t: t.pop("model.0.scores"), "missing"),
        (
            "sgd",
            lambda d, t: t.update({"model.1.running_var": -torch.ones(5)}),
            "negative variances",
        ),
    ],
    ids=[
        "no-momentum",
        "other-momentum",
        "negative-lr",
        "extra-group",
        "renamed-momentum-buffer",
        "no-exp-avg",
        "exp-avg-shape",
        "state-of-no-param",
        "scores-shape",
        "scores-missing",
        "negative-var",
    ],
)
def test_check_fits_refuses_what_does_not_fit(tmp_path, name, edit, problem):
    original, _, _ = make_checkpoint(name)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, original)

    def apply(data, tensors):
        edit(data, tensors)
        data["tensors_sha256"] = ckpt_mod.tensors_sha256(tensors)

    _rewrite_metadata(path, apply)
    model, opt = _fresh(name)
    with pytest.raises(CheckpointError, match=problem):
        check_fits(path, load_checkpoint(path), model, opt)
