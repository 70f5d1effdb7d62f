"""An in-memory cache of organizations' data, keyed by the files it was read from.

Loading an organization (:func:`fedunlearn.data.io.load_organization`,
:func:`fedunlearn.data.user.load_user_organization`) is remembered under the resolved path, the
loader's parameters and the ``(relative path, mtime, size)`` of every file under the path. A
process that handles many messages (a simulation actor, an in-process grid, a long-lived
ClientApp) reads and parses the files once; any change to them (an edit, a new file, a removal)
changes the key, so the data is read again. In a deployment where every message runs in its own
process (Flower's default, and the forked tasks of :mod:`fedunlearn.deploy.warm`) each message
still reads its files once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["cache_info", "cached_organization", "clear_organization_cache", "files_signature"]

T = TypeVar("T")

_CACHE_SIZE = 16
RACY_SECONDS = 2.0
"""Files modified this recently are read again on every load (see :func:`cached_organization`)."""
_cache: OrderedDict[tuple, object] = OrderedDict()
_cache_lock = threading.Lock()
_cache_stats = {"hits": 0, "misses": 0}


def files_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """``(relative path, mtime in ns, size)`` of ``path`` (a file) or of every file under it, sorted.

    A missing path has the empty signature (its loader then raises the usual error).
    """
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_mtime_ns, st.st_size),)
    if not path.is_dir():
        return ()
    out = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        st = file.stat()
        out.append((file.relative_to(path).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(out)


def cached_organization(path: Path, params: tuple, load: Callable[[], T]) -> T:
    """``load()``, remembered under ``(resolved path, params, files_signature(path))``.

    The loaded value must be immutable (``OrganizationData`` is): one object is shared by every
    caller. Failures are not cached. At most 16 entries are kept (least recently used first out).
    A file modified less than :data:`RACY_SECONDS` ago is not trusted (file times are coarse, so a
    same-size rewrite in the same tick would keep its signature): such data is loaded every time
    until the files are older (git's "racily clean" rule).
    """
    resolved = Path(path).resolve()
    signature = files_signature(resolved)
    if not signature or max(m for _, m, _ in signature) > time.time_ns() - int(RACY_SECONDS * 1e9):
        return load()
    key = (str(resolved), params, signature)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            _cache_stats["hits"] += 1
            return _cache[key]  # type: ignore[return-value]
    data = load()
    with _cache_lock:
        _cache_stats["misses"] += 1
        _cache[key] = data
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def clear_organization_cache() -> dict[str, int]:
    """Empty the cache of :func:`cached_organization`; return its counters (hits, misses, size) before."""
    with _cache_lock:
        stats = {**_cache_stats, "size": len(_cache)}
        _cache.clear()
        _cache_stats.update(hits=0, misses=0)
    return stats


def cache_info() -> dict[str, int]:
    """Counters of :func:`cached_organization`: hits, misses and entries held."""
    with _cache_lock:
        return {**_cache_stats, "size": len(_cache)}

