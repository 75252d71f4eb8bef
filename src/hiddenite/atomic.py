"""Atomic file writes: a file is either the old one or the complete new one, never half.

Every file hiddenite writes (checkpoints, metrics, model files, reports, plots, specs) goes
through :func:`atomic_write`: the content is written to ``.<name>.<pid>.<random>.tmp`` beside
the target, flushed to disk, given the mode an ordinary ``open`` would give it (``0o666``
less the umask), and renamed onto the target; then the directory entry is flushed. A write
that fails or is killed leaves the previous file intact; a temporary file left by a killed
process is removed by the next write to the same target.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import UserError
from .validate import file_kind

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]

WRITE_CHUNK = 1 << 20


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files of earlier writes to ``path`` whose process has died (POSIX)."""
    if os.name != "posix":
        return
    prefix = f".{path.name}."
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return
    for tmp in candidates:
        name = tmp.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _refuse_special(path: Path) -> None:
    """A directory, FIFO, device or socket at ``path`` is never replaced by a file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent (or unreachable: the write itself reports it)
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: is {file_kind(mode)}; hiddenite writes only regular files")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the content, then move it onto ``path`` atomically.

    ``write`` may write the temporary file in place or replace it (as some libraries do).
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    _refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _refuse_special(path)  # again: it may have appeared while the content was written
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def write_chunks(fh, data: bytes | memoryview) -> None:
    """Write ``data`` to an open binary file in 1 MiB chunks."""
    view = memoryview(data)
    for start in range(0, len(view), WRITE_CHUNK):
        fh.write(view[start : start + WRITE_CHUNK])


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write_chunks(fh, data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
