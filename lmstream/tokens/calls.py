"""Which documents go into one tokenizer call: ranges bounded in documents and bytes, so that the
first block comes out quickly even when documents are long, and a very long document (LongText)
alone."""
from __future__ import annotations

from ..corpus.longtext import LongText


def tokenizer_batches(nbytes: list[int], start: int, max_docs: int, max_bytes: int):
    """(first, end) document ranges for tokenizer calls: at most max_docs documents and about
    max_bytes of text each, so the first block comes out quickly even when documents are long."""
    b0 = start
    while b0 < len(nbytes):
        b1, size = b0, 0
        while b1 < len(nbytes) and b1 - b0 < max_docs and (b1 == b0
                                                           or size + nbytes[b1] <= max_bytes):
            size += nbytes[b1]
            b1 += 1
        yield b0, b1
        b0 = b1


def long_text_runs(docs: list, batches):
    """Split tokenizer batches so that every very long document (LongText) is a run of its own."""
    for b0, b1 in batches:
        start = b0
        for j in range(b0, b1):
            if isinstance(docs[j], LongText):
                if start < j:
                    yield start, j
                yield j, j + 1
                start = j + 1
        if start < b1:
            yield start, b1
