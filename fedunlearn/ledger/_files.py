"""Crash-safe file writes shared by the key and blob stores.

A file is written to a temporary name in its final folder, fsynced, then moved into place and the
folder fsynced, so that after a crash the final name holds either nothing or the whole content.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["TEMP_PREFIX", "fsync_dir", "write_atomic"]

TEMP_PREFIX = ".tmp-"
"""Prefix of in-flight temporary files; they are never read as content."""


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def write_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically; the file gets mode 0600.

    Parameters
    ----------
    path : Path
        Final file name; its folder must exist.
    data : bytes
        Content.
    exclusive : bool, default False
        Keep an existing ``path`` (hard-link instead of rename, so that two concurrent writers
        cannot both win) and return ``False``.

    Returns
    -------
    bool
        Whether ``path`` now holds ``data`` written by this call.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # file systems without hard links: exclusive create instead
                return _write_exclusive(path, data)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True
