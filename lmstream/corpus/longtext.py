"""Very long documents: kept in their Arrow array and read in pieces, never as one Python string.

    doc = LongText(array)          # a 1-element Arrow string array (a row of a row group)
    for piece in doc.pieces(1 << 20): ...

A document above LONG_DOC_BYTES (a 50 MB log dump, a whole book) would otherwise be held as one
Python string (up to 4 bytes a character) and its token ids as one list; in pieces, what lmstream
holds beyond the row group it came in is bounded by the piece size.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LONG_DOC_BYTES = 8 << 20


class LongText:
    """A document longer than LONG_DOC_BYTES, read from its Arrow array piece by piece."""

    def __init__(self, array: pa.Array):
        self.array = array
        self.nbytes = int(pc.binary_length(array)[0].as_py())
        self.chars = int(pc.utf8_length(array)[0].as_py())

    def __len__(self) -> int:
        return self.chars

    def is_blank(self) -> bool:
        return not self.chars or bool(pc.utf8_is_space(self.array)[0].as_py())

    def utf8(self) -> memoryview:
        """The UTF-8 bytes, without a copy."""
        return memoryview(self.array.cast(pa.binary())[0].as_buffer())

    def blake2b64(self) -> int:
        h, view = hashlib.blake2b(digest_size=8), self.utf8()
        for i in range(0, len(view), 1 << 22):
            h.update(view[i:i + (1 << 22)])
        return int.from_bytes(h.digest(), "little")

    def slice(self, start: int, stop: int) -> str:
        """Characters [start, stop) as a (short) Python string."""
        return pc.utf8_slice_codeunits(self.array, start, stop)[0].as_py()

    def encode(self, *args) -> bytes:   # what str.encode gives, for code that measures bytes
        return bytes(self.utf8())

    def __str__(self) -> str:   # the whole text: only for callers that accept holding it
        return self.array[0].as_py()


def with_long_texts(column: pa.ChunkedArray | pa.Array,
                    limit: int | None = None) -> tuple[list, list]:
    """(Python values of a string column with documents above `limit` bytes as LongText, each
    value's UTF-8 bytes). The sizes come from the column's offsets (no pass over the text); None
    where the column is not text. Only a column holding a LongText makes a pyarrow compute call
    (whose first call imports pandas, a few tenths of a second): the common path makes none, so no
    process pays that import before it meets a very long document."""
    limit = LONG_DOC_BYTES if limit is None else limit
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        # an all-null or non-text column: the document checks downstream say so
        return column.to_pylist(), [None] * len(column)
    sizes = utf8_sizes(column)
    if not len(sizes) or sizes.max() <= limit:
        return column.to_pylist(), sizes.tolist()
    big = sizes > limit
    values = pc.if_else(pa.array(big), pa.scalar(None, column.type), column).to_pylist()
    for i in np.flatnonzero(big).tolist():
        values[i] = LongText(column.slice(i, 1))
    return values, sizes.tolist()


def utf8_sizes(column: pa.Array) -> np.ndarray:
    """UTF-8 bytes of each value of a string array (0 for a null), from its offsets buffer."""
    if not len(column):
        return np.zeros(0, dtype=np.int64)
    dtype = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1],
                            dtype)[column.offset:column.offset + len(column) + 1]
    return np.diff(offsets).astype(np.int64)


def valid_utf8(column: pa.Array) -> tuple[pa.Array, list | None]:
    """A string column whose values are all UTF-8, and which values were not (None: all were). A
    Parquet writer that does not check can store bytes that are not UTF-8 in a string column; they
    are decoded with U+FFFD in place of each bad sequence (lone UTF-16 halves included), the rule
    of the line formats (lmstream.corpus.textfiles.decode). Checking costs one pass at memory speed
    (about 10 ms per 100 MB)."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column, None
    try:
        column.validate(full=True)
        return column, None
    except pa.ArrowInvalid:
        pass
    raw = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
    texts, bad = [], []
    for value in raw.to_pylist():
        if value is None:
            texts.append(None)
            bad.append(False)
            continue
        try:
            texts.append(value.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            texts.append(value.decode("utf-8", "replace"))
            bad.append(True)
    return pa.array(texts, column.type), bad
