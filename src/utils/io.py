"""Atomic file writes: a reader (or a crash) never sees a half-written file.

The data goes to a temporary file in the destination's directory (same file system, so
the final ``os.replace`` is an atomic rename), is flushed and fsync'ed, and only then
replaces the destination. On error the temporary file is removed and the destination is
left as it was.

A process killed while writing cannot remove its temporary file, so temporary names carry
the host and process id (`.NAME.HOST-PID[.XXXX].tmp[.EXT]`): `remove_stale_temp_files` deletes
those of this host whose process is gone, and leaves live writers' files alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from typing import IO, Any, Iterator, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once, at import (single-threaded)
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[\w-]+)-(?P<pid>\d+)(?:\.\w+)?\.tmp(?:\.\w+)?$")
LEGACY_TEMP_NAME = re.compile(r"^\.tmp-(?P<pid>\d+)-(?P<name>.+)$")   # earlier checkpoint saves


def _host_tag() -> str:
    return re.sub(r"[^\w-]", "_", socket.gethostname()) or "host"


def temp_name_prefix(path: PathLike) -> str:
    """`.NAME.HOST-PID.`: the start of every temporary name this process uses for `path`."""
    return f".{os.path.basename(os.fspath(path))}.{_host_tag()}-{os.getpid()}."


def temp_path_for(path: PathLike, extension: str = "") -> str:
    """A temporary path beside `path` for writers that need a name rather than a file object;
    `extension` (e.g. ".ckpt") is appended for writers that insist on one."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), temp_name_prefix(path) + "tmp" + extension)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory: PathLike) -> list[str]:
    """Delete the temporary files in `directory` left by dead processes of this host; returns them.

    Files of other hosts (a shared file system) and of live processes are kept.
    """
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    host, removed = _host_tag(), []
    for name in names:
        match = TEMP_NAME.match(name)
        if match is not None and match.group("host") != host:
            continue
        match = match or LEGACY_TEMP_NAME.match(name)
        if match is None or int(match.group("pid")) == os.getpid() or _process_alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing that atomically replaces ``path`` on success.

    Args:
        path: destination; its parent directory is created if missing.
        mode: ``'wb'`` (default) or ``'w'`` (text, UTF-8 unless ``encoding`` is given).

    Example::

        with atomic_write("ckpt/last.ckpt") as f:
            f.write(payload)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_name_prefix(path), suffix=".tmp")
    try:
        if mode == "w" and encoding is None:
            encoding = "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    """NumPy scalars and arrays, which ``json`` does not know, as Python values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`atomic_write`).

    NumPy scalars/arrays are converted; NaN and infinity are rejected (``ValueError``)
    because they are not valid JSON.
    """
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, default=_json_default, allow_nan=False)
        if indent is not None:
            f.write("\n")
