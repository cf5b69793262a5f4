"""Which version of a file a reader is reading: a file replaced under the same name, even while it is
being read, is noticed (ChangedFile) instead of read as a mix of two versions.

    same_version(url, file_version(url, os.stat(url)), plan.seen, size_now, plan_size)
"""
from __future__ import annotations

import os

from ..retry import ChangedFile


def file_version(url: str, info: dict | os.stat_result) -> str | None:
    """What tells one version of a file from another: a local file's size and modification time,
    a store's ETag (or Last-Modified); None when the store says neither."""
    if isinstance(info, os.stat_result):
        import datetime
        when = datetime.datetime.fromtimestamp(info.st_mtime_ns / 1e9, datetime.timezone.utc)
        return f"{info.st_size} bytes modified {when.isoformat(timespec='microseconds')}"
    for key in ("ETag", "etag", "Last-Modified", "last-modified", "LastModified"):
        if info.get(key):
            return f"{key} {str(info[key]).strip()}"
    return None


def same_version(url: str, version: str | None, seen: dict | None,
                 size: int | None = None, planned: int | None = None) -> None:
    """ChangedFile unless `url` is still what the plan recorded (`planned` bytes) and the version
    this reader first saw of it (`seen`: url -> version, one per plan)."""
    if planned is not None and size is not None and size != planned:
        raise ChangedFile(f"'{url}' changed while it was being read (it has {size} bytes now, "
                          f"the plan recorded {planned})")
    if seen is not None and version is not None:
        first = seen.setdefault(url, version)
        if first != version:
            raise ChangedFile(f"'{url}' changed while it was being read (first {first}, now "
                              f"{version})")
