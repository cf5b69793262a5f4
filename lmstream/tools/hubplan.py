"""The Hub's numbers before a run: for a dataset and a run's shape (GPUs, readers, tokens per second
per GPU), the requests per 5 minutes of each kind against the Hub's published quotas, the bytes per
second per node, and whether the run fits, from the real plan (files, row groups, the text column's
sizes in the footers) and a measured bytes-per-token.

    python -m lmstream.plan --dataset_name HuggingFaceFW/fineweb --dataset_config_name CC-MAIN-2024-10 \\
        --gpus 64 --workers 8 --tokens_per_second 120000
"""
from __future__ import annotations

import dataclasses
import math
import sys

from ..config import DataArguments
from ..corpus import ranges
from ..corpus.sources import plan_dataset

# the Hub's "resolvers" quota per 5 minutes (its rate-limit documentation)
QUOTAS = {"anonymous": 3_000, "free": 5_000, "PRO": 12_000}
WINDOW = 300.0


@dataclasses.dataclass
class Shape:
    """A run's shape, for `python -m lmstream.plan`."""
    gpus: int = dataclasses.field(default=8, metadata={"help": "GPUs of the run."})
    gpus_per_node: int = dataclasses.field(default=8, metadata={"help": "GPUs per node."})
    workers: int = dataclasses.field(default=8, metadata={"help": "DataLoader workers per GPU."})
    tokens_per_second: float = dataclasses.field(default=120_000.0, metadata={
        "help": "Tokens a GPU trains on per second."})
    tokens_per_document: float | None = dataclasses.field(default=None, metadata={
        "help": "Tokens a document holds on average; default: measured on row groups spread over "
                "the data (one read when a row group holds 1,000 documents)."})
    tokenizer_name: str = dataclasses.field(default="openai-community/gpt2", metadata={
        "help": "Tokenizer (Hub id or folder) that measures tokens per document."})
    url_lifetime: float = dataclasses.field(default=3600.0, metadata={
        "help": "Seconds a signed storage URL is valid."})


def text_sizes(plan, field: str) -> tuple[int, int, int]:
    """(row groups, compressed bytes of the text column, rows) over the plan's Parquet footers."""
    groups = packed = rows = 0
    for i, footer in plan.footers.items():
        names = footer.schema.to_arrow_schema().names
        if field not in names:
            continue
        c = names.index(field)
        for g in range(footer.num_row_groups):
            col = footer.row_group(g).column(c)
            groups += 1
            packed += col.total_compressed_size
            rows += footer.row_group(g).num_rows
    return groups, packed, rows


def measure_tokens_per_document(plan, field: str, tokenizer_name: str, timeout: float,
                                docs: int = 1000, most: int = 32) -> float:
    """Tokens per document, measured on row groups spread evenly over the plan until `docs`
    documents (one read when a row group holds that many, as FineWeb's do), at most `most` reads."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer_name)
    tok.model_max_length = 1 << 60    # counting tokens, not feeding a model
    groups = [(i, g) for i in sorted(plan.footers) for g in range(plan.footers[i].num_row_groups)]
    step = max(1, len(groups) // most)
    tokens = rows = 0
    for i, g in groups[::step][:most]:
        shard = plan.shards[i]
        table = ranges.read_columns(shard.url, shard.size, plan.footers[i], g, [field], timeout)
        texts = [t for t in table.column(0).to_pylist() if t]
        tokens += sum(len(ids) for ids in tok(texts)["input_ids"]) if texts else 0
        rows += table.num_rows
        if rows >= docs:
            break
    return tokens / max(1, rows)


def budget(plan, field: str, shape: Shape, tokens_per_document: float) -> dict:
    """The run's rates, from the plan and its shape (see the module's docstring)."""
    groups, packed, rows = text_sizes(plan, field)
    files = max(1, len(plan.footers))
    per_file = groups / files
    tokens_per_group = rows / max(1, groups) * tokens_per_document
    tokens_s = shape.gpus * shape.tokens_per_second
    groups_s = tokens_s / tokens_per_group
    readers = shape.gpus * shape.workers
    nodes = math.ceil(shape.gpus / shape.gpus_per_node)
    active = max(1.0, readers / per_file)            # files being read at any moment
    return {
        "files": files, "row_groups": groups, "groups_per_file": per_file,
        "packed_per_group": packed / max(1, groups), "tokens_per_group": tokens_per_group,
        "tokens_per_document": tokens_per_document, "readers": readers, "nodes": nodes,
        "tokens_s": tokens_s, "groups_s": groups_s,
        "bytes_s_node": groups_s * packed / max(1, groups) / nodes,
        # resolve/ per 5 minutes: one per read (before signed URLs were reused); each reader
        # alone (strided readers meet a new file at nearly every read when a file has fewer row
        # groups than there are readers); shared by the run, one resolver per file (lmstream now)
        "resolves_per_read": groups_s * WINDOW,
        "resolves_per_reader": groups_s * WINDOW * min(1.0, readers / per_file),
        "resolves_shared": groups_s * WINDOW / per_file + active * WINDOW / shape.url_lifetime,
        "api_calls": 1 + files // 1000,
        "epoch_hours": groups / groups_s / 3600,
    }


def report(name: str, b: dict) -> list[str]:
    quota = "  ".join(f"{k} {v:,}" for k, v in QUOTAS.items())
    lines = [f"data   {name}: {b['files']:,} files, {b['row_groups']:,} row groups "
             f"({b['groups_per_file']:,.1f} a file), {b['packed_per_group'] / 1e6:,.2f} MB of text "
             f"a row group compressed, {b['tokens_per_group']:,.0f} tokens a row group "
             f"({b['tokens_per_document']:,.0f} a document)",
             f"run    {b['readers']:,} readers on {b['nodes']:,} node(s), {b['tokens_s']:,.0f} "
             f"tokens/s: {b['groups_s']:,.2f} row groups/s, {b['bytes_s_node'] / 1e6:,.2f} MB/s "
             f"a node from the Hub, an epoch in {b['epoch_hours']:,.1f} h",
             f"resolve/ requests per 5 minutes (quota: {quota}):"]
    for key, what in (("resolves_per_read", "one per row group read (no reuse)"),
                      ("resolves_per_reader", "each reader reusing its own signed URLs"),
                      ("resolves_shared", "shared by the run, one resolver a file (lmstream)")):
        n = b[key]
        fits = [k for k, v in QUOTAS.items() if n <= v]
        verdict = f"fits the {fits[0]} quota" if fits else "over every quota"
        lines.append(f"  {what:<50} {n:>12,.1f}  {verdict}")
    lines.append(f"dataset API calls: {b['api_calls']} per run (rank 0; 0 on resume)")
    return lines


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    from ..errors import ConfigError
    parser = HfArgumentParser((DataArguments, Shape), prog="python -m lmstream.plan")
    try:
        data_args, shape = parser.parse_args_into_dataclasses(argv)
        for f in dataclasses.fields(shape):
            v = getattr(shape, f.name)
            if isinstance(v, (int, float)) and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{f.name}={v} must be a positive number.")
        plan = plan_dataset(data_args)
        field = data_args.dataset_text_field
        bpt = shape.tokens_per_document or measure_tokens_per_document(
            plan, field, shape.tokenizer_name, data_args.dataset_read_timeout)
        if not plan.footers:
            raise ConfigError(f"dataset_name '{data_args.dataset_name}' has no Parquet file: "
                              "lmstream.plan reads row groups from Parquet footers.")
        name = data_args.dataset_name + (f" ({data_args.dataset_config_name})"
                                         if data_args.dataset_config_name else "")
        print("\n".join(report(name, budget(plan, field, shape, bpt))))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
