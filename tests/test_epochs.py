"""Epochs: a stream that ends before max_steps starts its next epoch with a new, seeded shuffle; a
stream of known size (max_train_samples) has a length, so that num_train_epochs works."""
import json

import pytest
import torch

import lmstream
from conftest import BLOCK, account, check_once, corpus_job_argv as _job_argv


def _args(folder, **kw):
    return lmstream.DataArguments(dataset_name=folder, dataset_block_size=BLOCK, dataset_shuffle_buffer=5, **kw)


def _epochs(folder, tokenizer, seed):
    ds = lmstream.build_pipeline(_args(folder), tokenizer, seed=seed)
    per = {0: [], 1: []}
    for sample in ds:   # the state after a sample names its epoch
        epoch = ds.state_dict()["epoch"]
        if epoch == 2:
            break
        per[epoch].append(sample["input_ids"])
    return per


def test_epoch_rollover_reshuffles_deterministically(corpus, tokenizer):
    folder, lengths, owner = corpus
    a, b, other = _epochs(folder, tokenizer, 3), _epochs(folder, tokenizer, 3), _epochs(folder, tokenizer, 4)
    for epoch in (0, 1):
        check_once(account(a[epoch], lengths, owner), lengths, readers=1)   # every document once per epoch
        assert len(a[epoch]) == len(b[epoch]) and all(torch.equal(x, y) for x, y in zip(a[epoch], b[epoch]))
    order = [[int(s[0]) for s in a[e]] for e in (0, 1)]
    assert order[0] != order[1]                                              # a new shuffle each epoch
    assert [int(s[0]) for s in other[0]] != order[0]                         # the seed decides it


@pytest.mark.parametrize("workers", [0, 2])
def test_sized_stream_has_a_length_and_epochs(corpus, tokenizer, workers):
    folder, _, _ = corpus
    ds = lmstream.build_pipeline(_args(folder), tokenizer, seed=3, max_samples=23)
    loader = lmstream.build_loader(ds, batch_size=4, num_workers=workers)
    epochs = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        epochs.append([b["input_ids"] for b in loader])
        assert len(epochs[-1]) == len(loader) and sum(len(b) for b in epochs[-1]) == 23
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))
    again = lmstream.build_loader(lmstream.build_pipeline(_args(folder), tokenizer, seed=3, max_samples=23),
                                  batch_size=4, num_workers=workers)
    again.set_epoch(2)   # epoch 2 straight away: the same batches as after epochs 0 and 1
    assert all(torch.equal(x, y["input_ids"]) for x, y in zip(epochs[2], list(again), strict=True))
    with pytest.raises(TypeError):
        len(lmstream.build_loader(lmstream.build_pipeline(_args(folder), tokenizer), batch_size=4))


def test_num_train_epochs_with_max_train_samples(corpus, tmp_path, monkeypatch):
    """No max_steps: 2 epochs of 24 blocks at batch 2 are 24 steps; the log shows both epochs."""
    import lmstream.train as lt
    folder, _, _ = corpus
    out = tmp_path / "epochs"
    argv = _job_argv(folder, out, -1, 2, "--max_train_samples", "24", "--num_train_epochs", "2",
                     "--save_steps", "100")
    metrics = lt.train(*lt.parse_args(argv))
    state = json.load(open(out / "trainer_state.json"))
    assert state["global_step"] == 24 and metrics["data_blocks"] == 48
    assert {h.get("data_epoch") for h in state["log_history"] if "loss" in h} == {0, 1}


def test_sized_stream_with_fewer_samples_than_readers(corpus, tokenizer):
    """3 samples per epoch for 2 ranks x 2 workers: rank 1 has 1, its second worker none; no hang, no error."""
    folder, _, _ = corpus
    ds = lmstream.build_pipeline(_args(folder), tokenizer, seed=3, rank=1, world_size=2, max_samples=3)
    loader = lmstream.build_loader(ds, batch_size=4, num_workers=2)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert [len(b["input_ids"]) for b in loader] == [1] == [1] * len(loader)
    with pytest.raises(lmstream.ConfigError, match="max_train_samples=1 leaves"):
        lmstream.build_pipeline(_args(folder), tokenizer, rank=0, world_size=2, max_samples=1)


@pytest.mark.parametrize("mixture", [False, True])
def test_a_new_iterator_continues_where_the_workers_stood(corpus, tmp_path, tokenizer, mixture):
    """3 batches, a new iter() (new worker processes), 3 more: no batch again, each one the uninterrupted
    iterator also gives (each worker goes on from its position; the new iterator starts its round-robin at
    worker 0, so the interleaving differs), for a stream and for a mixture (draws and sources carry over)."""
    import json as _json
    from conftest import make_docs, write_parquet
    folder, _, _ = corpus
    write_parquet(tmp_path / "other", make_docs(80, seed=5), shards=2)
    kw = {"dataset_mixture": _json.dumps([{"name": folder, "weight": 0.5}, {"name": str(tmp_path / "other"),
                                                                           "weight": 0.5}])}

    def loader():
        args = _args(folder, **(kw if mixture else {}))
        return lmstream.build_loader(lmstream.build_pipeline(args, tokenizer, seed=3), batch_size=2, num_workers=2)
    it = iter(loader())
    straight = [tuple(next(it)["input_ids"].flatten().tolist()) for _ in range(8)]
    twice = loader()
    parts = []
    for _ in range(2):
        it = iter(twice)
        parts += [tuple(next(it)["input_ids"].flatten().tolist()) for _ in range(3)]
    assert len(set(parts)) == 6 and set(parts) <= set(straight)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_drained_loader_accounts_for_every_token_of_the_epoch(tokenizer, workers):
    """After the last batch, the loader's state holds each reader's end of epoch: tokens trained plus the remainders
    dropped add up to every token of every document (with one worker, the final state used to be left out)."""
    from conftest import SAMPLE
    args = lmstream.DataArguments(dataset_name=SAMPLE, dataset_config_name="python-docs", dataset_block_size=128,
                                  dataset_cycle=False, dataset_shuffle=False)
    plan = lmstream.plan_dataset(args)
    from lmstream.corpus.documents import iter_documents
    every = int(lmstream.build_encoder(tokenizer).encode(list(iter_documents(plan, args, shuffle=False)))[1].sum())
    loader = lmstream.build_loader(lmstream.build_pipeline(args, tokenizer), batch_size=4, num_workers=workers)
    trained = sum(int(b["input_ids"].numel()) for b in loader)
    stats = lmstream.merge_stats(loader.state_dict())
    assert stats["tokens"] == trained and stats["tokens"] + stats["tokens_dropped"] == every
