"""Elastic resume: a data position saved by W ranks x K workers continues on W' x K' readers with every
document of the epoch trained on exactly once (token accounting), and exactly again on the same shape."""
import collections
import json

import pytest
import torch

import lmstream
from conftest import BLOCK, account, check_once, corpus_job_argv as _job_argv, train_recording, word_tokens
from lmstream.config import ConfigError


@pytest.fixture(scope="module")
def few_pieces(corpus, tmp_path_factory):
    """The same documents in one Parquet file of 2 row groups: fewer pieces than readers (row strides)."""
    import pyarrow.parquet as pq
    from conftest import write_parquet
    folder, lengths, owner = corpus
    docs = [t for f in sorted(__import__("glob").glob(folder + "/*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    out = tmp_path_factory.mktemp("few") / "pq"
    write_parquet(out, docs, shards=1, rows_per_group=30)
    return str(out), lengths, owner


def _args(folder, **kw):
    kw = {"dataset_block_size": BLOCK, "dataset_shuffle_buffer": 5, "dataset_cycle": False, **kw}
    return lmstream.DataArguments(dataset_name=folder, **kw)


def _loaders(folder, tokenizer, world, workers, batch=2, resume=None, max_samples=None, **kw):
    loaders = []
    for rank in range(world):
        ds = lmstream.build_pipeline(_args(folder, **kw), tokenizer, seed=3, rank=rank, world_size=world,
                                     max_samples=max_samples)
        if resume is not None:
            ds.resume_elastic(resume, workers)
        loaders.append(lmstream.build_loader(ds, batch_size=batch, num_workers=workers))
    return loaders


def _take(loaders, n):
    """n batches from each rank's loader; returns (token tensors, each rank's loader state)."""
    out, states = [], []
    for loader in loaders:
        it = iter(loader)
        for _ in range(n):
            out.append(next(it)["input_ids"])
        states.append(loader.state_dict())
    return out, states


def _drain(loaders):
    out, stats = [], []
    for loader in loaders:
        for b in loader:
            out.append(b["input_ids"])
        stats.append(lmstream.merge_stats(loader.state_dict()))
    return out, stats


@pytest.mark.parametrize("old,new,steps", [((2, 2), (1, 0), 3), ((1, 2), (2, 2), 4), ((2, 0), (3, 1), 5),
                                           ((1, 0), (2, 0), 7)])
def test_elastic_resume_trains_every_document_once(corpus, tokenizer, old, new, steps):
    folder, lengths, owner = corpus
    before, states = _take(_loaders(folder, tokenizer, *old), steps)
    inside = [st for st in lmstream.stream.state.reader_states(states) if st["token"] > 0]
    after, stats = _drain(_loaders(folder, tokenizer, *new, resume=states))
    check_once(account(before + after, lengths, owner), lengths, readers=new[0] * max(1, new[1]))
    assert sum(s["docs"] for s in stats) >= len(lengths) - len(stats) * max(1, new[1])
    if old == (1, 0):
        assert inside, "the test should cut a document at the resume point"


def test_elastic_twice_then_exact_on_the_same_shape(corpus, tokenizer):
    """2x1 -> 1x2 -> 3x0 in one epoch; then a save/resume on 3x0 is bitwise exact."""
    folder, lengths, owner = corpus
    a, s1 = _take(_loaders(folder, tokenizer, 2, 1), 3)
    b, s2 = _take(_loaders(folder, tokenizer, 1, 2, resume=s1), 4)
    # both readers of the 1x2 run hold items that are the rest of other readers' windows
    assert any('"w"' in json.dumps(st["items"]) for st in lmstream.stream.state.reader_states(s2))
    c, s3 = _take(_loaders(folder, tokenizer, 3, 0, resume=s2), 2)
    # same shape: the exact path, straight vs resumed
    straight, _ = _drain(_resumed_exact(folder, tokenizer, s3))
    again, _ = _drain(_resumed_exact(folder, tokenizer, s3))
    assert len(straight) == len(again) and all(torch.equal(x, y) for x, y in zip(straight, again))
    counts = account(a + b + c + straight, lengths, owner)
    check_once(counts, lengths, readers=3)


def _resumed_exact(folder, tokenizer, states):
    loaders = []
    for rank, st in enumerate(states):
        ds = lmstream.build_pipeline(_args(folder), tokenizer, seed=3, rank=rank, world_size=len(states))
        loader = lmstream.build_loader(ds, batch_size=2, num_workers=0)
        loader.load_state_dict(st)
        loaders.append(loader)
    return loaders


def test_elastic_resume_across_epochs_owes_the_later_epoch(corpus, tokenizer):
    """Readers in different epochs (one cycled already): the new readers finish epoch 0's rest, then
    epoch 1's rest, each document once per epoch; then epoch 2 starts for everyone."""
    folder, lengths, owner = corpus
    olds = [lmstream.build_pipeline(_args(folder, dataset_cycle=True), tokenizer, seed=3, rank=r, world_size=3)
            for r in range(3)]
    its = [iter(ds) for ds in olds]
    old_epoch = collections.defaultdict(list)   # epoch -> samples the old readers trained on in it

    def step(r):
        sample = next(its[r])["input_ids"]
        old_epoch[olds[r].state_dict()["epoch"] if olds[r].state_dict()["samples_in_epoch"] else None].append(sample)
    while olds[0].state_dict()["epoch"] == 0:   # reader 0 into epoch 1, the others behind
        step(0)
    for _ in range(3):
        step(0)
    for r in (1, 2):
        for _ in range(2):
            step(r)
    states = [ds.state_dict() for ds in olds]
    assert [st["epoch"] for st in states] == [1, 0, 0] and None not in old_epoch
    new_epoch = collections.defaultdict(list)
    for r in range(2):
        ds = lmstream.build_pipeline(_args(folder, dataset_cycle=True), tokenizer, seed=3, rank=r, world_size=2)
        ds.resume_elastic(states, 0)
        for sample in ds:
            epoch = ds.state_dict()["epoch"]
            if epoch == 2:
                break
            new_epoch[epoch].append(sample["input_ids"])
    for epoch in (0, 1):   # at most 3 readers end each epoch
        check_once(account(old_epoch[epoch] + new_epoch[epoch], lengths, owner), lengths, readers=3)


def test_elastic_refuses_other_settings_and_incomplete_checkpoints(corpus, tokenizer):
    folder, _, _ = corpus
    _, states = _take(_loaders(folder, tokenizer, 2, 0), 2)
    other = lmstream.build_pipeline(_args(folder, dataset_shuffle_buffer=7), tokenizer, seed=3, rank=0, world_size=1)
    with pytest.raises(ConfigError, match="other data settings"):
        other.resume_elastic(states, 0)
    ds = lmstream.build_pipeline(_args(folder), tokenizer, seed=3, rank=0, world_size=1)
    with pytest.raises(ConfigError, match="exactly once"):
        ds.resume_elastic(states[:1], 0)


# -- through the training job ---------------------------------------------------------------------
def test_training_job_resumes_elastically_from_two_workers_to_none(corpus, tmp_path, monkeypatch, caplog):
    """Stopped after 4 steps with 2 DataLoader workers, resumed in-process: the first epoch ends with
    every document trained on once (tokens counted from the batches the model saw)."""
    import lmstream.train as lt
    from lmstream.training.trainer import StreamingTrainer
    folder, lengths, owner = corpus
    out = tmp_path / "run"
    first, _ = train_recording(_job_argv(folder, out, 200, 2), monkeypatch, stop_at=4)
    assert len(first) == 4
    seen, epochs = [], []
    orig = StreamingTrainer.training_step

    def step(self, model, inputs, *a, **k):
        seen.append(inputs["input_ids"].detach().cpu().clone())
        epochs.append(self.train_dataset.state_dict()["epoch"])   # in-process: the state after this batch
        return orig(self, model, inputs, *a, **k)
    monkeypatch.setattr(StreamingTrainer, "training_step", step)
    with caplog.at_level("WARNING", logger="lmstream"):
        lt.train(*lt.parse_args(_job_argv(folder, out, 100, 0, "--resume_from_checkpoint", "true")))
    assert "Elastic resume" in caplog.text and "1 process(es) x 2 worker(s)" in caplog.text
    # a batch belongs to the epoch the stream was in before it was drawn (the end of an epoch is
    # published when the next batch is asked for, after the epoch's last, possibly partial, batch)
    epoch0 = [b for b, e in zip(seen, [0] + epochs[:-1]) if e == 0]
    assert 0 < len(epoch0) < len(seen)   # the run went on into epoch 1
    check_once(account(first + epoch0, lengths, owner), lengths, readers=1)


def test_mixture_resumes_elastically_without_repeating_a_document(corpus, tmp_path, tokenizer):
    """Two sources (the corpus and a second one of other words): 2 ranks -> 1 rank x 2 workers; the
    mixture stops when a source runs out (no cycling); no document of either source twice."""
    import json
    from conftest import write_parquet
    folder, lengths, owner = corpus
    words = [w for w, _ in word_tokens(tokenizer, 120)[60:]]
    second = tmp_path / "second"
    write_parquet(second, [" " + " ".join([w] * 50) for w in words], shards=2, rows_per_group=5)
    owner2 = {tokenizer.encode(" " + w)[0]: 100 + i for i, w in enumerate(words)}
    lengths2 = {100 + i: 50 for i in range(len(words))}
    mix = json.dumps([{"name": folder, "weight": 0.6, "on_exhausted": "stop"},
                      {"name": str(second), "weight": 0.4, "on_exhausted": "stop"}])

    def loaders(world, workers, resume=None):
        out = []
        for rank in range(world):
            ds = lmstream.build_pipeline(_args(None, dataset_mixture=mix), tokenizer, seed=3, rank=rank,
                                         world_size=world)
            if resume is not None:
                ds.resume_elastic(resume, workers)
            out.append(lmstream.build_loader(ds, batch_size=2, num_workers=workers))
        return out
    before, states = _take(loaders(2, 0), 6)
    after, stats = _drain(loaders(1, 2, resume=states))
    counts = account(before + after, {**lengths, **lengths2}, {**owner, **owner2})
    assert all(counts[d] <= n for d, n in {**lengths, **lengths2}.items())
    assert sum(1 for d in lengths if counts[d]) > 20 and sum(1 for d in lengths2 if counts[d]) > 20
    assert stats[0]["tokens/" + folder] > 0 and stats[0]["tokens/" + str(second)] > 0


def test_elastic_resume_of_a_sized_stream_keeps_the_epoch_size(corpus, tokenizer):
    """max_samples 30 per epoch on 2 ranks (15 each) -> 1 rank x 2 workers: the epoch still has 30 samples."""
    folder, lengths, owner = corpus
    before, states = _take(_loaders(folder, tokenizer, 2, 0, max_samples=30), 4)
    assert sum(len(b) for b in before) == 16
    news = []
    for rank in range(1):
        ds = lmstream.build_pipeline(_args(folder), tokenizer, seed=3, rank=0, world_size=1, max_samples=30)
        ds.resume_elastic(states, 2)
        news.append(lmstream.build_loader(ds, batch_size=2, num_workers=2))
    after, _ = _drain(news)
    assert sum(len(b) for b in after) == 30 - 16
    counts = account(before + after, lengths, owner)
    assert all(counts[d] <= n for d, n in lengths.items())


@pytest.mark.parametrize("old,new", [((3, 0), (1, 0)), ((1, 2), (2, 2)), ((1, 0), (2, 2))])
def test_elastic_resume_with_fewer_pieces_than_readers(few_pieces, tokenizer, old, new):
    """Old readers split row groups by stride, or the new ones must: still every document once."""
    folder, lengths, owner = few_pieces
    before, states = _take(_loaders(folder, tokenizer, *old), 3)
    after, _ = _drain(_loaders(folder, tokenizer, *new, resume=states))
    check_once(account(before + after, lengths, owner), lengths, readers=new[0] * max(1, new[1]))
