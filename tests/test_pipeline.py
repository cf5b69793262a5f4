"""End-to-end pipeline: losslessness, exact resume across workers and ranks, coverage."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import lmstream
from conftest import make_docs, write_parquet


def _args(path, **kw):
    kw.setdefault("dataset_block_size", 32)
    kw.setdefault("dataset_shuffle_buffer", 20)
    kw.setdefault("dataset_tokenize_batch_size", 7)
    return lmstream.DataArguments(dataset_name=path, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_lossless_every_token_once_with_eos(parquet_dir, tokenizer):
    path, _ = parquet_dir
    args = _args(path, dataset_cycle=False)
    blocks = lmstream.build_pipeline(args, tokenizer)
    out = [b["input_ids"] for b in blocks]
    assert all(torch.equal(b["input_ids"], b["labels"]) for b in lmstream.build_pipeline(args, tokenizer))
    # the same documents, in the stream's order, tokenized one by one
    from lmstream.corpus.documents import DocumentStream
    stream = DocumentStream(blocks.plan, args, 0, 0, 1)
    docs = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
    expected = np.concatenate([tokenizer(d)["input_ids"] + [tokenizer.eos_token_id] for d in docs])
    got = torch.cat(out).numpy()
    stats = blocks.stats
    assert len(got) + stats["tokens_dropped"] == len(expected)   # tokens out + final remainder == all tokens
    assert stats["tokens_dropped"] < 32
    assert np.array_equal(got, expected[: len(got)])
    assert stats["blocks"] == len(out) and stats["tokens"] == len(got)
    assert (got == tokenizer.eos_token_id).sum() == stats["docs"] >= len(docs) - 1


def _loader(path, tokenizer, rank, world, workers, batch=3, **kw):
    ds = lmstream.build_pipeline(_args(path, **kw), tokenizer, seed=7, rank=rank, world_size=world)
    return lmstream.build_loader(ds, batch_size=batch, num_workers=workers)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_resume_is_bitwise_exact(parquet_dir, tokenizer, workers, world):
    path, _ = parquet_dir
    N, M = 5, 40   # M crosses epoch boundaries (about 14 batches per slot and epoch)
    for rank in range(world):
        full = iter(_loader(path, tokenizer, rank, world, workers))
        ref = _take(full, N + 2 * M)
        # uninterrupted run, snapshot after N batches
        run = _loader(path, tokenizer, rank, world, workers)
        it = iter(run)
        _take(it, N)
        state = json.loads(json.dumps(run.state_dict()))
        del it
        # resume twice in a row: N -> N+M -> N+2M
        got = []
        for _ in range(2):
            fresh = _loader(path, tokenizer, rank, world, workers)
            fresh.load_state_dict(state)
            it = iter(fresh)
            got += _take(it, M)
            state = json.loads(json.dumps(fresh.state_dict()))
            del it
        for a, b in zip(ref[N:], got):
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_state_right_after_resume_is_not_stale(parquet_dir, tokenizer):
    path, _ = parquet_dir
    a = lmstream.build_pipeline(_args(path), tokenizer)
    it = iter(a)
    _take(it, 11)
    state = a.state_dict()
    b = lmstream.build_pipeline(_args(path), tokenizer)
    b.load_state_dict(state)
    assert b.state_dict() == state   # saved again before any new item: still the resumed position
    c = lmstream.build_pipeline(_args(path), tokenizer)
    c.load_state_dict(b.state_dict())
    assert torch.equal(next(iter(c))["input_ids"], next(it)["input_ids"])


@pytest.mark.parametrize("world,workers", [(2, 1), (3, 2), (2, 5)])
def test_ranks_and_workers_read_disjoint_documents(tmp_path, tokenizer, monkeypatch, world, workers):
    """Each (rank, worker) stream, split at EOS, holds whole documents; together every one exactly once."""
    docs = make_docs(200, seed=3)
    write_parquet(tmp_path / "d", docs, shards=4, rows_per_group=9)
    eos, seen, cut = tokenizer.eos_token_id, [], 0
    for rank in range(world):
        for w in range(workers):   # what torch's DataLoader tells worker w of `workers`
            info = type("Info", (), {"id": w, "num_workers": workers})()
            monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
            ds = lmstream.build_pipeline(_args(str(tmp_path / "d"), dataset_cycle=False, dataset_block_size=8),
                                         tokenizer, rank=rank, world_size=world)
            flat = torch.cat([b["input_ids"] for b in ds]).numpy()
            ends = np.flatnonzero(flat == eos)
            pieces = np.split(flat, ends + 1)[:-1]    # complete documents; the rest went to the final partial block
            seen += [tokenizer.decode(p[:-1]).split(" ", 1)[0] for p in pieces]
            cut += ds.stats["tokens_dropped"] > 0
    assert len(seen) == len(set(seen))                 # no document twice
    assert set(seen) <= {f"doc-{i:05d}" for i in range(200)}
    assert len(seen) >= len(docs) - cut                # only a reader's final partial block is cut


def test_group_text_false_gives_one_padded_sample_per_document(parquet_dir, tokenizer):
    path, docs = parquet_dir
    ds = lmstream.build_pipeline(_args(path, dataset_group_text=False, dataset_max_seq_length=24, dataset_cycle=False),
                                 tokenizer)
    samples = list(ds)
    assert len(samples) == sum(1 for d in docs if d.strip())
    for s in samples:
        assert s["input_ids"].shape == (24,)
        assert ((s["labels"] == -100) == (s["attention_mask"] == 0)).all()
    assert ds.stats["tokens_truncated"] > 0


def test_max_samples_caps_each_epoch(parquet_dir, tokenizer):
    path, _ = parquet_dir
    ds = lmstream.build_pipeline(_args(path, dataset_cycle=False), tokenizer, max_samples=10)
    assert len(list(ds)) == 10
    two = lmstream.build_pipeline(_args(path, dataset_cycle=False), tokenizer, rank=1, world_size=2, max_samples=11)
    assert len(list(two)) == 5


def test_eval_split_uses_holdout_documents(parquet_dir, tokenizer):
    path, _ = parquet_dir
    args = _args(path, dataset_holdout_fraction=0.3, dataset_cycle=False)
    train = lmstream.build_pipeline(args, tokenizer)
    held = lmstream.build_pipeline(args, tokenizer, split="eval")
    decode = lambda ds: {p.split(" ")[0] for b in ds for p in tokenizer.decode(b["input_ids"]).split("<|endoftext|>")}
    assert not {d for d in decode(train) & decode(held) if d.startswith("doc-") and len(d) == 9}
    assert len(list(held)) > 0


def test_tokenizer_batches_bound_documents_and_bytes():
    from lmstream.tokens.calls import tokenizer_batches as _batches
    nbytes = [10, 10, 600, 10, 10, 10, 10]
    assert list(_batches(nbytes, 0, max_docs=3, max_bytes=100)) == [(0, 2), (2, 3), (3, 6), (6, 7)]
    assert list(_batches(nbytes, 5, max_docs=3, max_bytes=100)) == [(5, 7)]
    assert list(_batches([], 0, 3, 100)) == []


@pytest.mark.parametrize("group", [True, False])
def test_very_long_documents_stream_in_parts_and_resume_exactly(tmp_path, tokenizer, monkeypatch, group):
    """Documents above LONG_DOC_BYTES go through in pieces: the same blocks as whole, exact resume inside one."""
    import lmstream.corpus.longtext as LT
    import lmstream.tokens.tokenize as T
    docs = make_docs(40, seed=12)
    docs[7] = " ".join(docs[:30]) * 3 + " 東京 🤗 tail"          # about 60 kB
    docs[20] = "x" * 9000 + " end"                             # no cut point for a long way
    write_parquet(tmp_path / "long", docs, shards=2, rows_per_group=10)
    args = _args(str(tmp_path / "long"), dataset_group_text=group, dataset_max_seq_length=48 if not group else None)
    whole = [b["input_ids"] for b in lmstream.build_pipeline(dataclasses.replace(args, dataset_cycle=False), tokenizer)]
    monkeypatch.setattr(LT, "LONG_DOC_BYTES", 5000)
    monkeypatch.setattr(T, "CHUNK_CHARS", 2000)
    one = lmstream.build_pipeline(dataclasses.replace(args, dataset_cycle=False), tokenizer)
    parts = [b["input_ids"] for b in one]
    assert len(parts) == len(whole) and all(torch.equal(a, b) for a, b in zip(whole, parts))
    assert one.stats["docs"] >= 39 if group else one.stats["tokens_truncated"] > 0
    if group:   # resume at every block boundary inside the long documents
        ds = lmstream.build_pipeline(args, tokenizer)
        it, states = iter(ds), []
        for _ in range(len(whole)):
            next(it)
            states.append(ds.state_dict())
        inside = [k for k in range(len(whole) - 1) if states[k]["token"] > 0]   # positions inside a document
        for k in inside[:: max(1, len(inside) // 10)] + [len(whole) - 2]:
            fresh = lmstream.build_pipeline(args, tokenizer)
            fresh.load_state_dict(states[k])
            assert torch.equal(next(iter(fresh))["input_ids"], whole[k + 1]), k


def test_saved_ids_are_uint16_only_when_every_id_of_the_tokenizer_fits(tokenizer):
    from lmstream.stream.materialize import stored_types

    class Large:   # a Llama-3-sized vocabulary
        def __len__(self):
            return 128_256
    assert stored_types(tokenizer)["input_ids"] == "uint16" and stored_types(Large())["input_ids"] == "int32"
    assert stored_types(tokenizer)["labels"] == "int64"   # -100 where padded


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("processes", [1, 2])
def test_materialized_blocks_are_the_streams_blocks(tmp_path, tokenizer, monkeypatch, group, processes):
    """`dataset_streaming false` and lmstream.tools.prepare write, per reader, the very blocks its stream yields (packed
    blocks cut from whole tokenizer batches at once), long documents in parts included."""
    import lmstream.corpus.longtext as LT
    import lmstream.tokens.tokenize as T
    from lmstream.stream.materialize import materialize, slots_for
    docs = make_docs(60, seed=5)
    docs[9] = " ".join(docs[:30]) * 3 + " 東京 🤗 tail"
    write_parquet(tmp_path / "pq", docs, shards=3, rows_per_group=7)
    monkeypatch.setattr(LT, "LONG_DOC_BYTES", 5000)
    monkeypatch.setattr(T, "CHUNK_CHARS", 2000)
    args = _args(str(tmp_path / "pq"), dataset_group_text=group, dataset_max_seq_length=48 if not group else None,
                 dataset_shuffle_buffer=9)
    ds = materialize(args, tokenizer, seed=4, processes=processes)
    slots = slots_for(processes)   # readers: several per process when there are several processes
    stream = [b for slot in range(slots) for b in lmstream.build_pipeline(
        dataclasses.replace(args, dataset_cycle=False), tokenizer, seed=4, rank=slot, world_size=slots)]
    tensors = sorted(k for k in stream[0] if k != "provenance")   # provenance is the stream's, not stored
    assert len(stream) > 10 and sorted(ds.column_names) == (["input_ids"] if group else tensors)
    assert ds.features["input_ids"].feature.dtype == "uint16"   # GPT-2's ids fit: half the bytes on disk
    for column in ds.column_names:   # packed blocks are stored without labels (input_ids again): collated later
        assert ds[column] == [b[column].tolist() for b in stream], column
    from lmstream.training.trainer import collate_blocks
    batch = collate_blocks([ds[i] for i in range(3)])
    for column in tensors:
        assert torch.equal(batch[column], torch.stack([b[column] for b in stream[:3]])), column


def test_packed_chunks_cut_consecutive_blocks_across_arrays_of_any_length():
    """prepare's blocks from tokenizer batches: every full block of the concatenation, in order, the remainder
    dropped, whatever the arrays' lengths (empty ones, shorter than a block, a block spanning several)."""
    import numpy as np
    from lmstream.stream.materialize import _packed_chunks
    rng = np.random.default_rng(1)
    for _ in range(300):
        block = int(rng.integers(1, 9))
        arrays = [rng.integers(0, 100, int(rng.integers(0, 30))).astype(np.int32) for _ in range(int(rng.integers(8)))]
        flat = np.concatenate(arrays) if arrays else np.empty(0, np.int32)
        want = flat[: len(flat) // block * block].reshape(-1, block)
        got = [c["input_ids"] for c in _packed_chunks(iter(arrays), block)]
        got = np.concatenate(got) if got else np.empty((0, block), np.int32)
        assert got.shape == want.shape and (got == want).all(), (block, [len(a) for a in arrays])


def test_the_counters_type_names_every_counter_the_code_keeps(parquet_dir, tokenizer):
    """stream.state.Counters is the one list of a reader's counters: every `stats["x"]` the source
    writes, and every counter a stream reports, is in it."""
    import re
    from lmstream.stream.state import COUNTERS, Counters
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lmstream")
    written = set()
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    written |= set(re.findall(r'stats\["([a-z_]+)"\]', f.read()))
    names = set(Counters.__annotations__)
    assert written and written <= names and set(COUNTERS) <= names
    folder, _ = parquet_dir
    blocks = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=folder, dataset_block_size=32),
                                     tokenizer, seed=0)
    it = iter(blocks)
    for _ in range(20):
        next(it)
    assert set(blocks.stats) <= names
