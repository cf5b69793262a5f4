"""Documents: read shards piece by piece (Parquet row groups), split between ranks and workers,
hold out an evaluation set, skip empty texts, and shuffle within bounded windows, resumably.

    plan = plan_pieces(shards, "text")          # once, in the main process (lmstream.corpus.plan)
    stream = DocumentStream(plan, args, seed, slot=0, n_slots=1)
    for window in stream.windows(epoch=0, index=0, start=(0, 0)): window.docs
    for text in iter_documents(plan, args): ...  # one epoch's documents, in order, unshuffled

A *piece* is a Parquet row group or a whole JSON Lines / text file. Each epoch the shards are
permuted from (seed, epoch), their pieces listed in that order, and piece k goes to slot
k % n_slots (slot = rank * workers + worker), so ranks and workers read disjoint data and none
decodes rows it does not keep. With fewer pieces than slots, pieces are split by row stride.
Documents are taken in windows of `dataset_shuffle_buffer`, each permuted by an RNG seeded with
(seed, epoch, slot, window index): a window can be re-read from its start position and
re-permuted identically, which is what makes resume exact and cheap.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import ranges, textfiles
from ..config import DataArguments
from ..errors import ConfigError
from .longtext import LongText, valid_utf8, with_long_texts
from .plan import Piece, Plan, WindowRest, split_item
from .cache import RangeCache
from .closing import close_at_exit
from .readahead import ReadAhead
from ..retry import Unreadable, with_retries

log = logging.getLogger("lmstream")
# counted by _fill
_WINDOW_COUNTERS = ("rows_read", "docs_empty", "docs_null", "docs_heldout", "docs_invalid_utf8")
# a row a strided piece leaves to another reader: advances the position only
OTHER = "another reader's row"


@dataclass(frozen=True)
class Window:
    """Up to `dataset_shuffle_buffer` documents of one slot, already permuted."""
    epoch: int
    index: int                  # window number within the epoch
    start: tuple[int, int]      # (piece number in the slot's list, row) where reading began
    next: tuple[int, int]       # where the next window begins
    docs: list[str]
    nbytes: list[int]           # UTF-8 bytes of each document
    last: bool                  # the slot's epoch ends with this window
    # tokens of each document trained on before an elastic resume (mostly 0)
    skips: list[int]
    key: tuple | None           # RNG key of the permutation (None: not shuffled)
    # (shard, row group, row) of each document, int64 (n, 3): provenance
    origins: np.ndarray | None = None


def _holdout_bucket(text) -> float:
    """A stable number in [0, 1) from the document text, identical on every machine."""
    if isinstance(text, LongText):
        return text.blake2b64() / 2**64
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class DocumentStream:
    """One slot's documents, epoch after epoch, as resumable shuffle windows."""

    def __init__(self, plan: Plan, args: DataArguments, seed: int, slot: int, n_slots: int,
                 split: str = "train", shuffle: bool = True):
        self.plan, self.args, self.seed = plan, args, seed
        self.slot, self.n_slots = slot, n_slots
        # "train": drop held-out docs; "holdout": keep only them; "all"
        self.split = split
        self.shuffle = shuffle and args.dataset_shuffle
        self.window_size = args.dataset_shuffle_buffer if self.shuffle else 1024
        # counters of what was read (the packer counts what was emitted)
        self.policy = args.retry_policy()
        # remote row groups kept on this node (--dataset_cache_dir), keyed by content
        self.cache = (RangeCache(args.dataset_cache_dir, args.dataset_cache_size)
                      if args.dataset_cache_dir else None)
        self.stats = {"rows_read": 0, "docs_empty": 0, "docs_null": 0, "docs_heldout": 0,
                      "docs_invalid_utf8": 0, "retries": 0, "shards_skipped": 0,
                      "read_seconds": 0.0, "read_wait_seconds": 0.0}

    def restore_counters(self, saved: dict) -> None:
        """Continue the read counters from a saved position's."""
        for k in self.stats:
            self.stats[k] = saved.get(k, 0)

    def slot_pieces(self, epoch: int) -> list[Piece]:
        """The pieces this slot reads in `epoch`, in order."""
        order = list(range(len(self.plan.shards)))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(order)).tolist()
        by_shard: dict[int, list[Piece]] = {}
        for p in self.plan.pieces:
            by_shard.setdefault(p.shard, []).append(p)
        pieces = [p for s in order for p in by_shard.get(s, [])]
        if 0 < len(pieces) < self.n_slots:
            pieces = [q for p in pieces for q in split_item(p, -(-self.n_slots // len(pieces)))]
        return pieces[self.slot::self.n_slots]

    # -- reading rows ---------------------------------------------------------------------------
    def _piece_rows(self, piece, skip: int, ahead: ReadAhead, k: int, pieces: list):
        """Texts of a piece from raw row `skip` on, as (row index, text or None, invalid_utf8, token
        skip, new, origin, UTF-8 bytes or None where not known): `origin` is the row's (shard, row
        group, row) in the data.

        `new` is False for the rows of a WindowRest: another reader read (and counted) them already.
        """
        skip = max(skip, piece.first_row)
        if isinstance(piece, WindowRest):
            docs, skips, origins = self._rest_docs(piece)
            for i in range(skip, len(docs)):
                if piece.stride > 1 and i % piece.stride != piece.offset:
                    yield i, OTHER, False, 0, False, None, None
                    continue
                yield i, docs[i], False, skips[i], False, tuple(origins[i]), None
            return
        shard = self.plan.shards[piece.shard]
        try:
            if shard.format == "parquet":
                column = ahead.take(k, pieces).column(0).slice(skip)
                column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
                column, bad = valid_utf8(column)
                texts, sizes = with_long_texts(column)
                rows = zip(texts, bad or itertools.repeat(False), sizes)
            else:   # compressed streams cannot seek: re-read up to the row
                rows = ((text, bad, None) for text, bad in
                        textfiles.line_rows(shard, skip, self.args, self.policy, self.stats,
                                            self.plan.seen))
            for i, (text, bad, size) in enumerate(rows, skip):
                if piece.stride > 1 and i % piece.stride != piece.offset:
                    # another slot's row: advance the position only
                    yield i, OTHER, False, 0, True, None, None
                    continue
                yield i, text, bad, 0, True, (piece.shard, piece.row_group, i), size
        except Unreadable as err:
            if not self.args.dataset_skip_bad_shards:
                raise
            log.warning("skipping the rest of shard %s: %s", shard.url, err)
            self.stats["shards_skipped"] += 1

    def _read_row_group(self, piece: Piece):
        """A whole row group's text column (retried as a whole: a retry starts it over).
        Thread-safe.

        Exactly the column chunk's bytes are read (one Range request when remote), by URL: no
        listing."""
        shard = self.plan.shards[piece.shard]
        t0 = time.perf_counter()

        def read():
            return ranges.read_columns(shard.url, shard.size, self.plan.footers[piece.shard],
                                       piece.row_group, [self.args.dataset_text_field],
                                       self.policy.read_timeout, self.plan.seen, self.stats,
                                       self.cache, shard.etag or self.plan.digests.get(piece.shard))
        table = with_retries(read, shard.url, self.policy, f"read row group {piece.row_group} of",
                             self.stats)
        self.stats["read_seconds"] += time.perf_counter() - t0
        return table

    def _piece_bytes(self, piece) -> int:
        """Uncompressed size of a Parquet piece from its footer (-1: not a Parquet piece, not read
        ahead)."""
        if isinstance(piece, WindowRest):
            return -1
        meta = self.plan.footers.get(piece.shard)
        if meta is None or piece.row_group < 0:
            return -1
        return meta.row_group(piece.row_group).total_byte_size

    def _rows(self, pieces: list, start: tuple[int, int]):
        """(position after the row, text, invalid_utf8, token skip, new, origin, bytes) for every
        row from `start` on."""
        p0, r0 = start
        ahead = ReadAhead(self._read_row_group, self._piece_bytes,
                          self.args.dataset_readahead_bytes)
        try:
            for pi in range(p0, len(pieces)):
                for i, *row in self._piece_rows(pieces[pi], r0 if pi == p0 else 0, ahead, pi,
                                                pieces):
                    yield ((pi, i + 1), *row)
            yield (len(pieces), 0), StopIteration, False, 0, True, None, None
        finally:
            self.stats["read_wait_seconds"] += ahead.wait_seconds
            ahead.close()

    # -- windows --------------------------------------------------------------------------------
    def window_key(self, epoch: int, index: int, tag: tuple = ()) -> tuple | None:
        """The RNG key that permutes window `index` of `epoch` (tag: an elastic resume's
        generation)."""
        return (self.seed, epoch, self.slot, index, *tag) if self.shuffle else None

    def _fill(self, rows, stats: dict):
        """Up to window_size documents from `rows`: (docs, token skips, origins, position after,
        epoch ended, UTF-8 bytes of each document)."""
        frac, split = self.args.dataset_holdout_fraction, self.split
        docs, skips, origins, sizes, pos, last = [], [], [], [], None, False
        for pos, text, bad, tok, new, origin, size in rows:
            if text is StopIteration:
                last = True
                break
            if text is OTHER:
                continue
            stats["rows_read"] += new
            stats["docs_invalid_utf8"] += bad
            if text is None:   # a null row: counted, never trained on
                stats["docs_null"] += new
                continue
            if not isinstance(text, (str, LongText)):
                raise ConfigError(f"Column '{self.args.dataset_text_field}' holds "
                                  f"{type(text).__name__} values, not text: set dataset_text_field "
                                  "to a string column.")
            # no copy of a long text
            blank = text.is_blank() if isinstance(text, LongText) else not text or text.isspace()
            if blank:
                stats["docs_empty"] += new
                continue
            if (frac > 0 and split != "all"
                    and (_holdout_bucket(text) < frac) != (split == "holdout")):
                stats["docs_heldout"] += new and split == "train"
                continue
            docs.append(text)
            skips.append(tok)
            origins.append(origin)
            sizes.append(utf8_size(text) if size is None else size)
            if len(docs) == self.window_size:
                break
        return docs, skips, np.array(origins, dtype=np.int64).reshape(-1, 3), pos, last, sizes

    @staticmethod
    def _permute(docs: list, skips: list, origins: np.ndarray, sizes: list, key):
        if key is None or len(docs) < 2:
            return docs, skips, origins, sizes
        perm = np.random.default_rng(list(key)).permutation(len(docs)).tolist()
        return [docs[k] for k in perm], [skips[k]
                                         for k in perm], origins[perm], [sizes[k] for k in perm]

    def _rest_docs(self, rest: WindowRest):
        """The documents of another reader's window from `rest.doc` on, their token skips and
        origins."""
        scratch = dict.fromkeys(_WINDOW_COUNTERS, 0)
        rows = close_at_exit(self._rows(list(rest.pieces), (0, rest.start_row)))
        try:
            docs, skips, origins, _, _, sizes = self._fill(rows, scratch)
        finally:
            rows.close()
        docs, skips, origins, _ = self._permute(docs, skips, origins, sizes, rest.key)
        docs, skips, origins = docs[rest.doc:], skips[rest.doc:], origins[rest.doc:]
        if docs:
            skips[0] = max(skips[0], rest.token)
        return docs, skips, origins

    def windows(self, epoch: int, index: int, start: tuple[int, int], count: bool = True,
                items: list | None = None, tag: tuple = ()):
        """Windows of `epoch` from window `index` (beginning at `start`) to the epoch's end.

        `items`: what this slot reads in the epoch, when not `slot_pieces(epoch)` (after an elastic
        resume).
        """
        pieces = self.slot_pieces(epoch) if items is None else items
        rows = close_at_exit(self._rows(pieces, start))
        while True:
            stats = dict.fromkeys(_WINDOW_COUNTERS, 0)
            docs, skips, origins, pos, last, nbytes = self._fill(rows, stats)
            pos = start if pos is None else pos
            if count:   # a window re-read on resume was already counted
                for k, v in stats.items():
                    self.stats[k] += v
            count = True
            key = self.window_key(epoch, index, tag)
            docs, skips, origins, nbytes = self._permute(docs, skips, origins, nbytes, key)
            yield Window(epoch, index, start, pos, docs, nbytes, last, skips, key, origins)
            if last:
                return
            start, index = pos, index + 1


def utf8_size(doc) -> int:
    """UTF-8 bytes of a document: its length when ASCII (str.isascii() reads a flag: no pass over
    the text)."""
    if isinstance(doc, LongText):
        return doc.nbytes
    return len(doc) if doc.isascii() else len(doc.encode("utf-8"))


def iter_documents(plan: Plan, args: DataArguments, epoch: int = 0, seed: int = 0,
                   split: str = "train", shuffle: bool = True):
    """The documents of one epoch as one reader reads them (shuffled if `shuffle` and
    args.dataset_shuffle)."""
    stream = DocumentStream(plan, args, seed, 0, 1, split=split, shuffle=shuffle)
    for window in stream.windows(epoch, 0, (0, 0)):
        yield from window.docs
