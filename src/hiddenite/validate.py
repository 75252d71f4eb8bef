"""Checks shared by every entry point that reads or writes a user's file.

- :func:`check_json_depth`: refuse JSON text nested deeper than a bound *before* parsing it
  (a 100,000-level document would otherwise end in ``RecursionError``);
- :func:`open_regular`: open a file for reading only if it is a regular file, without ever
  blocking on a FIFO or device (``stat`` first, then ``O_NONBLOCK`` and ``fstat`` on the open
  descriptor, which closes the race between the two);
- :func:`check_output_file` / :func:`check_output_folder`: refuse, before any work, an output
  path that is a directory, a FIFO, a device or a socket, or lies in a folder that cannot be
  written.

Every refusal is a :class:`~hiddenite.errors.UserError` (one line, naming the path and the fix).
``docs/hostile-inputs.md`` lists the bounds.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = [
    "MAX_JSON_DEPTH",
    "check_json_depth",
    "check_output_file",
    "check_output_folder",
    "check_regular_file",
    "file_kind",
    "json_depth",
    "open_regular",
]

# Deepest nesting of any JSON document hiddenite reads (its own files nest at most 6 deep).
MAX_JSON_DEPTH = 64

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of ``[``/``{`` in JSON ``text``, brackets inside strings ignored.

    Linear time, no recursion (string literals are removed by one regular expression, the
    brackets counted with a cumulative sum); malformed text gives a number, never an error.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    bare = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    if bare.size == 0:
        return 0
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int64)
    step -= np.isin(bare, (ord("]"), ord("}")))
    return int(max(0, np.cumsum(step).max()))


def check_json_depth(
    text: str | bytes,
    what: str,
    error: type[UserError] = UserError,
    max_depth: int = MAX_JSON_DEPTH,
) -> None:
    """Raise ``error`` if ``text`` nests deeper than ``max_depth`` (call before parsing)."""
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{what} nests {depth} levels deep, more than the limit of {max_depth}")


def file_kind(mode: int) -> str:
    """A person's name for the file type in ``st_mode``."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path if it names an existing regular file (symbolic links followed)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read this {what} ({_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: is {file_kind(st.st_mode)}, not a regular {what}")
    return path


def open_regular(path: str | os.PathLike, what: str = "file", error: type = UserError):
    """Open ``path`` for binary reading if it is a regular file; never blocks.

    ``error`` (a UserError subclass) is raised for a missing, unreadable or special file.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read this {what} ({_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {file_kind(st.st_mode)}, not a regular {what}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: cannot read this {what} ({_reason(exc)})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
        os.close(fd)
        raise error(f"{path}: is {file_kind(st.st_mode)}, not a regular {what}")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _writable_folder(folder: Path, target: Path, what: str) -> None:
    """``folder`` (the nearest existing ancestor of ``target``) must be a writable directory."""
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise UserError(f"{target}: cannot write this {what} ({_reason(exc)})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(
            f"{target}: cannot write this {what}: {folder} is {file_kind(st.st_mode)}, not a folder"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"{target}: cannot write this {what}: folder {folder} is not writable "
            "(permission denied); choose another path"
        )


def _nearest_existing(path: Path) -> Path:
    folder = path
    while not os.path.lexists(folder):
        parent = folder.parent
        if parent == folder:
            break
        folder = parent
    return folder


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse an output path that is not a regular file or an absent path in a writable folder.

    An existing regular file is fine (it is replaced atomically); a directory, FIFO, device or
    socket is refused, as is a path whose folder cannot be created or written.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise UserError(f"{what}: an empty path; give a file name")
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise UserError(f"{path}: cannot write this {what} ({_reason(exc)})") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise UserError(
                f"{path}: is {file_kind(st.st_mode)}; the {what} must be a regular file "
                "or a new path"
            )
        _writable_folder(path.parent if str(path.parent) else Path("."), path, what)
        return path
    folder = _nearest_existing(path.parent if str(path.parent) else Path("."))
    _writable_folder(folder, path, what)
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse an output folder that exists but is not a directory, or cannot be created or
    written."""
    path = Path(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise UserError(f"{path}: cannot use this {what} ({_reason(exc)})") from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(
                f"{path}: is {file_kind(st.st_mode)}, not a folder; choose another {what}"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(
                f"{path}: {what} is not writable (permission denied); choose another one"
            )
        return path
    _writable_folder(_nearest_existing(path), path, what)
    return path
