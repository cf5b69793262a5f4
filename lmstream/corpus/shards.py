"""One file of a dataset, and its format from its name: the records every other stage passes around.

    Shard("data/000_00000.parquet", "parquet", size=2_147_000_000, etag="9f0c...", name="fineweb@<sha>/data/...")
"""
from __future__ import annotations

import os
from dataclasses import dataclass

_COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json",
            ".txt": "text", ".text": "text", ".md": "text"}


@dataclass(frozen=True)
class Shard:
    """One file of the dataset."""
    url: str                   # local path, or URL (a Hub file: its resolve URL at a pinned commit)
    format: str                # "parquet" | "json" | "text"
    size: int | None = None    # bytes, when known (Hub listing, or read with the footer)
    # content tag from the store (Hub LFS sha256 / git blob id, HTTP ETag)
    etag: str | None = None
    name: str | None = None    # what it is called in messages and fingerprints (Hub: repo@sha/path)


def shard_format(url: str) -> str | None:
    """The format of a file from its name ("parquet", "json", "text"), or None if unknown."""
    name = url.split("?", 1)[0].lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
    return _FORMATS.get(os.path.splitext(name)[1])


