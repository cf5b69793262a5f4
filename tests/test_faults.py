"""Network faults never lose or duplicate a document: every fault mix reads exactly the fault-free stream."""
import os

import pytest
import torch

import lmstream
from lmstream.config import ConfigError
from lmstream.corpus.documents import DocumentStream
from conftest import make_docs, write_jsonl, write_parquet
from httpserver import FileServer

# random mixes: a read fails 10 times in a row with probability 0.25**10 (about 1e-6)
FAST = dict(dataset_retry_backoff=0.01, dataset_read_timeout=1.0, dataset_max_retries=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("srv")
    docs = make_docs(240, seed=11)
    paths = write_parquet(folder, docs, shards=3, rows_per_group=20)
    write_jsonl(os.path.join(folder, "extra.jsonl.gz"), docs[:50], compress="gz")
    return str(folder), [os.path.basename(p) for p in paths] + ["extra.jsonl.gz"]


def _read(url, names, **kw):
    args = lmstream.DataArguments(dataset_name=",".join(f"{url}/{n}" for n in names), dataset_shuffle_buffer=17,
                                  **{**FAST, **kw})
    plan = lmstream.plan_dataset(args)
    stream = DocumentStream(plan, args, 3, 0, 1)
    docs = [d for w in stream.windows(0, 0, (0, 0)) for d in w.docs]
    return docs, {**stream.stats, "retries": stream.stats["retries"] + plan.stats["retries"]}


@pytest.mark.parametrize("mix", [
    ["reset", "reset", None, "truncate"],
    ["503", "503", "503", None, "429", None, "503"],
    ["stall", None, "stall", "reset", "429"],
    "random",
])
def test_fault_mixes_read_exactly_the_fault_free_documents(served, mix):
    folder, names = served
    with FileServer(folder) as url:
        clean, _ = _read(url, names)
    kwargs = dict(fault_rate=0.25, fault_kinds=("reset", "truncate", "503", "429"), seed=5) if mix == "random" \
        else dict(faults=mix)
    server = FileServer(folder, stall_seconds=1.6, **kwargs)
    with server as url:
        got, stats = _read(url, names)
    assert got == clean                      # no document lost, none duplicated, same order
    assert len(server.faults) >= 3 and stats["retries"] >= 1   # (slow responses under load may add retries)


def test_blocks_under_faults_equal_fault_free_blocks(served, tokenizer):
    folder, names = served
    def blocks(server):
        with server as url:
            args = lmstream.DataArguments(dataset_name=",".join(f"{url}/{n}" for n in names), dataset_block_size=32,
                                          dataset_cycle=False, **FAST)
            return [b["input_ids"] for b in lmstream.build_pipeline(args, tokenizer)]
    clean = blocks(FileServer(folder))
    faulty = blocks(FileServer(folder, fault_rate=0.25, fault_kinds=("reset", "503", "truncate"), seed=9))
    assert len(clean) == len(faulty) and all(torch.equal(a, b) for a, b in zip(clean, faulty))


def test_permanent_errors_fail_at_once_or_skip_when_asked(served):
    folder, names = served
    server = FileServer(folder)
    with server as url:
        with pytest.raises(ConfigError, match="Shard 'http://127.0.0.1:\\d+/missing.parquet' does not exist"):
            _read(url, ["missing.parquet"])
        assert len(server.httpd.requests) <= 2      # not retried
    with FileServer(folder) as url:
        alone = [_read(url, [name])[0] for name in (names[0], "extra.jsonl.gz")]
    with FileServer(folder, faults=["404"]) as url:   # the first body request fails for good
        docs, stats = _read(url, names[:1] + ["extra.jsonl.gz"], dataset_skip_bad_shards=True)
    # the plan reads the Parquet footer and fingerprints the JSON Lines file in parallel: whichever got the 404 is
    # left out, and the other streams whole
    assert docs in alone


def test_giving_up_names_the_url_and_the_last_error(served):
    folder, names = served
    with FileServer(folder, faults=["503"] * 50) as url:
        with pytest.raises(ConfigError, match=f"Gave up on '{url}/{names[0]}' after 3 attempts.*503"):
            _read(url, names[:1], dataset_max_retries=3)


def test_a_missing_line_based_shard_is_skipped_when_asked_or_named(served):
    """The plan fingerprints JSON Lines / text shards too: a 404 there obeys dataset_skip_bad_shards like a footer."""
    folder, names = served
    with FileServer(folder) as url:
        docs, _ = _read(url, names[:1] + ["gone.jsonl.gz"], dataset_skip_bad_shards=True)
        assert docs
        with pytest.raises(ConfigError, match="Shard 'http://127.0.0.1:\\d+/gone.jsonl.gz' does not exist"):
            _read(url, names[:1] + ["gone.jsonl.gz"])
