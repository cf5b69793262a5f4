"""A node-local cache of the byte ranges read from remote files, keyed by content: a cycled mixture
source, a held-out set read at every evaluation, an `inspect` replay and a rerun of the same job read
their Parquet row groups from local disk the second time.

    cache = RangeCache("/local/lmstream-cache", 50 << 30)
    data = cache.get(key) or cache.put(key, fetch(...))

Keys name content, never a host: a file's content tag (the Hub's LFS sha256, an ETag) and the byte
range; a file without such a tag is not cached (its name does not say its bytes). Entries are written
to a temporary file and renamed into place, so the processes of a node may read and write it at once
and a reader never sees half an entry. The least recently used entries (by modification time, which
a hit refreshes) are removed when the cache holds more than its size.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading

from ..paths import atomic_write


class RangeCache:
    """Byte ranges under `folder`, at most about `max_bytes` of them."""

    def __init__(self, folder: str, max_bytes: int):
        self.folder, self.max_bytes = os.path.abspath(os.path.expanduser(folder)), int(max_bytes)
        os.makedirs(self.folder, exist_ok=True)
        self._lock = threading.Lock()
        self._written = 0      # bytes this process added since it last measured the folder
        self._held: int | None = None

    def __getstate__(self):   # to a DataLoader worker: the folder and the size, not the lock
        return {"folder": self.folder, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["max_bytes"])

    def _path(self, key: str) -> str:
        h = hashlib.sha256(key.encode()).hexdigest()
        return os.path.join(self.folder, h[:2], h)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)     # recently used
        return data

    def put(self, key: str, data: bytes) -> bytes:
        """Keep `data` under `key` (whole or not at all); returns `data`."""
        if len(data) > self.max_bytes:
            return data
        path = self._path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, data, sync=False)   # a lost entry is only read again
        except OSError:      # a full or read-only cache never stops a run: it is only not kept
            return data
        with self._lock:
            self._written += len(data)
            due = self._held is None or self._held + self._written > self.max_bytes
        if due:
            self.evict()
        return data

    def entries(self) -> list[tuple[float, int, str]]:
        """(last used, bytes, path) of every entry."""
        out = []
        for sub in os.scandir(self.folder):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                if ".tmp-" in e.name:   # being written
                    continue
                with contextlib.suppress(OSError):
                    st = e.stat()
                    out.append((st.st_mtime, st.st_size, e.path))
        return out

    def evict(self) -> None:
        """Remove the least recently used entries until the cache holds at most 90% of its size."""
        entries = sorted(self.entries())
        held = sum(size for _, size, _ in entries)
        if held > self.max_bytes:
            for _, size, path in entries:
                if held <= self.max_bytes * 0.9:
                    break
                with contextlib.suppress(OSError):   # another process removed it first
                    os.remove(path)
                held -= size
        with self._lock:
            self._held, self._written = held, 0


def cached(cache: RangeCache | None, tag: str | None, start: int, end: int, read, counts=None):
    """Bytes [start, end) of the file whose content tag is `tag`: from `cache` when it holds them,
    else `read()` (kept in the cache). Counts cache_hits and cache_bytes in `counts`."""
    if cache is None or not tag:
        return read()
    key = f"{tag}:{start}-{end}"
    data = cache.get(key)
    if data is not None and len(data) == end - start:
        if counts is not None:
            counts["cache_hits"] = counts.get("cache_hits", 0) + 1
            counts["cache_bytes"] = counts.get("cache_bytes", 0) + len(data)
        return data
    return cache.put(key, read())
