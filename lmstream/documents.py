"""Documents: read shards piece by piece (Parquet row groups), split between ranks and workers,
hold out an evaluation set, skip empty texts, and shuffle within bounded windows, resumably.

    plan = plan_pieces(shards, "text")          # once, in the main process
    stream = DocumentStream(plan, args, seed, slot=0, n_slots=1)
    for window in stream.windows(stream.start()): window.docs

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
import io
import itertools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from . import ranges
from .config import ConfigError, DataArguments
from .longtext import LongText, with_long_texts
from .readahead import ReadAhead
from .retry import RetryPolicy, Unreadable, is_transient, on_fault, with_retries
from .sources import Shard, open_binary

log = logging.getLogger("lmstream")
_WINDOW_COUNTERS = ("rows_read", "docs_empty", "docs_null", "docs_heldout", "docs_invalid_utf8")   # counted by _fill
OTHER = "another reader's row"   # a row a strided piece leaves to another reader: advances the position only


@dataclass(frozen=True)
class Piece:
    shard: int            # index into plan.shards
    row_group: int        # Parquet row group, or -1 for a whole file
    num_rows: int | None  # rows in the piece when known (Parquet)
    stride: int = 1       # keep rows with index % stride == offset (only when pieces < slots)
    offset: int = 0
    first_row: int = 0    # rows before this one were read already (elastic resume)


@dataclass(frozen=True)
class WindowRest:
    """What another reader had not yet trained on of one shuffle window (elastic resume).

    Reading `pieces` from row `start_row` of the first and permuting with `key` re-creates that
    reader's window exactly; its documents from `doc` on are this item's rows, the first of them
    without its first `token` tokens. stride/offset/first_row act on those rows as on a Piece's.
    """
    pieces: tuple         # Piece / WindowRest items the window was read from
    start_row: int
    key: tuple | None     # RNG key of the window's permutation (None: not shuffled)
    doc: int
    token: int
    stride: int = 1
    offset: int = 0
    first_row: int = 0


def split_item(item, parts: int) -> list:
    """`item` as `parts` disjoint items by row stride (so more readers can share it)."""
    return [replace(item, stride=item.stride * parts, offset=item.offset + item.stride * r)
            for r in range(parts)]


@dataclass
class Plan:
    """Shards (with sizes and content digests), their pieces, and Parquet footers: read once, in one process,
    reused by every reader and saved with each checkpoint (lmstream.planfile), so that a resume reads neither
    a listing nor a footer again."""
    shards: list[Shard]
    pieces: list[Piece]
    footers: dict  # shard index -> pyarrow FileMetaData
    skipped: list = field(default_factory=list)  # URLs of unreadable shards left out (dataset_skip_bad_shards)
    stats: dict = field(default_factory=dict)    # retries while planning
    raw_footers: dict = field(default_factory=dict)   # shard index -> the footer's bytes as in the file
    digests: dict = field(default_factory=dict)       # shard index -> content digest (footer, or sampled bytes)
    source: dict = field(default_factory=dict)        # the arguments it was planned from (name, config, split, field)


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
    skips: list[int]            # tokens of each document trained on before an elastic resume (mostly 0)
    key: tuple | None           # RNG key of the permutation (None: not shuffled)


def _read_footer(shard: Shard, text_field: str, policy: RetryPolicy, stats: dict, check_field: bool = True):
    """(footer, its raw bytes, shard with its size): one tail request for a remote file, retried."""
    import pyarrow.parquet as pq

    def read():
        tail, size = ranges.footer_bytes(shard.url, shard.size, policy.read_timeout)
        # pyarrow reads a 64 KB tail but parses only the footer: zeros stand for bytes not fetched before it
        meta = pq.ParquetFile(ranges.SparseFile(size, tail, miss=lambda a, b: bytes(b - a))).metadata
        raw = next(iter(tail.values()))
        return meta, raw[len(raw) - int.from_bytes(raw[-8:-4], "little") - 8:], size
    try:
        meta, raw, size = with_retries(read, shard.url, policy, "read the Parquet footer of", stats)
    except Unreadable as err:
        if isinstance(err.cause, FileNotFoundError) and not is_transient(err.cause):
            raise Unreadable(f"Shard '{shard.url}' does not exist: check dataset_name.", err.cause) from None
        if getattr(err.cause, "status", None) == 404:
            raise Unreadable(f"Shard '{shard.url}' does not exist (HTTP 404): check dataset_name.", err.cause) from None
        if getattr(err.cause, "status", None) in (401, 403):
            raise Unreadable(f"Shard '{shard.url}' is not readable with these credentials (HTTP "
                             f"{err.cause.status}): for a gated Hub dataset set HF_TOKEN.", err.cause) from None
        if err.cause is not None and not is_transient(err.cause):
            raise Unreadable(f"Shard '{shard.url}' is not a valid Parquet file "
                             f"({type(err.cause).__name__}: {err.cause}).", err.cause) from None
        raise
    schema = meta.schema.to_arrow_schema()
    if check_field and text_field not in schema.names:
        raise ConfigError(f"Shard '{shard.url}' has no column '{text_field}' (columns: {', '.join(schema.names)}): "
                          "set dataset_text_field to one of them.")
    kind = schema.field(text_field).type if check_field else None
    if kind is not None and not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise ConfigError(f"Column '{text_field}' of shard '{shard.url}' holds {kind}, not text: set "
                          "dataset_text_field to a string column.")
    return meta, raw, replace(shard, size=size)


def plan_pieces(shards: list[Shard], text_field: str, policy: RetryPolicy | None = None,
                skip_bad: bool = False, threads: int = 16) -> Plan:
    """List the pieces of all shards, reading Parquet footers in parallel (one request each when remote).

    With `skip_bad`, a shard whose footer cannot be read is left out with a warning (counted in
    `plan.skipped`); otherwise the first such shard fails the plan with its reason.
    """
    policy, stats = policy or RetryPolicy(), {"retries": 0}

    def footer(i):
        try:
            if shards[i].format != "parquet":
                return _digest(shards[i], policy)
            return _read_footer(shards[i], text_field, policy, stats)
        except Unreadable as err:
            if not skip_bad:
                raise
            log.warning("skipping shard %s: %s", shards[i].url, err)
            return None
    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as pool:
        found = list(pool.map(footer, range(len(shards))))
    skipped = [s.url for s, f in zip(shards, found) if f is None]
    kept = [(s, f) for s, f in zip(shards, found) if f is not None]
    return assemble_plan(kept, skipped, stats)


def _digest(shard: Shard, policy: RetryPolicy):
    """A non-Parquet shard's content digest; a missing or forbidden file named as _read_footer names it."""
    try:
        return ranges.content_digest(shard, policy)
    except Unreadable as err:
        if getattr(err.cause, "status", None) == 404 or isinstance(err.cause, FileNotFoundError):
            raise Unreadable(f"Shard '{shard.url}' does not exist: check dataset_name.", err.cause) from None
        raise


def assemble_plan(kept: list, skipped: list, stats: dict) -> Plan:
    """A Plan from (shard, (footer, raw footer, shard) or (digest, shard)) pairs, in shard order."""
    import hashlib as _h
    plan = Plan([], [], {}, skipped, stats)
    for i, (shard, info) in enumerate(kept):
        if shard.format == "parquet":
            meta, raw, shard = info
            plan.footers[i], plan.raw_footers[i] = meta, raw
            plan.digests[i] = _h.blake2b(raw, digest_size=16).hexdigest()
            plan.pieces += [Piece(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        else:
            plan.digests[i], shard = info
            plan.pieces.append(Piece(i, -1, None))
        plan.shards.append(shard)
    return plan


def _holdout_bucket(text) -> float:
    """A stable number in [0, 1) from the document text, identical on every machine."""
    if isinstance(text, LongText):
        return text.blake2b64() / 2**64
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little") / 2**64


class DocumentStream:
    """One slot's documents, epoch after epoch, as resumable shuffle windows."""

    def __init__(self, plan: Plan, args: DataArguments, seed: int, slot: int, n_slots: int,
                 split: str = "train", shuffle: bool = True):
        self.plan, self.args, self.seed = plan, args, seed
        self.slot, self.n_slots = slot, n_slots
        self.split = split              # "train": drop held-out docs; "holdout": keep only them; "all"
        self.shuffle = shuffle and args.dataset_shuffle
        self.window_size = args.dataset_shuffle_buffer if self.shuffle else 1024
        # counters of what was read (the packer counts what was emitted)
        self.policy = args.retry_policy()
        self.stats = {"rows_read": 0, "docs_empty": 0, "docs_null": 0, "docs_heldout": 0, "docs_invalid_utf8": 0, "retries": 0,
                      "shards_skipped": 0, "read_seconds": 0.0, "read_wait_seconds": 0.0}

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
        """Texts of a piece from raw row `skip` on, as (row index, text or None, invalid_utf8, token skip, new).

        `new` is False for the rows of a WindowRest: another reader read (and counted) them already.
        """
        skip = max(skip, piece.first_row)
        if isinstance(piece, WindowRest):
            docs, skips = self._rest_docs(piece)
            for i in range(skip, len(docs)):
                if piece.stride > 1 and i % piece.stride != piece.offset:
                    yield i, OTHER, False, 0, False
                    continue
                yield i, docs[i], False, skips[i], False
            return
        shard = self.plan.shards[piece.shard]
        try:
            if shard.format == "parquet":
                texts = with_long_texts(ahead.take(k, pieces).column(0).slice(skip))
                rows = ((t, False) for t in texts)
            else:   # compressed streams cannot seek: re-read up to the row
                rows = self._line_rows(shard, skip)
            for i, (text, bad) in enumerate(rows, skip):
                if piece.stride > 1 and i % piece.stride != piece.offset:
                    yield i, OTHER, False, 0, True   # another slot's row: advance the position, emit nothing
                    continue
                yield i, text, bad, 0, True
        except Unreadable as err:
            if not self.args.dataset_skip_bad_shards:
                raise
            log.warning("skipping the rest of shard %s: %s", shard.url, err)
            self.stats["shards_skipped"] += 1

    def _read_row_group(self, piece: Piece):
        """A whole row group's text column (retried as a whole: a retry starts it over). Thread-safe.

        Exactly the column chunk's bytes are read (one Range request when remote), by URL: no listing."""
        shard = self.plan.shards[piece.shard]
        t0 = time.perf_counter()

        def read():
            return ranges.read_columns(shard.url, shard.size, self.plan.footers[piece.shard], piece.row_group,
                                       [self.args.dataset_text_field], self.policy.read_timeout)
        table = with_retries(read, shard.url, self.policy, f"read row group {piece.row_group} of", self.stats)
        self.stats["read_seconds"] += time.perf_counter() - t0
        return table

    def _piece_bytes(self, piece) -> int:
        """Uncompressed size of a Parquet piece from its footer (-1: not a Parquet piece, not read ahead)."""
        if isinstance(piece, WindowRest):
            return -1
        meta = self.plan.footers.get(piece.shard)
        return meta.row_group(piece.row_group).total_byte_size if meta is not None and piece.row_group >= 0 else -1

    def _line_rows(self, shard: Shard, skip: int):
        """Rows of a line-based file from row `skip`; after a transient fault, re-open and skip what was delivered."""
        delivered, attempt, started = skip, 0, time.monotonic()
        while True:
            attempt += 1
            try:
                for row in itertools.islice(self._parse_lines(shard), delivered, None):
                    delivered += 1
                    yield row
                return
            except ConfigError as err:
                if not isinstance(err, Unreadable):
                    raise        # bad content (not JSON, missing field): no retry helps
                on_fault(err, shard.url, self.policy, attempt, "read", self.stats, started)
            except Exception as err:  # noqa: BLE001 - on_fault retries transient faults, reports the rest
                on_fault(err, shard.url, self.policy, attempt, "read", self.stats, started)

    def _parse_lines(self, shard: Shard):
        raw = _decompressed_lines(shard.url, self.policy.read_timeout)
        if shard.format == "json":
            return _json_texts(raw, shard.url, self.args.dataset_text_field)
        return _text_samples(raw, self.args.dataset_text_sample_by)

    def _rows(self, pieces: list, start: tuple[int, int]):
        """(position after the row, text, invalid_utf8, token skip, new) for every row from `start` to the end."""
        p0, r0 = start
        ahead = ReadAhead(self._read_row_group, self._piece_bytes, self.args.dataset_readahead_bytes)
        try:
            for pi in range(p0, len(pieces)):
                for i, text, bad, tok, new in self._piece_rows(pieces[pi], r0 if pi == p0 else 0, ahead, pi, pieces):
                    yield (pi, i + 1), text, bad, tok, new
            yield (len(pieces), 0), StopIteration, False, 0, True
        finally:
            self.stats["read_wait_seconds"] += ahead.wait_seconds
            ahead.close()

    # -- windows --------------------------------------------------------------------------------
    def window_key(self, epoch: int, index: int, tag: tuple = ()) -> tuple | None:
        """The RNG key that permutes window `index` of `epoch` (tag: an elastic resume's generation)."""
        return (self.seed, epoch, self.slot, index, *tag) if self.shuffle else None

    def _fill(self, rows, stats: dict):
        """Up to window_size documents from `rows`: (docs, token skips, position after, epoch ended)."""
        frac, split = self.args.dataset_holdout_fraction, self.split
        docs, skips, pos, last = [], [], None, False
        for pos, text, bad, tok, new in rows:
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
                raise ConfigError(f"Column '{self.args.dataset_text_field}' holds {type(text).__name__} values, not "
                                  "text: set dataset_text_field to a string column.")
            if text.is_blank() if isinstance(text, LongText) else not text.strip():
                stats["docs_empty"] += new
                continue
            if frac > 0 and split != "all" and (_holdout_bucket(text) < frac) != (split == "holdout"):
                stats["docs_heldout"] += new and split == "train"
                continue
            docs.append(text)
            skips.append(tok)
            if len(docs) == self.window_size:
                break
        return docs, skips, pos, last

    @staticmethod
    def _permute(docs: list, skips: list, key):
        if key is None or len(docs) < 2:
            return docs, skips
        perm = np.random.default_rng(list(key)).permutation(len(docs))
        return [docs[k] for k in perm], [skips[k] for k in perm]

    def _rest_docs(self, rest: WindowRest):
        """The documents of another reader's window from `rest.doc` on, and their token skips."""
        scratch = dict.fromkeys(_WINDOW_COUNTERS, 0)
        rows = self._rows(list(rest.pieces), (0, rest.start_row))
        try:
            docs, skips, _, _ = self._fill(rows, scratch)
        finally:
            rows.close()
        docs, skips = self._permute(docs, skips, rest.key)
        docs, skips = docs[rest.doc:], skips[rest.doc:]
        if docs:
            skips[0] = max(skips[0], rest.token)
        return docs, skips

    def windows(self, epoch: int, index: int, start: tuple[int, int], count: bool = True,
                items: list | None = None, tag: tuple = ()):
        """Windows of `epoch` from window `index` (beginning at `start`) to the epoch's end.

        `items`: what this slot reads in the epoch, when not `slot_pieces(epoch)` (after an elastic resume).
        """
        pieces = self.slot_pieces(epoch) if items is None else items
        rows = self._rows(pieces, start)
        while True:
            stats = dict.fromkeys(_WINDOW_COUNTERS, 0)
            docs, skips, pos, last = self._fill(rows, stats)
            pos = start if pos is None else pos
            if count:   # a window re-read on resume was already counted
                for k, v in stats.items():
                    self.stats[k] += v
            count = True
            key = self.window_key(epoch, index, tag)
            docs, skips = self._permute(docs, skips, key)
            nbytes = [d.nbytes if isinstance(d, LongText) else len(d.encode("utf-8")) for d in docs]
            yield Window(epoch, index, start, pos, docs, nbytes, last, skips, key)
            if last:
                return
            start, index = pos, index + 1


def _decompressed_lines(url: str, timeout: float | None = None):
    """Binary lines of a (possibly .gz/.zst/.bz2/.xz compressed) file, streamed."""
    from fsspec.compression import compr
    from fsspec.utils import infer_compression
    comp = "zstd" if url.endswith(".zst") else infer_compression(url)
    with open_binary(url, timeout=timeout) as raw:
        if comp is None:
            yield from raw
        elif comp == "zstd":
            import zstandard
            yield from io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
        else:
            with compr[comp](raw, mode="rb") as f:
                yield from f


def _decode(line: bytes) -> tuple[str, bool]:
    try:
        return line.decode("utf-8"), False
    except UnicodeDecodeError:
        return line.decode("utf-8", "replace"), True


def _json_texts(lines, url: str, field: str):
    for n, line in enumerate(lines, 1):
        text, bad = _decode(line)
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"Line {n} of '{url}' is not valid JSON ({err}): fix or remove the shard.") from None
        if not isinstance(row, dict) or field not in row:
            cols = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise ConfigError(f"Line {n} of '{url}' has no field '{field}' (fields: {cols}): "
                              "set dataset_text_field to one of them.")
        value = row[field]
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"Line {n} of '{url}': field '{field}' holds {type(value).__name__}, not text: set "
                              "dataset_text_field to a string field.")
        yield value, bad


def _text_samples(lines, sample_by: str):
    if sample_by == "line":
        for line in lines:
            yield _decode(line.rstrip(b"\r\n"))
        return
    buf: list[bytes] = []
    for line in lines:
        if sample_by == "paragraph" and not line.strip():
            if buf:
                yield _decode(b"".join(buf))
            buf = []
            continue
        buf.append(line)
    if buf:
        yield _decode(b"".join(buf))
