"""A file of which only some byte ranges are at hand: pyarrow reads a Parquet footer or row group
from it as from the whole file, and any other range it asks for is fetched then (`miss`).

    f = SparseFile(size, {start: bytes_from_start}, miss=lambda a, b: fetch(url, a, b))
"""
from __future__ import annotations

import io


class SparseFile(io.RawIOBase):
    """A read-only file of known size made of fetched byte ranges; a read outside them calls
    `miss(start, end)`."""

    def __init__(self, size: int, ranges: dict[int, bytes], miss=None):
        self.size, self.ranges, self.miss, self.pos = size, dict(ranges), miss, 0
        self.missed = 0   # bytes read outside the prefetched ranges

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        self.pos = offset + (0, self.pos, self.size)[whence]
        return self.pos

    def read(self, n=-1):
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        out = self._slice(self.pos, end)
        self.pos = end
        return out

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def _slice(self, start: int, end: int) -> bytes:
        """Bytes [start, end) from the fetched ranges, gaps filled by `miss` (each gap once, then
        kept)."""
        for at, data in self.ranges.items():   # the common case: inside one range
            if at <= start and end <= at + len(data):
                return data[start - at:end - at]
        out, pos = [], start
        for at, data in sorted(self.ranges.items()):
            if at + len(data) <= pos or at >= end:
                continue
            if at > pos:
                out.append(self._miss(pos, at))
                pos = at
            out.append(data[pos - at:min(end, at + len(data)) - at])
            pos = min(end, at + len(data))
        if pos < end:
            out.append(self._miss(pos, end))
        return b"".join(out)

    def _miss(self, start: int, end: int) -> bytes:
        if self.miss is None:
            raise OSError(f"bytes {start}-{end} were not fetched")
        data = self.miss(start, end)
        self.missed += len(data)
        self.ranges[start] = data
        return data
