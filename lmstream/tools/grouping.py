"""What notebook 02 tabulates about grouping: per block size, what one padded sample per document
costs (padding, text cut off) and what packing does (blocks, documents cut across blocks); a block
decoded with its document ends shown.

    padding_table(lengths)            # lengths: tokens per document
    block_size_table(lengths)
    cut_documents(page, 3000)         # a long page as documents of web-page length
    print(decode_with_boundaries(batch["input_ids"][0], tokenizer))
"""
from __future__ import annotations

import numpy as np


def padding_table(lengths: np.ndarray, sizes=(128, 512, 1024, 2048, 4096, 8192)) -> "pd.DataFrame":
    """Without grouping (one sample per document, truncated and padded to the block size): per block
    size, the share of positions that are padding (compute spent on nothing) and the share of tokens
    cut off (text never seen)."""
    import pandas as pd
    lengths = np.asarray(lengths)
    rows = []
    for L in sizes:
        kept, positions = float(np.minimum(lengths, L).sum()), len(lengths) * L
        rows.append({"block size": L,
                     "padding (% of positions)": round(100 * (1 - kept / positions), 1),
                     "cut off (% of tokens)": round(100 * (1 - kept / lengths.sum()), 1)})
    return pd.DataFrame(rows).set_index("block size")


def block_size_table(lengths: np.ndarray, sizes=(64, 128, 256, 512, 1024, 2048)) -> "pd.DataFrame":
    """Packing, per block size: blocks, tokens left at the end, documents cut across blocks, and the
    attention work per token relative to the smallest block (each token attends to the tokens before
    it in its block: the work per token grows with the block, the work per block with its square)."""
    import pandas as pd
    lengths = np.asarray(lengths)
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    starts = ends - lengths
    rows = []
    for L in sizes:
        split = int(np.sum(starts // L != (ends - 1) // L))
        rows.append({"block size": L, "blocks": total // L, "tokens left at the end": total % L,
                     "documents cut across blocks (%)": round(100 * split / len(lengths), 1),
                     f"attention work per token (x blocks of {sizes[0]})": L / sizes[0]})
    return pd.DataFrame(rows).set_index("block size")


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


def cut_documents(text: str, min_chars: int) -> list[str]:
    """A document cut at paragraph ends into pieces of at least `min_chars` characters (the last may
    be shorter): long pages as documents of web-page length (3 KB is FineWeb's average document, as
    in docs/benchmarks.md)."""
    pieces, cur = [], []
    for para in text.split("\n\n"):
        cur.append(para)
        if sum(map(len, cur)) >= min_chars:
            pieces.append("\n\n".join(cur))
            cur = []
    if cur:
        pieces.append("\n\n".join(cur))
    return pieces
