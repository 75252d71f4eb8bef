"""Tests for hiddenite.atomic: all-or-nothing writes, modes, stale temporaries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hiddenite.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_text(target, "two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_writer_that_replaces_the_temp_file_still_gets_the_umask_mode(tmp_path):
    def replace(tmp: Path) -> None:  # as safetensors does: a new file under the same name
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", replace)
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.name != "posix", reason="stale-temp cleanup uses POSIX pids")
def test_temp_of_a_dead_process_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".f.txt.{int(dead.stdout)}.abcdef.tmp"
    stale.write_text("left by a killed save")
    atomic_write_text(target, "new")
    assert not stale.exists()
    assert target.read_text() == "new"
