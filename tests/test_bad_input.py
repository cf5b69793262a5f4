"""Mistakes a user can make fail with one sentence naming the thing, exit non-zero, and overwrite nothing."""
import json
import os

import pytest

import lmstream
import lmstream.train as lt
from lmstream.config import ConfigError
from lmstream.corpus.documents import DocumentStream
from conftest import SAMPLE, TINY_MODEL, write_parquet


def _flags(out, *extra, data=("--dataset_name", SAMPLE, "--dataset_config_name", "python-docs")):
    return ["--do_train", *data, "--config_name", TINY_MODEL,
            "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--dataset_block_size", "64", "--save_steps", "2", "--use_cpu", "true", "--report_to", "none",
            "--disable_tqdm", "true", *extra]


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"text": "plain text"}).encode()
    bad = b'{"text": "caf\xe9 au lait \xff"}'
    path.write_bytes(good + b"\n" + bad + b"\n")
    args = lmstream.DataArguments(dataset_name=str(path), dataset_shuffle=False)
    stream = DocumentStream(lmstream.plan_dataset(args), args, 0, 0, 1)
    docs = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
    assert docs == ["plain text", "caf\ufffd au lait \ufffd"]
    assert stream.stats["docs_invalid_utf8"] == 1


def test_empty_shards_and_empty_datasets(tmp_path, tokenizer):
    write_parquet(tmp_path / "d", ["first doc " * 40], shards=1)
    write_parquet(tmp_path / "e", [], shards=1)          # a valid shard with no rows
    (tmp_path / "d" / "empty.jsonl").write_text("")
    args = lmstream.DataArguments(dataset_name=f"{tmp_path / 'd'},{tmp_path / 'e'}", dataset_block_size=16,
                                  dataset_cycle=False)
    assert len(list(lmstream.build_pipeline(args, tokenizer))) > 0   # empty shards add nothing, break nothing
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "zero.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match="zero.parquet' is not a valid Parquet file"):
        lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "z")), tokenizer)
    write_parquet(tmp_path / "blank", ["", "  ", "\n\n"], shards=1)
    ds = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "blank"), dataset_block_size=16), tokenizer)
    with pytest.raises(ConfigError, match="no complete block of 16 tokens"):
        next(iter(ds))


def test_batch_size_zero(tmp_path):
    assert lt.main(_flags(tmp_path / "a", "--per_device_train_batch_size", "0")) == 2
    with pytest.raises(ConfigError, match="per_device_train_batch_size=0 must be at least 1"):
        lt.train(*lt.parse_args(_flags(tmp_path / "b", "--per_device_train_batch_size", "0")))


def test_checkpoint_from_another_dataset_or_block_size_is_refused(tmp_path):
    out = tmp_path / "run"
    lt.train(*lt.parse_args(_flags(out)))
    before = sorted(os.listdir(out))
    ckpt = str(out / "checkpoint-2")
    with pytest.raises(ConfigError, match="other data settings.*block_size"):
        lt.train(*lt.parse_args(_flags(out, "--dataset_block_size", "32", "--resume_from_checkpoint", ckpt,
                                       "--max_steps", "4")))
    write_parquet(tmp_path / "other", ["another dataset " * 50] * 20, shards=2)
    with pytest.raises(ConfigError, match="other data settings.*shards"):
        lt.train(*lt.parse_args(_flags(out, "--resume_from_checkpoint", ckpt, "--max_steps", "4",
                                       data=("--dataset_name", str(tmp_path / "other")))))
    assert sorted(os.listdir(out)) == before   # nothing written
