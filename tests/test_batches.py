"""Workers send their batches in groups (lmstream.stream.batches): one message per group, and a checkpoint taken at any
batch inside a group resumes exactly where the uninterrupted run goes on."""
import dataclasses
import itertools
import json

import pytest
import torch

import lmstream
from lmstream.stream.batches import GROUP_KEY, SIZE_KEY, Grouped, group_size
from lmstream.stream.state import find_dicts


def _args(path):
    return lmstream.DataArguments(dataset_name=path, dataset_block_size=32, dataset_shuffle_buffer=20,
                                  dataset_tokenize_batch_size=7)


def _loader(path, tokenizer, group, workers=2):
    ds = lmstream.build_pipeline(_args(path), tokenizer, seed=5)
    return lmstream.build_loader(ds, batch_size=2, num_workers=workers, group=group)


def _ids(loader_iter, n):
    return [next(loader_iter)["input_ids"] for _ in range(n)]


def test_a_worker_sends_a_group_of_batches_in_one_message(parquet_dir, tokenizer):
    path, _ = parquet_dir
    loader = _loader(path, tokenizer, group=4)
    it = iter(loader)
    first = _ids(it, 1)[0]
    group, handed = it.handout.queues[0][0]   # the message the first batch came in: an iterator's first is 1 batch
    assert handed == 1 and len(group.batches) == 1 and len(group.states) == 1 and group.worker == 0
    assert torch.equal(first, torch.from_numpy(group.batches[0].arrays["input_ids"]).long())
    # then 2, then what is left of the group (a group ends at a multiple of 4 batches), then whole groups
    messages = list(itertools.islice(Grouped(lmstream.build_pipeline(_args(path), tokenizer, seed=5), 2, 4)._groups(0), 5))
    assert [len(m.batches) for m in messages] == [1, 2, 1, 4, 4]
    assert [[s[GROUP_KEY] for s in m.states] for m in messages[:4]] == [[1], [2, 3], [0], [1, 2, 3, 0]]
    assert {s[SIZE_KEY] for m in messages for s in m.states} == {4}
    assert all(m.start == p.states[-1] for p, m in zip(messages, messages[1:]))   # each starts where the last ended
    assert group_size(8, 1024) == 32 and group_size(64, 8192) == 1   # about GROUP_TOKENS tokens a message


@pytest.mark.parametrize("workers", [2, 3])
def test_the_order_of_batches_does_not_depend_on_the_group_size(parquet_dir, tokenizer, workers):
    """Batches are handed out one per worker in turn, as when each worker sends one batch at a time, to the end of
    a stream whose workers end at different times."""
    path, _ = parquet_dir
    args = dataclasses.replace(_args(path), dataset_cycle=False)
    runs = [[b["input_ids"] for b in lmstream.build_loader(lmstream.build_pipeline(args, tokenizer, seed=5), 2,
                                                           num_workers=workers, group=g)] for g in (1, 4, 32)]
    assert len(runs[0]) > 8
    for other in runs[1:]:
        assert len(other) == len(runs[0]) and all(torch.equal(a, b) for a, b in zip(runs[0], other))


@pytest.mark.parametrize("stop", [1, 2, 3, 4, 5, 7])
def test_a_checkpoint_inside_a_group_resumes_exactly(parquet_dir, tokenizer, stop):
    """Batches 1..2 of a group of 3 (and the group's end, and later groups): the resumed loader goes on with the
    same batches as the uninterrupted one, though it asks for another group size (the saved one is kept)."""
    path, _ = parquet_dir
    ref = _ids(iter(_loader(path, tokenizer, group=3)), 16)
    run = _loader(path, tokenizer, group=3)
    it = iter(run)
    assert all(torch.equal(a, b) for a, b in zip(_ids(it, stop), ref))
    state = json.loads(json.dumps(run.state_dict()))
    del it
    assert {d[SIZE_KEY] for d in find_dicts(state, lambda d: SIZE_KEY in d)} == {3}
    fresh = _loader(path, tokenizer, group=5)
    fresh.load_state_dict(state)
    got = _ids(iter(fresh), 16 - stop)
    assert all(torch.equal(a, b) for a, b in zip(got, ref[stop:], strict=True))


def test_in_process_batches_are_the_stream_s_blocks_and_leave_the_stream_as_it_was(parquet_dir, tokenizer):
    """In one process the loader takes packed blocks as int32 arrays (one int64 conversion per batch): the same
    input_ids and labels as the stream's own samples, and iterating the stream itself still gives tensors."""
    path, _ = parquet_dir
    loader = lmstream.build_loader(lmstream.build_pipeline(_args(path), tokenizer, seed=5), batch_size=3)
    it = iter(loader)
    batches = [next(it) for _ in range(4)]
    stream = lmstream.build_pipeline(_args(path), tokenizer, seed=5)
    samples = iter(stream)
    for batch in batches:
        rows = [next(samples) for _ in range(3)]
        assert batch["input_ids"].dtype == torch.int64 and torch.equal(batch["labels"], batch["input_ids"])
        assert torch.equal(batch["input_ids"], torch.stack([r["input_ids"] for r in rows]))
        assert torch.equal(batch["labels"], torch.stack([r["labels"] for r in rows]))
        assert batch["labels"].data_ptr() != batch["input_ids"].data_ptr()   # a copy: the model may shift it
    own = next(iter(loader.stream))   # the loader's own stream, iterated directly while the loader's is alive
    assert isinstance(own["input_ids"], torch.Tensor) and "labels" in own


def test_ids_travel_as_uint16_when_they_fit_and_reach_the_model_as_int64():
    import numpy as np
    from lmstream.stream.collate import collate_arrays
    small = [{"input_ids": np.array([0, 5, 65535, 7], dtype=np.int32)} for _ in range(2)]
    batch = collate_arrays(small)
    assert batch.arrays["input_ids"].dtype == np.uint16
    out = batch.tensors()
    assert out["input_ids"].dtype == torch.int64 and out["input_ids"].tolist() == [[0, 5, 65535, 7]] * 2
    assert out["labels"].tolist() == out["input_ids"].tolist() and out["labels"].data_ptr() != out["input_ids"].data_ptr()
    large = [{"input_ids": np.array([1, 65536, 128000], dtype=np.int32)}]   # a Llama-3-sized vocabulary
    batch = collate_arrays(large)
    assert batch.arrays["input_ids"].dtype == np.int32
    assert batch.tensors()["input_ids"].tolist() == [[1, 65536, 128000]]
    direct = collate_arrays(small, np.uint16)   # the stream's id type: stacked straight into it, no scan
    assert direct.arrays["input_ids"].dtype == np.uint16 and direct.tensors()["input_ids"].tolist() == [[0, 5, 65535, 7]] * 2
    assert collate_arrays(large, np.int32).tensors()["input_ids"].tolist() == [[1, 65536, 128000]]


def test_the_id_type_comes_from_the_whole_vocabulary(parquet_dir, tokenizer):
    """One rule (lmstream.tokens.tokenize.id_type) for the ids workers send and prepare saves: uint16 only when every id of
    the vocabulary and of the added tokens is below 65536."""
    import numpy as np
    from lmstream.tokens.tokenize import id_type

    class Tok:
        def __init__(self, size, vocab, added=()):
            self.size, self.vocab, self.added_tokens_decoder = size, vocab, dict.fromkeys(added)

        def __len__(self):
            return self.size

        def get_vocab(self):
            return self.vocab
    assert id_type(tokenizer) is np.uint16 and id_type(Tok(128_256, {})) is np.int32
    assert id_type(Tok(3, {"a": 0, "b": 1}, added=[70_000])) is np.int32   # an added token past the vocabulary
    assert id_type(Tok(3, {"a": 0, "b": 65_536})) is np.int32
    stream = lmstream.build_pipeline(_args(parquet_dir[0]), tokenizer)
    assert stream.id_type is np.uint16
    group = next(iter(Grouped(stream, 2, 4)))
    assert all(b.arrays["input_ids"].dtype == np.uint16 for b in group.batches)
