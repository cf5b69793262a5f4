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


CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "checkpoint_v3")


def test_a_checkpoint_written_before_the_wings_resumes_exactly(tmp_path, monkeypatch):
    """tests/fixtures/checkpoint_v3 (make_checkpoint_v3.py, written by the flat package): the job resumed from it
    trains steps 5-8 on the very batches its run did. The data and the checkpoint are copied elsewhere first: a
    checkpoint names its data by content, not by where it lay."""
    import shutil
    from transformers import AutoConfig, AutoModelForCausalLM
    from conftest import TINY_MODEL, train_recording
    with open(os.path.join(CHECKPOINT, "cases.json")) as f:
        case = json.load(f)
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(os.path.join(os.path.dirname(CHECKPOINT), "state_v2", "web"), data)
    shutil.copytree(os.path.join(CHECKPOINT, "out"), out)
    config = AutoConfig.from_pretrained(TINY_MODEL)
    config.update_from_string(case["small"])
    AutoModelForCausalLM.from_config(config).save_pretrained(out / "checkpoint-4")  # weights are not the point
    argv = [{"@DATA@": str(data), "@OUT@": str(out), "@TINY@": TINY_MODEL}.get(a, a) for a in case["argv"]]
    batches, _ = train_recording([*argv, "--resume_from_checkpoint", "true"], monkeypatch)
    assert [[_digest(row) for row in b] for b in batches] == case["after"]
