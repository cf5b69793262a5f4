"""Blocks: concatenate documents (EOS-separated) and cut fixed-size blocks, carrying the remainder
over to the next documents; or, without grouping, one padded sample per document.

    packer = BlockPacker(block_size=1024)
    for packed in packer.feed(ids, lengths, nbytes, refs, origins):
        packed.block, packed.next_ref, packed.next_offset, packed.provenance, ...

Cutting is vectorized (one reshape per tokenizer batch). The state needed to resume is not the
carried tokens but *where the next token comes from*: (document reference, token offset). Resuming
re-tokenizes that one document and skips the offset, so the state stays tiny whatever the block
size. A very long document may arrive in several parts: each part's ref carries the token offset of
its first token in the document (`base`) and whether it ends the document (`last`): a `Part`.

Provenance: given each entry's origin (shard, row group, row), every block comes with the segments
it is made of, one int64 row each: (source, shard, row group, row, first token, end token) with
token offsets within the document (its EOS is its last token); source is 0 here (a mixture numbers
its sources). See lmstream.tokens.provenance: the rows are made when first read.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..config import DataArguments
from ..errors import ConfigError
from .provenance import FeedOrigins, Provenance


class Part(NamedTuple):
    """A part of a document tokenized in pieces: the document's ref, the offset of the part's first
    token in the document, and whether the part ends the document."""
    doc: tuple
    base: int
    last: bool


class Packed(NamedTuple):
    """A block and the position after it: the ref of the document its next token comes from and that
    token's offset, the documents and bytes it completed, and its segments (or None)."""
    block: np.ndarray
    next_ref: tuple
    next_offset: int
    docs_done: int
    bytes_done: int
    provenance: Provenance | None


class BlockPacker:
    """Cuts a stream of tokenized documents (or document parts) into blocks of `block_size` with
    carry-over."""
    track_provenance = True   # the benchmark turns it off to measure what provenance costs

    def __init__(self, block_size: int):
        self.block_size = block_size
        # Variables for checkpointing: the carry, as entries (documents or parts) still (partly)
        # pending
        self.buf = np.empty(0, dtype=np.int32)   # tokens not yet emitted
        self.lens = np.empty(0, dtype=np.int64)  # tokens of each pending entry still in buf
        self.nbytes = np.empty(0, dtype=np.int64)
        self.refs: list[Part] = []               # each pending entry's Part
        self.first_off = 0                       # tokens of the first pending entry already emitted
        # (shard, row group, row, doc token of its first in buf)
        self.origins = np.empty((0, 4), dtype=np.int64)

    def feed(self, ids: np.ndarray, lengths: np.ndarray, nbytes, refs: list,
             origins: np.ndarray | None = None):
        """Add entries; return the blocks completed, each a `Packed`. `refs[i]`: a document's ref
        (window, index), or a `Part` of one. `origins`: each entry's (shard, row group, row), int64
        (n, 3); without it provenance is None."""
        self._append(ids, lengths, nbytes, refs, origins)
        L = self.block_size
        n = len(self.buf) // L
        if n == 0:
            return []
        ends = np.cumsum(self.lens)
        bounds = np.arange(1, n + 1, dtype=np.int64) * L
        done = np.searchsorted(ends, bounds, side="right")   # entries ended by each block's end
        last = np.fromiter((r[2] for r in self.refs), dtype=np.int64, count=len(self.refs))
        cum_docs = np.concatenate([[0], np.cumsum(last)])
        cum_bytes = np.concatenate([[0], np.cumsum(self.nbytes * last)])
        blocks = self.buf[: n * L].reshape(n, L)
        prov = self._block_provenance(ends, n)
        out, prev, pending = [], 0, len(self.refs)
        # Python ints in the per-block loop (a NumPy scalar's arithmetic costs several times a
        # Python int's)
        ends_, cum_docs, cum_bytes = [0, *ends.tolist()], cum_docs.tolist(), cum_bytes.tolist()
        for b, k in enumerate(done.tolist()):
            if k < pending:
                ref, off = self._position(k, (b + 1) * L - ends_[k])
            else:   # the block ends exactly at the end of the last pending entry
                ref, off = self._position(k - 1, ends_[k] - ends_[k - 1], after=True)
            docs, nbytes = cum_docs[k] - cum_docs[prev], cum_bytes[k] - cum_bytes[prev]
            out.append(Packed(blocks[b], ref, off, docs, nbytes, prov[b]))
            prev = k
        k, used = int(done[-1]), n * L
        self._carry_origins(k, used - int(ends[k] - self.lens[k]) if k < len(self.refs) else 0)
        if k < len(self.refs):   # entry k is cut by the last block: keep its tail
            left = int(ends[k] - used)
            self.first_off = (self.first_off if k == 0 else 0) + int(self.lens[k]) - left
            self.lens = self.lens[k:].copy()
            self.lens[0] = left
        else:
            self.first_off, self.lens = 0, self.lens[k:]
        self.nbytes, self.refs = self.nbytes[k:], self.refs[k:]
        self.buf = self.buf[used:].copy()
        return out

    def _append(self, ids, lengths, nbytes, refs: list, origins) -> None:
        refs = [r if isinstance(r, Part) else Part(r, 0, True) for r in refs]
        if origins is not None and self.track_provenance:
            new = np.empty((len(refs), 4), dtype=np.int64)
            new[:, :3] = origins
            new[:, 3] = [r[1] for r in refs]
            self.origins = np.concatenate([self.origins, new]) if len(self.origins) else new
        self.buf = np.concatenate([self.buf, ids]) if len(self.buf) else ids
        self.lens = np.concatenate([self.lens, lengths])
        self.nbytes = np.concatenate([self.nbytes, np.asarray(nbytes, dtype=np.int64)])
        self.refs.extend(refs)

    def _block_provenance(self, ends: np.ndarray, n: int) -> list:
        """Each block's Provenance (its rows made on demand from the feed's entries), or None
        without origins."""
        if len(self.origins) != len(self.refs) or not len(self.origins):
            return [None] * n
        feed = FeedOrigins(self.origins, ends, self.lens, self.block_size, n)
        return [Provenance(feed, b) for b in range(n)]

    def _carry_origins(self, k: int, emitted: int) -> None:
        """Entries before k are done; `emitted` tokens of entry k were emitted (its origin moves
        past them)."""
        if len(self.origins) == len(self.refs):
            # never changed in place: a feed's Provenance refers to it
            self.origins = self.origins[k:].copy()
            if k < len(self.refs):
                self.origins[0, 3] += emitted

    def _position(self, e: int, x: int, after: bool = False):
        """(doc ref, token offset in the document) of token x of pending entry e (after=True: past
        its end)."""
        ref, base, last = self.refs[e]
        if after and last:
            window, j = ref
            return (window, j + 1), 0
        return ref, base + x + (self.first_off if e == 0 else 0)

    def drop_remainder(self) -> int:
        """End of an epoch: discard the final partial block; return how many tokens it held."""
        dropped = len(self.buf)
        self.__init__(self.block_size)
        return dropped


def document_positions(blocks, eos: int) -> np.ndarray:
    """`position_ids` for packed blocks (1-D or 2-D) that restart at each document
    (dataset_document_attention isolated), int32: a document's segment begins with the EOS that
    ended the one before it (GPT-2's <|endoftext|> doubles as its beginning-of-text), or at the
    block's start. Each target is then predicted from its own document only, the first token of a
    document from that EOS alone and the EOS from its document, so every token stays a target.
    Derived from the ids alone: streamed, prepared and replayed blocks get the same positions."""
    blocks = np.asarray(blocks)
    idx = np.broadcast_to(np.arange(blocks.shape[-1], dtype=np.int32), blocks.shape)
    starts = np.maximum.accumulate(np.where(blocks == eos, idx, 0), axis=-1)
    return idx - starts


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


def resolve_block_size(args: DataArguments, tokenizer, max_positions: int | None = None) -> int:
    """dataset_block_size, or min(1024, tokenizer.model_max_length, model positions); checked."""
    limit = max_positions or None
    if args.dataset_block_size is None:
        size = min(1024, getattr(tokenizer, "model_max_length", 1024) or 1024, limit or 1024)
    else:
        size = args.dataset_block_size
    if limit and size > limit:
        raise ConfigError(f"dataset_block_size={size} is larger than the model's {limit} "
                          f"positions: use dataset_block_size <= {limit}.")
    return size


def cut_heads(ids: np.ndarray, lens: np.ndarray, skips: list[int], refs: list):
    """Drop the first skips[i] tokens of document i; its ref becomes Part(ref, skipped,
    last=True)."""
    keep, lens = np.ones(len(ids), dtype=bool), lens.copy()
    starts = np.cumsum(lens) - lens
    for i, k in enumerate(skips):
        if k > lens[i]:
            raise ConfigError(f"The data position is corrupt: token {k} of a document of "
                              f"{int(lens[i])} tokens (EOS included): resume from another "
                              "checkpoint.")
        if k:
            keep[starts[i]:starts[i] + k] = False
            lens[i] -= k
            refs[i] = Part(refs[i], k, True)
    return ids[keep], lens
