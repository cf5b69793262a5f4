"""Data positions saved by an earlier lmstream (format 2, tests/fixtures/state_v2, written by make_state_v2.py with
that code) resume with this one exactly: the samples that follow are the ones the saving run produced."""
import hashlib
import json
import os

import pytest

from lmstream import DataArguments
from lmstream import build_loader, build_pipeline

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "state_v2")


def _cases() -> dict:
    with open(os.path.join(HERE, "cases.json")) as f:
        return json.loads(f.read().replace("@HERE@", HERE))


def _digest(ids) -> str:
    return hashlib.sha1(ids.numpy().tobytes()).hexdigest()[:16]


def _args(case) -> DataArguments:
    data = case["data"]
    if isinstance(data, str):
        return DataArguments(dataset_name=os.path.join(HERE, data), dataset_block_size=32, dataset_shuffle_buffer=8)
    mix = [{"name": os.path.join(HERE, name), "weight": w} for name, w in data]
    return DataArguments(dataset_mixture=json.dumps(mix), dataset_block_size=32, dataset_shuffle_buffer=8)


@pytest.mark.parametrize("name", ["mixture", "elastic"])
def test_an_old_reader_state_resumes_exactly(name, tokenizer):
    case = _cases()[name]
    blocks = build_pipeline(_args(case), tokenizer, seed=case["seed"], rank=0, world_size=1)
    blocks.load_state_dict(case["state"])
    it = iter(blocks)
    assert [_digest(next(it)["input_ids"]) for _ in case["next"]] == case["next"]


def test_an_old_loader_state_with_workers_resumes_exactly(tokenizer):
    case = _cases()["workers"]
    blocks = build_pipeline(_args(case), tokenizer, seed=case["seed"], rank=0, world_size=1)
    loader = build_loader(blocks, case["batch_size"], num_workers=case["workers"])
    loader.load_state_dict(case["state"])
    got = [_digest(row) for batch, _ in zip(loader, range(len(case["next"]) // case["batch_size"]))
           for row in batch["input_ids"]]
    assert got == case["next"]
