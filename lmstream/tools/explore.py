"""What the tutorial notebooks measure and tabulate: download vs stream, shard splits, reader
states, checkpoints, packing vs truncation, the cost of resuming by skipping.

    files = local_copy(args, "runs/streaming-demo", size_mb=200)   # a dataset big enough to time
    split_table(plan, args, world_size=2, workers=4)              # who reads which row groups

What notebook 02 tabulates about packing is in lmstream.tools.grouping.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from ..config import DataArguments
from ..stream.pipeline import build_pipeline
from ..corpus.documents import DocumentStream, iter_documents
from ..corpus.sources import plan_dataset
from ..corpus.plan import Plan
from ..stream.state import reader_states

DEMO_MARK = ".lmstream-local-copy.json"   # what a local copy holds (rebuilt when the wish changes)


def local_copy(args: DataArguments, folder: str, size_mb: int, shards: int = 4,
               rows_per_group: int = 500) -> list[str]:
    """Parquet shards of about `size_mb` MB in `folder`, made of the dataset's documents repeated
    (each copy with its own id), uncompressed so that the size on disk is the size on the wire; kept
    for the next run."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    wish = {"source": args.dataset_name, "config": args.dataset_config_name, "size_mb": size_mb,
            "shards": shards}
    mark = os.path.join(folder, DEMO_MARK)
    names = [os.path.join(folder, f"part-{i:03d}.parquet") for i in range(shards)]
    if os.path.exists(mark) and all(map(os.path.exists, names)):
        with open(mark) as f:
            if json.load(f) == wish:
                return names
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    texts = list(iter_documents(plan_dataset(args), args, shuffle=False))
    per_shard = size_mb * 1e6 / shards
    copies = max(1, int(per_shard // sum(len(t.encode()) for t in texts)))
    for i, name in enumerate(names):
        ids = [f"<copy {i}-{c}/doc {j}>" for c in range(copies) for j in range(len(texts))]
        table = pa.table({"text": texts * copies, "id": ids})
        pq.write_table(table, name, row_group_size=rows_per_group, compression="none",
                       use_dictionary=False)
    with open(mark, "w") as f:
        json.dump(wish, f)
    return names


def first_document_times(urls: list[str], tokenizer, server, scratch: str) -> "pd.DataFrame":
    """Seconds to the first document of Parquet files at `urls` (served by `server`, a LocalServer,
    which counts the bytes it sends) and bytes fetched by then: downloaded first (`datasets`,
    non-streaming, into a fresh cache under `scratch`, removed after), streamed by `datasets`, and
    streamed by lmstream up to its first block."""
    import datasets
    import pandas as pd
    rows = []

    def timed(way, fn):
        sent, t0 = server.bytes_sent, time.perf_counter()
        fn()
        rows.append({"way": way,
                     "seconds to the first document": round(time.perf_counter() - t0, 3),
                     "MB fetched by then": round((server.bytes_sent - sent) / 1e6, 1)})
    cache = os.path.join(scratch, "download-cache")
    shutil.rmtree(cache, ignore_errors=True)
    files = {"train": urls}
    if not all(u.startswith("http://127.0.0.1:") for u in urls):
        raise ValueError("first_document_times times a server on this machine (127.0.0.1) only.")
    # offline mode keeps off the internet; this server is on this machine
    offline = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = False
    try:
        timed("download, then read (datasets)",
              lambda: datasets.load_dataset("parquet", data_files=files, split="train",
                                            cache_dir=cache)[0]["id"])
        timed("stream (datasets)",
              lambda: next(iter(datasets.load_dataset("parquet", data_files=files, split="train",
                                                      streaming=True)))["id"])
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
        shutil.rmtree(cache, ignore_errors=True)
    args = DataArguments(dataset_name=",".join(urls), dataset_block_size=128)
    timed("stream (lmstream, to its first block)",
          lambda: next(iter(build_pipeline(args, tokenizer)))["input_ids"][:4].tolist())
    return pd.DataFrame(rows).set_index("way")


def pieces_table(plan: Plan, n: int = 6) -> "pd.DataFrame":
    """The first `n` pieces of a plan: shard, row group, rows, and the row stride when a piece is
    shared."""
    import pandas as pd
    rows = [{"piece": i, "shard": os.path.basename(plan.shards[p.shard].url),
             "row group": p.row_group,
             "rows": p.num_rows, "stride": p.stride} for i, p in enumerate(plan.pieces[:n])]
    return pd.DataFrame(rows).set_index("piece")


def reader_table(loader_state) -> "pd.DataFrame":
    """Each reader's position inside a stream's or loader's state (one row per rank x worker)."""
    import pandas as pd
    rows = []
    for st in reader_states(loader_state):
        c = st.get("stats", {})
        rows.append({"rank": st["rank"], "worker": st["slot"] % st["workers"], "epoch": st["epoch"],
                     "window": st["window"], "window starts at (piece, row)": tuple(st["start"]),
                     "document in window": st["doc"], "next token in it": st["token"],
                     "blocks yielded": c.get("blocks", 0), "documents done": c.get("docs", 0),
                     "tokens": c.get("tokens", 0)})
    return pd.DataFrame(rows)


def checkpoint_table(checkpoint: str) -> "pd.DataFrame":
    """The files of a checkpoint folder and their sizes, lmstream's data position included."""
    import pandas as pd
    rows = []
    for root, _, files in os.walk(checkpoint):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, checkpoint)
            what = _WHAT.get("rank-R.json" if name.startswith("rank-") else name, "")
            rows.append({"file": rel, "bytes": os.path.getsize(path), "what": what})
    return pd.DataFrame(sorted(rows, key=lambda r: r["file"])).set_index("file")


_WHAT = {"model.safetensors": "the weights", "optimizer.pt": "AdamW's moments",
         "scheduler.pt": "learning-rate schedule",
         "rng_state.pth": "random generators (dropout)", "trainer_state.json": "step, log history",
         "training_args.bin": "the TrainingArguments", "config.json": "the model's config",
         "rank-R.json": "lmstream: where this rank's readers stand in the stream",
         "plan.json.gz": "lmstream: the plan the position refers to (shards, "
                         "row groups, fingerprints)",
         "tokenizer.json": "the tokenizer", "tokenizer_config.json": "the tokenizer's settings",
         "generation_config.json": "defaults for generate()",
         "lmstream_complete.json": "lmstream: written last, so a checkpoint "
                                   "cut short is never resumed"}


def split_table(plan: Plan, args: DataArguments, world_size: int, workers: int, seed: int = 0,
                epoch: int = 0):
    """Which pieces (row groups / files) each rank and worker reads in an epoch."""
    import pandas as pd
    rows = []
    n_slots = world_size * workers
    for slot in range(n_slots):
        pieces = DocumentStream(plan, args, seed, slot, n_slots).slot_pieces(epoch)
        rows.append({"rank": slot // workers, "worker": slot % workers, "pieces": len(pieces),
                     "rows": sum((p.num_rows or 0) // p.stride for p in pieces),
                     "first pieces": ", ".join(map(_piece_name, pieces[:4]))
                                     + (" ..." if len(pieces) > 4 else "")})
    return pd.DataFrame(rows)


def _piece_name(p) -> str:
    """shard:row_group, with /offset%stride for a row group shared between readers."""
    return f"{p.shard}:{p.row_group}" + (f"/{p.offset}%{p.stride}" if p.stride > 1 else "")


def provenance_table(report: dict, width: int = 60) -> "pd.DataFrame":
    """One row per segment of `lmstream.inspect_step`'s report: where each block's tokens came
    from."""
    import pandas as pd
    return pd.DataFrame([{"rank": mb["rank"], "micro-batch": mb["micro_batch"], "block": b,
                          "block tokens": "%d-%d" % tuple(s["block_tokens"]),
                          "file": os.path.basename(s["file"]), "row group": s["row_group"],
                          "row": s["row"], "document tokens": "%d-%d" % tuple(s["tokens"]),
                          "id": s.get("id", ""), "text": s.get("text", "")[:width]}
                         for mb in report["micro_batches"] for b, blk in enumerate(mb["blocks"])
                         for s in blk["segments"]])
