"""Provenance: which documents a block is made of, as int64 rows (source, shard, row group, row, first token, end
token), token offsets within the document (its EOS is its last token).

    prov = sample["provenance"]          # a Provenance (lmstream.packing makes them), or an array
    prov.tolist()                        # [[source, shard, row_group, row, first, end], ...]

A block's Provenance holds its feed's entries (origins and where they end in the feed's tokens) and makes the rows
when first read, for all blocks of that feed at once: training, which rarely reads them, pays a reference per block.
"""
from __future__ import annotations

import numpy as np


class FeedOrigins:
    """The entries of one feed as the packer held them (origins, where they end in the feed's token stream), from
    which every block's segments are made, all at once, when one is first read."""
    __slots__ = ("origins", "ends", "lens", "block_size", "n", "_rows", "_at")

    def __init__(self, origins: np.ndarray, ends: np.ndarray, lens: np.ndarray, block_size: int, n: int):
        self.origins, self.ends, self.lens, self.block_size, self.n = origins, ends, lens, block_size, n
        self._rows = self._at = None

    def __getstate__(self):
        return (self.origins, self.ends, self.lens, self.block_size, self.n)

    def __setstate__(self, state):
        self.origins, self.ends, self.lens, self.block_size, self.n = state
        self._rows = self._at = None

    def block(self, b: int) -> np.ndarray:
        if self._rows is None:
            self._make()
        return self._rows[self._at[b]:self._at[b + 1]]

    def _make(self) -> None:
        """Segments start at each block's start and at each entry's start inside the blocks; empty ones are left out."""
        L, n, ends = self.block_size, self.n, self.ends
        starts = ends - self.lens
        cuts = np.concatenate([starts[starts < n * L], np.arange(n, dtype=np.int64) * L])
        cuts.sort()
        seg_end = np.empty_like(cuts)
        seg_end[:-1], seg_end[-1] = cuts[1:], n * L
        e = np.searchsorted(ends, cuts, side="right")   # the entry holding the segment's first token
        keep = (seg_end > cuts) & (e < len(ends))       # empty entries, an entry starting on a block's edge
        cuts, seg_end, e = cuts[keep], seg_end[keep], e[keep]
        rows = np.empty((len(cuts), 6), dtype=np.int64)
        rows[:, 0] = 0
        rows[:, 1:4] = self.origins[e, :3]
        rows[:, 4] = self.origins[e, 3] + cuts - starts[e]
        rows[:, 5] = rows[:, 4] + seg_end - cuts
        self._rows = rows
        self._at = np.searchsorted(cuts, np.arange(n + 1, dtype=np.int64) * L, side="left").tolist()


class Provenance:
    """The segments of one block, int64 rows (source, shard, row group, row, first token, end token), made when first
    read (`rows`, `tolist()`, indexing and iteration read them)."""
    __slots__ = ("feed", "index", "source")

    def __init__(self, feed: FeedOrigins, index: int, source: int = 0):
        self.feed, self.index, self.source = feed, index, source

    def __getstate__(self):
        return (self.feed, self.index, self.source)

    def __setstate__(self, state):
        self.feed, self.index, self.source = state

    @property
    def rows(self) -> np.ndarray:
        rows = self.feed.block(self.index)
        if self.source:
            rows = rows.copy()
            rows[:, 0] = self.source
        return rows

    def with_source(self, source: int) -> "Provenance":
        return Provenance(self.feed, self.index, source)

    def tolist(self) -> list:
        return self.rows.tolist()

    def __array__(self, dtype=None, copy=None):
        return self.rows if dtype is None else self.rows.astype(dtype)

    @property
    def shape(self) -> tuple:
        return self.rows.shape

    def __getitem__(self, key):
        return self.rows[key]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def with_source(provenance, source: int):
    """A block's provenance with its segments' source set (a mixture's source number)."""
    if isinstance(provenance, Provenance):
        return provenance.with_source(source)
    rows = np.array(provenance, dtype=np.int64)
    rows[:, 0] = source
    return rows
