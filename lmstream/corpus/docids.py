"""Documents by name: the `id` and `url` columns (FineWeb's) of given rows, read by themselves, and
lists of ids.

    id_columns(plan, shard, row_group, args)     # {row: {"id": ..., "url": ...}}
    read_id_list(path)                           # a --dataset_skip_documents file
"""
from __future__ import annotations

import json

from . import ranges

from . import textfiles
from ..config import DataArguments
from .plan import Plan

ID_COLUMNS = ("id", "url")   # the columns that name a document, where a dataset has them


def id_columns(plan: Plan, shard: int, group: int, args: DataArguments) -> dict:
    """{row: {"id": ..., "url": ...}} of one row group (or line-based file): those of ID_COLUMNS it
    has, read by themselves (a Range request for just their column chunks)."""
    s, timeout = plan.shards[shard], args.dataset_read_timeout
    if s.format == "parquet":
        footer = plan.footers[shard]
        names = [n for n in ID_COLUMNS if n in footer.schema.to_arrow_schema().names]
        if not names:
            return {}
        cols = ranges.read_columns(s.url, s.size, footer, group, names, timeout).to_pydict()
        return {i: {n: cols[n][i] for n in names} for i in range(len(cols[names[0]]))}
    if s.format != "json":
        return {}
    out = {}
    for i, line in enumerate(textfiles.lines(s.url, timeout)):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out[i] = {n: rec[n] for n in ID_COLUMNS if n in rec}
    return out


def read_id_list(path: str) -> frozenset:
    """The ids or urls of a --dataset_skip_documents file, one per line (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip())
