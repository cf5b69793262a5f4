"""The plan of a dataset: its shards (with sizes and content digests), their pieces (Parquet row
groups, or whole files) and the Parquet footers, read once, in one process, before any reader
starts.

    # footers read in parallel, one request each when remote
    plan = plan_pieces(shards, "text", policy)

Readers (lmstream.corpus.documents) deal the pieces between them; lmstream.corpus.planfile saves the
plan with each checkpoint, so that a resume reads neither a listing nor a footer again.
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import pyarrow as pa

from . import ranges
from ..errors import ConfigError
from ..retry import RetryPolicy, Unreadable, is_transient, with_retries
from .shards import Shard

log = logging.getLogger("lmstream")


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
    """Shards (with sizes and content digests), their pieces, and Parquet footers: read once, in one
    process, reused by every reader and saved with each checkpoint (lmstream.corpus.planfile), so
    that a resume reads neither a listing nor a footer again."""
    shards: list[Shard]
    pieces: list[Piece]
    footers: dict  # shard index -> pyarrow FileMetaData
    # URLs of unreadable shards left out (dataset_skip_bad_shards)
    skipped: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)    # retries while planning
    # shard index -> the footer's bytes as in the file
    raw_footers: dict = field(default_factory=dict)
    # shard index -> content digest (footer, or sampled bytes)
    digests: dict = field(default_factory=dict)
    # the arguments it was planned from (name, config, split, field)
    source: dict = field(default_factory=dict)
    # url -> the version of the file this plan's readers first saw (ranges.same_version); not saved
    seen: dict = field(default_factory=dict, repr=False, compare=False)


def _footer_tail(shard: Shard, policy: RetryPolicy, cache):
    """ranges.footer_bytes, or the tail `cache` keeps for a remote file of that content tag and
    size."""
    if cache is None or not (shard.etag and shard.size and ranges.is_remote(shard.url)):
        return ranges.footer_bytes(shard.url, shard.size, policy.read_timeout)
    key = f"{shard.etag}:{shard.size}:footer"
    data = cache.get(key)
    if data is not None:
        return {shard.size - len(data): data}, shard.size
    tail, size = ranges.footer_bytes(shard.url, shard.size, policy.read_timeout)
    cache.put(key, next(iter(tail.values())))
    return tail, size


def read_footer(shard: Shard, text_field: str, policy: RetryPolicy, stats: dict,
                check_field: bool = True, cache=None):
    """(footer, its raw bytes, shard with its size): one tail request for a remote file, retried;
    none when `cache` (a RangeCache) holds the tail of a file of that content tag and size."""
    import pyarrow.parquet as pq

    def read():
        tail, size = _footer_tail(shard, policy, cache)
        # pyarrow reads a 64 KB tail but parses only the footer: zeros stand for bytes not fetched
        # before it
        meta = pq.ParquetFile(ranges.SparseFile(size, tail, miss=lambda a,
                                                b: bytes(b - a))).metadata
        raw = next(iter(tail.values()))
        return meta, raw[len(raw) - int.from_bytes(raw[-8:-4], "little") - 8:], size
    try:
        meta, raw, size = with_retries(read, shard.url, policy, "read the Parquet footer of", stats)
    except Unreadable as err:
        if isinstance(err.cause, FileNotFoundError) and not is_transient(err.cause):
            raise Unreadable(f"Shard '{shard.url}' does not exist: check dataset_name.",
                             err.cause) from None
        if getattr(err.cause, "status", None) == 404:
            raise Unreadable(f"Shard '{shard.url}' does not exist (HTTP 404): check dataset_name.",
                             err.cause) from None
        if getattr(err.cause, "status", None) in (401, 403):
            raise Unreadable(f"Shard '{shard.url}' is not readable with these credentials (HTTP "
                             f"{err.cause.status}): for a gated Hub dataset set HF_TOKEN.",
                             err.cause) from None
        if err.cause is not None and not is_transient(err.cause):
            raise Unreadable(f"Shard '{shard.url}' is not a valid Parquet file "
                             f"({type(err.cause).__name__}: {err.cause}).", err.cause) from None
        raise
    schema = meta.schema.to_arrow_schema()
    if check_field and text_field not in schema.names:
        raise ConfigError(f"Shard '{shard.url}' has no column '{text_field}' (columns: "
                          f"{', '.join(schema.names)}): set dataset_text_field to one of them.")
    kind = schema.field(text_field).type if check_field else None
    if kind is not None and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                                 or pa.types.is_null(kind)):
        raise ConfigError(f"Column '{text_field}' of shard '{shard.url}' holds {kind}, not text: "
                          "set dataset_text_field to a string column.")
    return meta, raw, replace(shard, size=size)


def plan_pieces(shards: list[Shard], text_field: str, policy: RetryPolicy | None = None,
                skip_bad: bool = False, threads: int = 16, cache=None) -> Plan:
    """List the pieces of all shards, reading Parquet footers in parallel (one request each when
    remote).

    With `skip_bad`, a shard whose footer cannot be read is left out with a warning (counted in
    `plan.skipped`); otherwise the first such shard fails the plan with its reason.
    """
    policy, stats = policy or RetryPolicy(), {"retries": 0}

    def footer(i):
        try:
            if shards[i].format != "parquet":
                return _digest(shards[i], policy)
            return read_footer(shards[i], text_field, policy, stats, cache=cache)
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
    """A non-Parquet shard's content digest; a missing or forbidden file named as _read_footer names
    it."""
    try:
        return ranges.content_digest(shard, policy)
    except Unreadable as err:
        if getattr(err.cause, "status", None) == 404 or isinstance(err.cause, FileNotFoundError):
            raise Unreadable(f"Shard '{shard.url}' does not exist: check dataset_name.",
                             err.cause) from None
        raise


def assemble_plan(kept: list, skipped: list, stats: dict) -> Plan:
    """A Plan from (shard, (footer, raw footer, shard) or (digest, shard)) pairs, in shard order."""
    plan = Plan([], [], {}, skipped, stats)
    for i, (shard, info) in enumerate(kept):
        if shard.format == "parquet":
            meta, raw, shard = info
            plan.footers[i], plan.raw_footers[i] = meta, raw
            plan.digests[i] = hashlib.blake2b(raw, digest_size=16).hexdigest()
            plan.pieces += [Piece(i, g, meta.row_group(g).num_rows)
                            for g in range(meta.num_row_groups)]
        else:
            plan.digests[i], shard = info
            plan.pieces.append(Piece(i, -1, None))
        plan.shards.append(shard)
    return plan
