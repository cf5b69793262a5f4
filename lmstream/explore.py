"""Measurements the tutorial notebooks show: previews, shard splits, throughput, lengths, packing vs truncation.

    docs = preview(plan, args, 5)                 # a DataFrame of the first documents
    kept = kept_tokens(lengths, max_len=1024, block_size=1024)
"""
from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .config import DataArguments
from .documents import DocumentStream, iter_documents
from .plan import Plan
from .sources import open_binary


def dataset_bytes(plan: Plan, limit: int = 2000) -> int | None:
    """Total size of the shards in bytes (None if some size is unknown); at most `limit` files asked."""
    def size(url):
        try:
            with open_binary(url) as f:
                return f.seek(0, 2)
        except Exception:
            return None
    urls = [s.url for s in plan.shards[:limit]]
    with ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(size, urls))
    if None in sizes or len(plan.shards) > limit:
        return None
    return int(sum(sizes))


def preview(plan: Plan, args: DataArguments, n: int = 5, width: int = 160):
    """The first `n` documents of the first shard, every column, text cut to `width` characters."""
    import pandas as pd
    import pyarrow.parquet as pq
    shard = plan.shards[0]
    if shard.format == "parquet":
        with open_binary(shard.url) as f:
            table = pq.ParquetFile(f).read_row_group(0).slice(0, n)
        df = table.to_pandas()
    else:
        docs = itertools.islice(iter_documents(plan, args, shuffle=False), n)
        df = pd.DataFrame({args.dataset_text_field: list(docs)})
    text = df[args.dataset_text_field]
    df.insert(0, "chars", text.str.len())
    df[args.dataset_text_field] = text.str.slice(0, width).str.replace("\n", " ⏎ ")
    return df


def split_table(plan: Plan, args: DataArguments, world_size: int, workers: int, seed: int = 0, epoch: int = 0):
    """Which pieces (row groups / files) each rank and worker reads in an epoch."""
    import pandas as pd
    rows = []
    n_slots = world_size * workers
    for slot in range(n_slots):
        pieces = DocumentStream(plan, args, seed, slot, n_slots).slot_pieces(epoch)
        rows.append({"rank": slot // workers, "worker": slot % workers, "pieces": len(pieces),
                     "rows": sum((p.num_rows or 0) // p.stride for p in pieces),
                     "first pieces": ", ".join(f"{p.shard}:{p.row_group}" + (f"/{p.offset}%{p.stride}" if p.stride > 1 else "")
                                               for p in pieces[:4]) + (" ..." if len(pieces) > 4 else "")})
    return pd.DataFrame(rows)


def measure_documents(plan: Plan, args: DataArguments, n_docs: int = 500) -> dict:
    """Read up to `n_docs` documents from the stream; documents/s, MB/s and the texts."""
    t0 = time.perf_counter()
    texts = list(itertools.islice(iter_documents(plan, args, shuffle=False), n_docs))
    dt = max(time.perf_counter() - t0, 1e-9)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"documents": len(texts), "seconds": dt, "docs_per_s": len(texts) / dt, "MB_per_s": nbytes / dt / 1e6,
            "bytes": nbytes, "texts": texts}


def token_lengths(encoder, texts: list[str]) -> np.ndarray:
    """Tokens per document, EOS included."""
    return encoder.encode(texts)[1]


def kept_tokens(lengths: np.ndarray, max_len: int, block_size: int, map_batch: int = 1000) -> dict:
    """Tokens that reach training: the reference pipeline vs lmstream's packing.

    The reference tokenizes with truncation to the model's length (the tail of every longer document
    is lost) and groups each `map` batch of `map_batch` documents separately, dropping each batch's
    remainder. lmstream keeps every token but the final partial block.
    """
    lengths = np.asarray(lengths)
    total = int(lengths.sum())
    truncated = np.minimum(lengths, max_len)
    ref = sum(int(truncated[i:i + map_batch].sum()) // block_size * block_size for i in range(0, len(lengths), map_batch))
    packed = total // block_size * block_size
    return {"all tokens": total, "reference (truncate + group per batch)": ref, "lmstream (pack, carry over)": packed}


def padding_cost(lengths: np.ndarray, max_len: int) -> dict:
    """One padded sample per document: fraction of positions that are padding, and tokens cut off."""
    lengths = np.asarray(lengths)
    kept = np.minimum(lengths, max_len)
    return {"pad_fraction": float(1 - kept.sum() / (len(lengths) * max_len)),
            "truncated_fraction": float(1 - kept.sum() / lengths.sum())}


def block_size_table(lengths: np.ndarray, sizes=(64, 128, 256, 512, 1024, 2048)):
    """Per block size: blocks, tokens dropped at the end, documents cut across blocks, relative attention cost."""
    import pandas as pd
    lengths = np.asarray(lengths)
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    rows = []
    for L in sizes:
        starts = ends - lengths
        split = int(np.sum(starts // L != (ends - 1) // L))
        rows.append({"block_size": L, "blocks": total // L, "tokens_dropped": total % L,
                     "docs_split_across_blocks": split / len(lengths),
                     "attention_cost_per_token (rel.)": L / sizes[0]})
    return pd.DataFrame(rows)


def decode_with_boundaries(block, tokenizer, eos_mark: str = " ⟨EOS⟩\n\n") -> str:
    """A block decoded, with each end of document made visible."""
    ids = [int(t) for t in block]
    parts, cur = [], []
    for t in ids:
        if t == tokenizer.eos_token_id:
            parts.append(tokenizer.decode(cur) + eos_mark)
            cur = []
        else:
            cur.append(t)
    parts.append(tokenizer.decode(cur))
    return "".join(parts)


def first_block_with_boundary(blocks, eos_id: int, limit: int = 10000):
    """The first block of a stream that contains an end of document (or the first block)."""
    first = None
    for i, b in enumerate(blocks):
        ids = b["input_ids"]
        first = ids if first is None else first
        if (ids == eos_id).any() or i >= limit:
            return ids
    return first


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
