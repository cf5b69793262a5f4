"""Logical readers (lmstream.stream.logical): each optimizer step trains on the same set of blocks whatever the
processes, DataLoader workers, batch size and gradient accumulation that make up the same global batch, fresh or
resumed on another topology, inside a shuffle window and across an epoch boundary, for a plain stream and a
mixture with a schedule."""
import dataclasses
import json
import logging
import os

import pytest
import torch

import lmstream
from conftest import BLOCK, account, check_once, make_docs, write_parquet
from lmstream.errors import ConfigError
from lmstream.stream.logical import default_readers, logical_readers_of, serving_workers
from lmstream.training.resume import readers_to_resume
from lmstream.stream.serving import LogicalLoader

READERS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Small enough that every logical reader starts its second epoch within the steps compared."""
    root = tmp_path_factory.mktemp("logical")
    write_parquet(root / "web", [f"web {d}" for d in make_docs(16, seed=3)], shards=4, rows_per_group=4)
    write_parquet(root / "code", [f"code {d}" for d in make_docs(24, seed=4)], shards=2, rows_per_group=6)
    return str(root / "web"), str(root / "code")


def _args(data, mixture: bool, **kw):
    web, code = data
    if mixture:
        spec = [{"name": web, "weight": 0.6}, {"name": code, "weight": 0.4}]
        kw.update(dataset_mixture=json.dumps(spec),
                  dataset_mixture_schedule=json.dumps([{"step": 0, "weights": [0.9, 0.1]},
                                                               {"step": 8, "weights": [0.1, 0.9]}]))
    else:
        kw.update(dataset_name=web)
    return lmstream.DataArguments(dataset_block_size=32, dataset_shuffle_buffer=5, dataset_logical_readers=READERS,
                                  **kw)


def _steps(args, tokenizer, world, batch, accum, workers, steps, states=None):
    """{step: sorted blocks of that optimizer step over every rank} and every rank's state after them."""
    loaders = []
    for rank in range(world):
        ds = lmstream.build_pipeline(args, tokenizer, seed=7, rank=rank, world_size=world)
        ds.set_batches(batch, accum)
        loader = lmstream.build_loader(ds, batch, workers)
        if states is not None:
            loader.place(states)
        loaders.append(loader)
    its = [iter(lo) for lo in loaders]
    out = {}
    for s in range(steps):
        blocks = []
        for it in its:
            for _ in range(accum):
                blocks += [tuple(row) for row in next(it)["input_ids"].tolist()]
        out[s] = sorted(blocks)
    states = [lo.state_dict() for lo in loaders]
    del its
    return out, states


@pytest.mark.parametrize("mixture", [False, True], ids=["plain", "mixture"])
def test_every_step_trains_on_the_same_blocks_on_any_topology(data, tokenizer, mixture):
    args = _args(data, mixture)
    # global batch 4 blocks: 2 processes x 2 workers x batch 2 (the straight run)
    straight, _ = _steps(args, tokenizer, 2, 2, 1, 2, 24)
    _, at3 = _steps(args, tokenizer, 2, 2, 1, 2, 3)
    readers = [st for s in at3 for st in s["readers"]]
    assert len(readers) == READERS
    # the checkpoint lies inside shuffle windows, not at their starts
    inner = [st for st in readers if "mixture_n" not in st and (st["doc"] or st["token"])]
    inner += [src for st in readers if "mixture_n" in st for src in st["sources"] if src["doc"] or src["token"]]
    assert inner
    topologies = {"1x4 (accumulation 2)": (1, 2, 2, 2), "1x4": (1, 4, 1, 4), "4x1": (4, 1, 1, 1),
                  "1x0": (1, 2, 2, 0), "2x0": (2, 1, 2, 0)}
    for name, (world, batch, accum, workers) in topologies.items():
        fresh, _ = _steps(args, tokenizer, world, batch, accum, workers, 5)
        assert [fresh[s] for s in range(5)] == [straight[s] for s in range(5)], name
        resumed, end = _steps(args, tokenizer, world, batch, accum, workers, 21, at3)
        assert [resumed[s] for s in range(21)] == [straight[3 + s] for s in range(21)], name
    # the steps compared cross epoch boundaries: readers are in their second epoch or later by the end
    epochs = [st["epoch"] for s in end for st in lmstream.reader_states(s)]
    assert max(epochs) >= 1, epochs


def test_within_a_step_blocks_go_to_ranks_and_micro_batches_in_the_global_order(data, tokenizer):
    """Rank r of W takes the step's blocks r, r + W, ...; its micro-batches take them B at a time: one process
    with the whole global batch sees the same blocks in that order."""
    args = _args(data, False)
    whole = lmstream.build_pipeline(args, tokenizer, seed=7, rank=0, world_size=1)
    one = [row for b in _take(lmstream.build_loader(whole, 4, 0), 3) for row in b]
    per_rank = []
    for rank in range(2):
        ds = lmstream.build_pipeline(args, tokenizer, seed=7, rank=rank, world_size=2)
        per_rank.append([row for b in _take(lmstream.build_loader(ds, 1, 2), 6) for row in b])
    assert per_rank[0] == one[0::2] and per_rank[1] == one[1::2]


def _take(loader, n):
    it = iter(loader)
    return [next(it)["input_ids"].tolist() for _ in range(n)]


def test_a_loop_saved_between_micro_batches_resumes_exactly(data, tokenizer):
    args = _args(data, False)
    ds = lmstream.build_pipeline(args, tokenizer, seed=7, rank=0, world_size=1)
    loader = lmstream.build_loader(ds, 3, 2)
    it = iter(loader)
    for _ in range(2):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    rest = [next(it)["input_ids"].tolist() for _ in range(4)]
    again = lmstream.build_loader(lmstream.build_pipeline(args, tokenizer, seed=7, rank=0, world_size=1), 3, 0)
    again.load_state_dict(state)
    assert _take(again, 4) == rest


def test_the_default_and_the_workers_that_serve_it(caplog):
    assert default_readers(12, 1) == 8 and default_readers(100_000, 8) == 256 and default_readers(1, 1) == 1
    assert default_readers(100_000, 3) == 768 and default_readers(5, 2) == 4
    assert serving_workers(64, 8, 8) == 8 and serving_workers(64, 8, 3) == 2 and serving_workers(8, 1, 0) == 0
    with pytest.raises(ConfigError, match="dataset_logical_readers=8 cannot be split evenly between 3 processes: "
                                          "use a multiple of 3"):
        serving_workers(8, 3, 1)


def test_fewer_workers_serve_unevenly_divided_readers_with_a_warning(data, tokenizer, caplog):
    args = _args(data, False)
    ds = lmstream.build_pipeline(args, tokenizer, seed=7, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="lmstream"):
        loader = lmstream.build_loader(ds, 2, 3)
    assert isinstance(loader, LogicalLoader) and loader.num_workers == 2
    assert "dataloader_num_workers=3 serves the 4 logical readers of this process unevenly: 2 worker(s)" in caplog.text
    straight, _ = _steps(args, tokenizer, 1, 2, 1, 0, 4)
    assert [sorted(tuple(r) for r in b) for b in _take(loader, 4)] == [straight[s] for s in range(4)]


def test_what_logical_readers_refuse_in_one_sentence(data, tokenizer):
    with pytest.raises(ConfigError, match="cannot be split evenly between 3 processes"):
        lmstream.build_pipeline(_args(data, False), tokenizer, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="dataset_logical_readers serves a training stream that cycles its epochs: "
                                          "drop --max_train_samples"):
        lmstream.build_pipeline(_args(data, False), tokenizer, rank=0, world_size=1, max_samples=10)
    with pytest.raises(ConfigError, match="dataset_logical_readers=-1 must be a finite number, 0 or more"):
        lmstream.DataArguments(dataset_name=data[0], dataset_logical_readers=-1)
    ds = lmstream.build_pipeline(_args(data, False), tokenizer, seed=7, rank=0, world_size=1)
    _, states = _steps(_args(data, False), tokenizer, 1, 2, 1, 0, 2)
    states[0]["readers"][1]["stats"]["blocks"] += 1
    with pytest.raises(ConfigError, match="logical reader 1 made 2 blocks where its global position \\(4 blocks\\) "
                                          "needs 1: resume from another checkpoint"):
        lmstream.build_loader(ds, 2, 0).place(states)
    other = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=data[0], dataset_block_size=32,
                                                           dataset_logical_readers=2), tokenizer, rank=0, world_size=1)
    with pytest.raises(ConfigError, match="saved with 4 logical readers, this run asks 2"):
        lmstream.build_loader(other, 2, 0).place(states)


def test_a_topology_that_cannot_serve_the_readers_falls_back_to_the_elastic_resume(corpus, tokenizer, tmp_path,
                                                                                   caplog):
    """A checkpoint of 4 logical readers resumed by 3 processes: the job says so and resumes elastically (one
    reader per process and worker); within the epoch every document is trained on once."""
    folder, lengths, owner = corpus
    logical = lmstream.DataArguments(dataset_name=folder, dataset_block_size=BLOCK, dataset_shuffle_buffer=5,
                                     dataset_logical_readers=4)
    loader = lmstream.build_loader(lmstream.build_pipeline(logical, tokenizer, seed=3, rank=0, world_size=1), 2, 2)
    it = iter(loader)
    before = [next(it)["input_ids"] for _ in range(7)]
    saved = [json.loads(json.dumps(loader.state_dict()))]
    del it
    os.makedirs(tmp_path / "checkpoint-7" / "lmstream_data")
    (tmp_path / "checkpoint-7" / "lmstream_data" / "rank-0.json").write_text(json.dumps(saved[0]))
    with caplog.at_level(logging.WARNING, logger="lmstream"):
        args, auto = readers_to_resume(str(tmp_path / "checkpoint-7"), dataclasses.replace(logical,
                                       dataset_logical_readers=None), 3)
    assert (args.dataset_logical_readers, auto) == (0, False)
    assert "the checkpoint's 4 logical readers cannot be split evenly between 3 processes" in caplog.text
    with pytest.raises(ConfigError, match="was saved with dataset_logical_readers=4, this run asks 8: a run keeps "
                                          "its readers"):
        readers_to_resume(str(tmp_path / "checkpoint-7"), dataclasses.replace(logical, dataset_logical_readers=8), 1)
    after = []
    for rank in range(3):
        ds = lmstream.build_pipeline(dataclasses.replace(args, dataset_cycle=False), tokenizer, seed=3, rank=rank,
                                     world_size=3)
        ds.resume_elastic(saved, 1)
        after += [b["input_ids"] for b in lmstream.build_loader(ds, 2, 1)]
    # logical readers started epoch 0 with 4 readers; the rest of it on 3
    check_once(account(before + after, lengths, owner), lengths, 4 + 3)


def test_a_new_run_chooses_its_readers_and_an_old_checkpoint_keeps_its_path(corpus, tokenizer, tmp_path):
    folder = corpus[0]
    fresh = lmstream.DataArguments(dataset_name=folder, dataset_block_size=BLOCK)
    assert readers_to_resume(None, fresh, 2) == (fresh, True)
    ds = lmstream.build_pipeline(fresh, tokenizer, rank=0, world_size=1, auto_readers=True)
    assert ds.readers == 8   # 3 shards of 20 documents in 4-row groups: 15 row groups
    old = lmstream.build_loader(lmstream.build_pipeline(fresh, tokenizer, rank=0, world_size=1), 2, 0)
    next(iter(old))
    os.makedirs(tmp_path / "checkpoint-1" / "lmstream_data")
    (tmp_path / "checkpoint-1" / "lmstream_data" / "rank-0.json").write_text(json.dumps(old.state_dict()))
    args, auto = readers_to_resume(str(tmp_path / "checkpoint-1"), fresh, 4)
    assert (args.dataset_logical_readers, auto) == (0, False)
    with pytest.raises(ConfigError, match="saved with dataset_logical_readers=0, this run asks 4"):
        readers_to_resume(str(tmp_path / "checkpoint-1"), dataclasses.replace(fresh, dataset_logical_readers=4), 1)


@pytest.mark.parametrize("kw", [{"dataset_group_text": False, "dataset_max_seq_length": 48},
                                {"dataset_document_attention": "isolated"}], ids=["padded", "isolated"])
def test_workers_and_one_process_hand_out_the_same_tensors(data, tokenizer, kw):
    """Padded documents (labels -100 at the padding, an attention mask) and isolated documents (position_ids): the
    batches that workers send are the batches made in one process, key for key."""
    args = _args(data, False, **kw)
    a, b = (iter(lmstream.build_loader(lmstream.build_pipeline(args, tokenizer, seed=7, rank=0, world_size=1), 3, w))
            for w in (2, 0))
    for _ in range(6):
        x, y = next(a), next(b)
        assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x), sorted(x)
    assert ("attention_mask" in x) == ("dataset_group_text" in kw) and ("position_ids" in x) != ("dataset_group_text" in kw)
