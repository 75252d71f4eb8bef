"""Tests for hiddenite.validate: JSON nesting bound, regular files only, writable outputs."""

from __future__ import annotations

import json
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiddenite.atomic import atomic_write_bytes
from hiddenite.errors import UserError
from hiddenite.validate import (
    check_json_depth,
    check_output_file,
    check_output_folder,
    check_regular_file,
    json_depth,
    open_regular,
)

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def naive_depth(value) -> int:
    """Nesting depth of a parsed JSON value (the reference)."""
    if isinstance(value, dict):
        return 1 + max((naive_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((naive_depth(v) for v in value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text('[]{}"\\', max_size=4), c),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_json_depth_equals_the_parsed_depth(value):
    assert json_depth(json.dumps(value)) == naive_depth(value)
    assert json_depth(json.dumps(value).encode()) == naive_depth(value)


def test_deep_documents_are_refused_before_parsing():
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(UserError, match="nests 100000 levels deep, more than the limit of 64"):
        check_json_depth(text, "the document")
    check_json_depth("[" * 64 + "]" * 64, "at the limit")


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done = []

    def attempt():
        with pytest.raises(UserError, match=r"is a FIFO \(named pipe\), not a regular file"):
            open_regular(fifo)
        done.append(True)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    assert done == [True]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "no such file"),
        (lambda p: p.symlink_to("/dev/null"), "is a character device"),
    ],
    ids=["dir", "missing", "device-link"],
)
def test_reading_refuses_what_is_not_a_regular_file(tmp_path, make, words):
    path = tmp_path / "x"
    make(path)
    with pytest.raises(UserError, match=words):
        open_regular(path)
    with pytest.raises(UserError, match=words):
        check_regular_file(path)


def test_open_regular_reads_a_regular_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with open_regular(path) as fh:
        assert fh.read() == b"abc"


@pytest.mark.skipif(ROOT, reason="root reads files whatever their mode")
def test_unreadable_file_is_a_user_error(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(UserError, match="Permission denied"):
        open_regular(path)


def test_output_file_checks(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "a.hnn").name == "a.hnn"
    (tmp_path / "old.hnn").write_bytes(b"")
    check_output_file(tmp_path / "old.hnn")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"")
    for path, words in [
        (tmp_path / "pipe", "is a FIFO"),
        (tmp_path / "dir", "is a directory"),
        ("/dev/null", "is a character device"),
        (tmp_path / "file" / "a.hnn", "is a regular file, not a folder"),
    ]:
        with pytest.raises(UserError, match=words):
            check_output_file(path)


def test_output_folder_checks(tmp_path):
    check_output_folder(tmp_path / "a" / "b")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="is a regular file, not a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(UserError, match="is a regular file, not a folder"):
        check_output_folder(tmp_path / "file" / "run")


@pytest.mark.skipif(ROOT, reason="root writes into any folder")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="not writable"):
            check_output_file(folder / "a.hnn")
        with pytest.raises(UserError, match="not writable"):
            check_output_folder(folder)
    finally:
        folder.chmod(0o700)


def test_atomic_write_never_replaces_a_special_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="hiddenite writes only regular files"):
        atomic_write_bytes(fifo, b"data")
    assert os.path.exists(fifo) and not fifo.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
