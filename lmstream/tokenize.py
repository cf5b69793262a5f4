"""Tokens: batched encoding of documents, an EOS token after each one, and a tiktoken fast path.

    enc = build_encoder(tokenizer)
    ids, lengths = enc.encode(["first doc", "second doc"])   # flat int32 ids, tokens per document

GPT-2's tokenizer adds no EOS by itself, so documents would run together once packed; the
encoder appends `eos_token_id` to every document (unless the tokenizer already ended it with one).
When the tokenizer is a GPT-2-style byte-level BPE that tiktoken reproduces id for id, tiktoken's
Rust encoder is used (about 2-3x faster here); otherwise the Hugging Face fast tokenizer.
"""
from __future__ import annotations

import itertools
import json
import logging

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

# GPT-2's pre-tokenizer split (the regex of the ByteLevel pre-tokenizer)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CHUNK_CHARS = 1 << 20   # documents longer than this are encoded in pieces (tiktoken path)
_SAFE_CUT = None
_SELF_CHECK = ("Hello world! It's 2026: naïve café, 東京, emoji 🤗 and <|endoftext|> inside.\n\n\tdef f(x):  return x**2  "
               "'ll 've 're   spaces   \r\n")


def _bytes_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE's byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def tiktoken_encoding(tokenizer):
    """A tiktoken Encoding identical to `tokenizer`, or None when it can't reproduce it."""
    try:
        import tiktoken
    except ImportError:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (model.get("type") != "BPE" or spec.get("normalizer") or pre.get("type") != "ByteLevel"
            or not pre.get("use_regex", True) or pre.get("add_prefix_space")):
        return None
    table = _bytes_decoder()
    try:
        ranks = {bytes(table[ch] for ch in tok): i for tok, i in model["vocab"].items()}
    except KeyError:
        return None
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    merged = [model["vocab"].get(a + b, -1) for a, b in merges]
    if len(ranks) != len(model["vocab"]) or merged != sorted(merged) or min(merged, default=0) < 0:
        return None   # merge priority is not the id order: tiktoken's rank rule would differ
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["id"] not in ranks.values()}
    enc = tiktoken.Encoding("lmstream-" + str(getattr(tokenizer, "name_or_path", "bpe")), pat_str=GPT2_PATTERN,
                            mergeable_ranks=ranks, special_tokens=specials)
    hf = tokenizer(_SELF_CHECK, verbose=False)["input_ids"]
    return enc if enc.encode(_SELF_CHECK, allowed_special="all") == hf else None


def _safe_cut(text: str, at: int, window: int = 1 << 16) -> int:
    """A cut at or after `at` where GPT-2's pre-tokenizer splits anyway: before a single space that
    follows a non-space and precedes a letter. The end of the text if there is none nearby."""
    global _SAFE_CUT
    if at >= len(text):
        return len(text)
    if _SAFE_CUT is None:
        import regex
        _SAFE_CUT = regex.compile(r"(?<=[^\s]) (?=\p{L})")
    m = _SAFE_CUT.search(text, at, min(len(text), at + window))
    return m.start() if m else (len(text) if at + window >= len(text) else _safe_cut(text, at + window, window))


def tokenizer_fingerprint(tokenizer) -> str:
    """16 hex digits over what decides the ids: vocabulary, merges, normalizer, pre-tokenizer, post-processor,
    added and special tokens (not padding or truncation settings, not the folder it was loaded from)."""
    import hashlib
    import json
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:   # a slow tokenizer: its vocabulary and special tokens
        spec = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
    spec["special"] = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class Encoder:
    """Encodes batches of documents into one flat id array plus per-document lengths (EOS included)."""

    def __init__(self, tokenizer, use_tiktoken: bool = True):
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ConfigError(f"Tokenizer '{tokenizer.name_or_path}' has no eos_token: set one "
                              "(tokenizer.eos_token = ...) so documents can be separated.")
        self.tokenizer = tokenizer
        self.tiktoken = tiktoken_encoding(tokenizer) if use_tiktoken else None
        self.backend = "tiktoken" if self.tiktoken is not None else "hf"
        self.vocab_size = len(tokenizer)
        self.fingerprint = tokenizer_fingerprint(tokenizer)

    def __getstate__(self):   # tiktoken objects don't pickle; rebuild in the worker
        state = dict(self.__dict__)
        state["tiktoken"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if state["backend"] == "tiktoken":
            self.tiktoken = tiktoken_encoding(self.tokenizer)

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        if self.tiktoken is not None:
            enc = self.tiktoken   # one call per text: encode_batch's thread pool costs ~15% with one thread
            return [enc.encode(t, allowed_special="all") for t in texts]
        return self.tokenizer(texts, verbose=False)["input_ids"]

    def encode_parts(self, doc):
        """(int32 ids, last) for a very long document (a LongText, or a str) in pieces, EOS at the end.

        With tiktoken the pieces are cut where GPT-2's pre-tokenizer splits anyway, so the ids are those
        of the whole text, and each piece becomes int32 at once (4 bytes a token, not a Python int's 36).
        Another tokenizer gets the whole text at once (exactness first)."""
        if self.tiktoken is None:
            ids, _ = self.encode([str(doc)])
            yield ids, True
            return
        piece = doc.slice if hasattr(doc, "slice") else (lambda a, b: doc[a:b])
        pos, n = 0, len(doc)
        while pos < n:
            span = piece(pos, pos + CHUNK_CHARS + (1 << 16))
            cut = len(span) if pos + len(span) >= n else _safe_cut(span, CHUNK_CHARS)
            while cut == len(span) and pos + len(span) < n:   # no cut point nearby: read further
                span = piece(pos, pos + len(span) * 2)
                cut = len(span) if pos + len(span) >= n else _safe_cut(span, CHUNK_CHARS)
            ids = np.array(self.tiktoken.encode(span[:cut], allowed_special="all"), dtype=np.int32)
            pos += cut
            if pos >= n:
                ids = ids if len(ids) and ids[-1] == self.eos else np.append(ids, np.int32(self.eos))
            yield ids, pos >= n
        if n == 0:
            yield np.array([self.eos], dtype=np.int32), True

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 ids of all documents (EOS after each) and the tokens per document."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if self.tiktoken is not None and any(len(t) > CHUNK_CHARS for t in texts):
            arrays = [self._encode_long(t) if len(t) > CHUNK_CHARS else self._ids(self.encode_lists([t])[0])
                      for t in texts]
            lengths = np.array([len(a) for a in arrays], dtype=np.int64)
            return np.concatenate(arrays), lengths
        lists = self.encode_lists(texts)
        for ids in lists:
            self._end(ids)
        lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths

    def _end(self, ids: list[int]) -> list[int]:
        if not ids or ids[-1] != self.eos:
            ids.append(self.eos)
        return ids

    def _ids(self, ids: list[int]) -> np.ndarray:
        return np.array(self._end(ids), dtype=np.int32)

    def _encode_long(self, text: str) -> np.ndarray:
        """A long str document's ids (EOS included), encoded in pieces."""
        return np.concatenate([ids for ids, _ in self.encode_parts(text)])


def build_encoder(tokenizer, use_tiktoken: bool = True) -> Encoder:
    """The encoder for `tokenizer` (tiktoken when it is exact, else the HF fast tokenizer)."""
    return Encoder(tokenizer, use_tiktoken)
