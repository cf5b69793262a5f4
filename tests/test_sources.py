"""Every kind of source yields the same documents; user mistakes fail with one clear sentence."""
import os

import pytest
import torch

import lmstream
from lmstream.config import ConfigError
from lmstream.corpus.documents import iter_documents
from lmstream.corpus.plan import plan_pieces
from lmstream.corpus.sources import resolve_shards
from conftest import SAMPLE, make_docs, write_jsonl, write_parquet
from httpserver import FileServer


def _docs(name, config=None, field="text", **kw):
    args = lmstream.DataArguments(dataset_name=name, dataset_config_name=config, dataset_text_field=field,
                                  dataset_shuffle=False, **kw)
    plan = plan_pieces(resolve_shards(name, config), field)
    return list(iter_documents(plan, args))


def test_local_repository_with_readme_config():
    shards = resolve_shards(SAMPLE, "python-docs", "train")
    assert len(shards) == 4 and all(s.format == "parquet" for s in shards)
    docs = _docs(SAMPLE, "python-docs")
    assert len(docs) == 96 and all(len(d) > 1000 for d in docs)


def test_parquet_glob_directory_jsonl_variants_text_and_commas(tmp_path):
    docs = make_docs(60, seed=5)
    write_parquet(tmp_path / "pq", docs, shards=3)
    assert _docs(str(tmp_path / "pq" / "*.parquet")) == docs
    assert _docs(str(tmp_path / "pq")) == docs
    for comp, ext in ((None, ".jsonl"), ("gz", ".jsonl.gz"), ("zst", ".jsonl.zst")):
        path = write_jsonl(str(tmp_path / f"d{ext}"), docs, field="content", compress=comp)
        assert _docs(path, field="content") == docs, ext
    a, b = str(tmp_path / "pq" / "part-000.parquet"), write_jsonl(str(tmp_path / "x.jsonl.gz"), ["extra doc"], compress="gz")
    assert _docs(f"{b},{a}") == ["extra doc"] + docs[:20]
    (tmp_path / "t.txt").write_text("para one\nstill one\n\npara two\n")
    assert _docs(str(tmp_path / "t.txt"), dataset_text_sample_by="paragraph") == ["para one\nstill one\n", "para two\n"]
    assert _docs(str(tmp_path / "t.txt"), dataset_text_sample_by="line") == ["para one", "still one", "para two"]


def test_http_parquet_gives_the_same_blocks_as_local_files(tmp_path, tokenizer):
    docs = make_docs(120, seed=6)
    paths = write_parquet(tmp_path / "srv", docs, shards=2, rows_per_group=10)
    with FileServer(str(tmp_path / "srv")) as url:
        urls = ",".join(f"{url}/{os.path.basename(p)}" for p in paths)
        assert _docs(urls) == docs
        args = lmstream.DataArguments(dataset_name=urls, dataset_block_size=16)
        remote = [b["input_ids"] for _, b in zip(range(30), lmstream.build_pipeline(args, tokenizer))]
    local = lmstream.DataArguments(dataset_name=",".join(paths), dataset_block_size=16)
    local_blocks = [b["input_ids"] for _, b in zip(range(30), lmstream.build_pipeline(local, tokenizer))]
    assert len(remote) == 30 and all(torch.equal(a, b) for a, b in zip(remote, local_blocks))


def test_http_requests_use_ranges_not_whole_files(tmp_path):
    docs = make_docs(400, seed=7)
    paths = write_parquet(tmp_path / "srv", docs, shards=1, rows_per_group=50)
    server = FileServer(str(tmp_path / "srv"))
    with server as url:
        assert _docs(f"{url}/{os.path.basename(paths[0])}") == docs
    gets = [r for cmd, _, r, _ in server.httpd.requests if cmd == "GET"]
    assert gets and all(r and r.startswith("bytes=") for r in gets)


def test_errors_name_the_thing(tmp_path, tokenizer, monkeypatch):
    with pytest.raises(ConfigError, match="No file matches dataset_name .*nothing-\\*.parquet"):
        resolve_shards(str(tmp_path / "nothing-*.parquet"))
    with pytest.raises(ConfigError, match="dataset_name .* does not exist"):
        resolve_shards(str(tmp_path / "missing" / "dir"))
    write_parquet(tmp_path / "pq", make_docs(10), shards=1)
    with pytest.raises(ConfigError, match="has no column 'body' \\(columns: text, id\\)"):
        lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "pq"), dataset_text_field="body"), tokenizer)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(ConfigError, match="broken.parquet' is not a valid Parquet file"):
        lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "bad")), tokenizer)
    with pytest.raises(ConfigError, match="has no split 'validation'"):
        resolve_shards(SAMPLE, "python-docs", "validation")
    with pytest.raises(ConfigError, match="is not a config of dataset"):
        resolve_shards(SAMPLE, "no-such-config", "train")
    with pytest.raises(ConfigError, match="Could not reach dataset 'HuggingFaceFW/fineweb'.*pass a local"):
        resolve_shards("HuggingFaceFW/fineweb", "CC-MAIN-2024-10")
    with pytest.raises(ConfigError, match="dataset_block_size=1 is too small"):
        lmstream.DataArguments(dataset_name="x", dataset_block_size=1)
    args = lmstream.DataArguments(dataset_name=str(tmp_path / "pq"), dataset_block_size=512)
    with pytest.raises(ConfigError, match="larger than the model's 256 positions"):
        lmstream.build_pipeline(args, tokenizer, max_positions=256)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ConfigError, match="Line 2 of .*bad.jsonl' is not valid JSON"):
        _docs(str(tmp_path / "bad.jsonl"))


def test_state_from_another_dataset_or_topology_is_refused(tmp_path, tokenizer):
    write_parquet(tmp_path / "a", make_docs(80, seed=1), shards=2)
    write_parquet(tmp_path / "b", make_docs(80, seed=2), shards=3)
    a = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "a"), dataset_block_size=16), tokenizer)
    next(iter(a))
    state = a.state_dict()
    b = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "b"), dataset_block_size=16), tokenizer)
    with pytest.raises(ConfigError, match="saved with other data settings"):
        b.load_state_dict(state)
    other_block = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "a"), dataset_block_size=32), tokenizer)
    with pytest.raises(ConfigError, match="block_size"):
        other_block.load_state_dict(state)
    two = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "a"), dataset_block_size=16),
                                  tokenizer, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="rank 0 of 1, not rank 0 of 2"):
        two.load_state_dict(state)


def test_a_dataset_too_small_for_a_block_says_so(tmp_path, tokenizer):
    write_parquet(tmp_path / "t", ["tiny doc"], shards=1)
    ds = lmstream.build_pipeline(lmstream.DataArguments(dataset_name=str(tmp_path / "t"), dataset_block_size=64), tokenizer)
    with pytest.raises(ConfigError, match="no complete block of 64 tokens"):
        next(iter(ds))
