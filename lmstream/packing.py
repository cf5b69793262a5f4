"""Blocks: concatenate documents (EOS-separated) and cut fixed-size blocks, carrying the remainder
over to the next documents; or, without grouping, one padded sample per document.

    packer = BlockPacker(block_size=1024)
    for block, next_pos, docs_done, bytes_done in packer.feed(ids, lengths, nbytes, refs): ...

Cutting is vectorized (one reshape per tokenizer batch). The state needed to resume is not the
carried tokens but *where the next token comes from*: (document reference, token offset). Resuming
re-tokenizes that one document and skips the offset, so the state stays tiny whatever the block size.
"""
from __future__ import annotations

import numpy as np


class BlockPacker:
    """Cuts a stream of tokenized documents into blocks of `block_size` with carry-over."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        # Variables for checkpointing: the carry, as documents still (partly) pending
        self.buf = np.empty(0, dtype=np.int32)   # tokens not yet emitted
        self.lens = np.empty(0, dtype=np.int64)  # tokens of each pending document still in buf
        self.nbytes = np.empty(0, dtype=np.int64)
        self.refs: list = []                     # reference of each pending document
        self.first_off = 0                       # tokens of the first pending document already emitted

    def feed(self, ids: np.ndarray, lengths: np.ndarray, nbytes, refs: list):
        """Add documents; return [(block, next_ref, next_offset, docs_completed, bytes_completed)]."""
        self.buf = np.concatenate([self.buf, ids]) if len(self.buf) else ids
        self.lens = np.concatenate([self.lens, lengths])
        self.nbytes = np.concatenate([self.nbytes, np.asarray(nbytes, dtype=np.int64)])
        self.refs.extend(refs)
        L = self.block_size
        n = len(self.buf) // L
        if n == 0:
            return []
        ends = np.cumsum(self.lens)
        bounds = np.arange(1, n + 1, dtype=np.int64) * L
        done = np.searchsorted(ends, bounds, side="right")   # documents ended by each block's end
        cum_bytes = np.concatenate([[0], np.cumsum(self.nbytes)])
        blocks = self.buf[: n * L].reshape(n, L)
        out, prev = [], 0
        for b in range(n):
            k = int(done[b])
            if k < len(self.refs):
                off = int(bounds[b] - (ends[k - 1] if k else 0)) + (self.first_off if k == 0 else 0)
                ref = self.refs[k]
            else:   # the block ends exactly at the end of the last pending document
                ref, off = _after(self.refs[-1]), 0
            out.append((blocks[b], ref, off, k - prev, int(cum_bytes[k] - cum_bytes[prev])))
            prev = k
        k, used = int(done[-1]), n * L
        if k < len(self.refs):   # document k is cut by the last block: keep its tail
            left = int(ends[k] - used)
            self.first_off = (self.first_off if k == 0 else 0) + int(self.lens[k]) - left
            self.lens = self.lens[k:].copy()
            self.lens[0] = left
        else:
            self.first_off, self.lens = 0, self.lens[k:]
        self.nbytes, self.refs = self.nbytes[k:], self.refs[k:]
        self.buf = self.buf[used:].copy()
        return out

    def drop_remainder(self) -> int:
        """End of an epoch: discard the final partial block; return how many tokens it held."""
        dropped = len(self.buf)
        self.__init__(self.block_size)
        return dropped


def _after(ref):
    """The reference of the document following `ref` = (window, index)."""
    window, j = ref
    return (window, j + 1)


def pad_document(ids: np.ndarray, max_len: int, pad_id: int):
    """One sample per document: truncated to `max_len`, padded; pad labels are -100."""
    n = min(len(ids), max_len)
    input_ids = np.full(max_len, pad_id, dtype=np.int64)
    input_ids[:n] = ids[:n]
    labels = np.full(max_len, -100, dtype=np.int64)
    labels[:n] = ids[:n]
    mask = np.zeros(max_len, dtype=np.int64)
    mask[:n] = 1
    return input_ids, labels, mask, len(ids) - n
