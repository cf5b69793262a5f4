"""Shared fixtures: the bundled GPT-2 tokenizer and small synthetic datasets built per test."""
import gzip
import json
import os
import random

# Tests never reach the network: the hub libraries must answer from local files or fail at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ASSETS = os.path.join(os.path.dirname(__file__), "..", "lmstream", "assets")
TINY_MODEL = os.path.abspath(os.path.join(ASSETS, "tiny-gpt2"))
SAMPLE = os.path.abspath(os.path.join(ASSETS, "sample"))
WORDS = ("stream token block shard window epoch resume carry python the of and to in is a "
         "parquet row group worker rank model train data é ü 東京 🤗").split()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TINY_MODEL)


def make_docs(n: int, seed: int = 0, empty_every: int = 0) -> list[str]:
    """Documents `doc-00012 ...` of varied length (1 to ~400 words); every `empty_every`-th is blank."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if empty_every and i % empty_every == empty_every - 1:
            docs.append(" \n\t" if i % 2 else "")
            continue
        k = rng.choice([1, 3, 10, 40, 120, 400])
        docs.append(f"doc-{i:05d} " + " ".join(rng.choice(WORDS) for _ in range(k)))
    return docs


def write_parquet(folder, docs, shards: int = 5, rows_per_group: int = 7, extra_column: bool = True):
    """Split `docs` into `shards` Parquet files with small row groups; return the file paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    per = -(-len(docs) // shards)
    for s in range(shards):
        part = docs[s * per:(s + 1) * per]
        cols = {"text": part}
        if extra_column:
            cols["id"] = [f"id-{s}-{i}" for i in range(len(part))]
        path = os.path.join(str(folder), f"part-{s:03d}.parquet")
        pq.write_table(pa.table(cols), path, row_group_size=rows_per_group)
        paths.append(path)
    return paths


def write_jsonl(path, docs, field="text", compress=None):
    data = "".join(json.dumps({field: d, "n": i}) + "\n" for i, d in enumerate(docs)).encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        import zstandard
        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def parquet_dir(tmp_path):
    docs = make_docs(300, seed=1, empty_every=25)
    write_parquet(tmp_path / "pq", docs)
    return str(tmp_path / "pq"), docs


def no_timings(obj):
    """A state or metrics tree without its `*_seconds` entries (timings differ between runs)."""
    if isinstance(obj, dict):
        return {k: no_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    return [no_timings(v) for v in obj] if isinstance(obj, list) else obj
