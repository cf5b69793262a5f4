import glob

import pyarrow.parquet as pq
import pytest

from lmstream.config import ConfigError
from lmstream.tokenize import build_encoder
from conftest import SAMPLE, make_docs


def _sample_texts():
    return [t for f in sorted(glob.glob(f"{SAMPLE}/data/*/*.parquet")) for t in pq.read_table(f).column("text").to_pylist()]


def test_tiktoken_path_is_identical_to_the_hf_tokenizer_on_a_real_corpus(tokenizer):
    enc = build_encoder(tokenizer)
    assert enc.backend == "tiktoken"
    texts = _sample_texts() + make_docs(50) + ["<|endoftext|> inside a text", "  leading spaces\r\n\r\n", "x" * 5000]
    assert enc.encode_lists(texts) == tokenizer(texts, verbose=False)["input_ids"]


def test_eos_after_every_document(tokenizer):
    for use_tiktoken in (True, False):
        enc = build_encoder(tokenizer, use_tiktoken=use_tiktoken)
        ids, lengths = enc.encode(["hello world", "a", "second document here"])
        ends = lengths.cumsum() - 1
        assert (ids[ends] == tokenizer.eos_token_id).all()
        assert (ids == tokenizer.eos_token_id).sum() == 3
        assert lengths.sum() == len(ids)


def test_tokenizer_without_eos_is_refused(tokenizer):
    import copy
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = None
    with pytest.raises(ConfigError, match="has no eos_token"):
        build_encoder(tok)


def test_long_documents_are_encoded_in_pieces_with_identical_ids(tokenizer, monkeypatch):
    import lmstream.tokenize as T
    monkeypatch.setattr(T, "CHUNK_CHARS", 3000)
    text = " ".join(make_docs(400, seed=4)) + " end\n\n  x  y\tz" + "a" * 70000 + " tail"
    texts = [text, "short", text[:2500], "ends with eos<|endoftext|>"]
    enc = build_encoder(tokenizer)
    ids, lengths = enc.encode(texts)
    expected = [tokenizer(t, verbose=False)["input_ids"] for t in texts]
    expected = [e if e[-1] == tokenizer.eos_token_id else e + [tokenizer.eos_token_id] for e in expected]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [t for e in expected for t in e]
