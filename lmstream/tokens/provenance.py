"""Provenance: which documents a block is made of, as int64 rows (source, shard, row group, row,
first token, end token), token offsets within the document (its EOS is its last token).

    # a Provenance (lmstream.tokens.packing makes them), or an array
    prov = sample["provenance"]
    prov.tolist()                        # [[source, shard, row_group, row, first, end], ...]

A block's Provenance holds its feed's entries (origins and where they end in the feed's tokens) and
makes the rows when first read, for all blocks of that feed at once: training, which rarely reads
them, pays a reference per block.
"""
from __future__ import annotations

import numpy as np


class FeedOrigins:
    """The entries of one feed as the packer held them (origins, where they end in the feed's token
    stream), from which every block's segments are made, all at once, when one is first read."""
    __slots__ = ("origins", "ends", "lens", "block_size", "n", "_rows", "_at")

    def __init__(self, origins: np.ndarray, ends: np.ndarray, lens: np.ndarray, block_size: int,
                 n: int):
        self.origins, self.ends, self.lens = origins, ends, lens
        self.block_size, self.n = block_size, n
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

    @property
    def rows(self) -> np.ndarray:
        return self._rows

    @property
    def at(self) -> list:
        return self._at

    def _make(self) -> None:
        """Segments start at each block's start and at each entry's start inside the blocks; empty
        ones are left out."""
        L, n, ends = self.block_size, self.n, self.ends
        starts = ends - self.lens
        cuts = np.concatenate([starts[starts < n * L], np.arange(n, dtype=np.int64) * L])
        cuts.sort()
        seg_end = np.empty_like(cuts)
        seg_end[:-1], seg_end[-1] = cuts[1:], n * L
        # the entry holding the segment's first token
        e = np.searchsorted(ends, cuts, side="right")
        # empty entries, an entry starting on a block's edge
        keep = (seg_end > cuts) & (e < len(ends))
        cuts, seg_end, e = cuts[keep], seg_end[keep], e[keep]
        rows = np.empty((len(cuts), 6), dtype=np.int64)
        rows[:, 0] = 0
        rows[:, 1:4] = self.origins[e, :3]
        rows[:, 4] = self.origins[e, 3] + cuts - starts[e]
        rows[:, 5] = rows[:, 4] + seg_end - cuts
        self._rows = rows
        self._at = np.searchsorted(cuts, np.arange(n + 1, dtype=np.int64) * L, side="left").tolist()


class Provenance:
    """The segments of one block, int64 rows (source, shard, row group, row, first token, end
    token), made when first read (`rows`, `tolist()`, indexing and iteration read them)."""
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

    @property
    def dtype(self):
        return np.dtype(np.int64)

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


class BatchProvenance:
    """A batch's provenance as one array (every sample's rows, in order) and where each sample's
    rows start: what a DataLoader worker sends, one array a batch. Indexing and iteration give each
    sample's rows."""
    __slots__ = ("rows", "at")

    def __init__(self, rows: np.ndarray, at: list):
        self.rows, self.at = rows, at

    @staticmethod
    def pack(provenances: list):
        """(rows, starts) of a batch's samples: one slice of the feed's rows when they are
        consecutive blocks of one feed (the usual case), else the samples' rows joined. None when a
        sample has none."""
        first = provenances[0]
        if first is None or any(p is None for p in provenances):
            return None
        if isinstance(first, Provenance) and not first.source and all(
                isinstance(p, Provenance) and p.feed is first.feed and p.index == first.index + k
                and not p.source
                for k, p in enumerate(provenances)):
            feed, i0 = first.feed, first.index
            feed.block(i0)   # makes the feed's rows
            at = feed.at[i0:i0 + len(provenances) + 1]
            return feed.rows[at[0]:at[-1]], [a - at[0] for a in at]
        parts = [p.rows if isinstance(p, Provenance) else np.asarray(p, dtype=np.int64)
                 for p in provenances]
        return np.concatenate(parts), np.cumsum([0] + [len(p) for p in parts]).tolist()

    def __getstate__(self):
        return (self.rows, self.at)

    def __setstate__(self, state):
        self.rows, self.at = state

    def __len__(self) -> int:
        return len(self.at) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.rows[self.at[i]:self.at[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))
