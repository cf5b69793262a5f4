"""Tokenizer backends that reproduce a Hugging Face tokenizer id for id, faster: fastokens (any
tokenizer.json it reproduces, all cores, flat NumPy output) and tiktoken (GPT-2-style byte-level
BPE). Each is used only after a self-check against the HF tokenizer on text that exercises Unicode,
whitespace runs, digits, code and specials.

    # None: not installed, or not identical on the check texts
    fast = fastokens_backend(tokenizer)
    enc = tiktoken_backend(tokenizer)         # None: not a GPT-2-style BPE, or not identical
"""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("lmstream")

# GPT-2's pre-tokenizer split (the regex of the ByteLevel pre-tokenizer)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CHECK_TEXTS = (
    "Hello world! It's 2026: naïve café, 東京, emoji 🤗 and <|endoftext|> inside.\n\n\tdef f(x):  "
    "return x**2  'll 've 're   spaces   \r\n",
    "", " ", "\n", "   leading and trailing   ", "a\tb\u00a0c\u2003d\u200be", "x" * 3000,
    "Numbers 1234567890 3.14159 1,000,000 0x1F 2026-11-27 12:00:00 +44 20 7946 0958",
    "CamelCaseWord snake_case_name kebab-case URL https://example.org/a?b=c&d=e#f",
    "Ünïcödé: Ελληνικά, русский текст, עברית, العربية, हिन्दी, 한국어, ไทย, 中文标点：“引号”。",
    "Emoji: 👩‍👩‍👧‍👦 👍🏽 🏳️‍🌈 e\u0301 (combining) ﬁ ligature, ½ ² Ⅻ",
    "if (a != b) { return a->c[0] >= 'x' ? \"yes\" : `no`; } // comment\n    # indented\n\n\n",
    "I'm you're he'll we've they'd IT'S DON'T  ' s 's",
    "<s> </s> <|endoftext|><|endoftext|> [CLS] <pad> <unk> <|im_start|>user",
    "\r\n\r\n\t\t  \n \n", "Mixed   \t\n  whitespace\u3000runs\u2028lines",
)


def _hf_ids(tokenizer, texts) -> list[list[int]]:
    return tokenizer(list(texts), verbose=False)["input_ids"]


def tokenizer_json(tokenizer) -> str | None:
    """The tokenizer's tokenizer.json text, without truncation or padding: a call such as
    `tokenizer(texts, truncation=True, max_length=1024)` leaves its Rust tokenizer truncating, and a
    backend loaded from that state would cut every document silently (and its fingerprint would
    change with a call made earlier)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if backend.truncation is None and backend.padding is None:
        return backend.to_str()
    from tokenizers import Tokenizer
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain.to_str()


def tokenizer_threads(workers: int = 1) -> int:
    """Threads for one reader's fastokens calls: LMSTREAM_TOKENIZER_THREADS, else this process's
    cores shared between the processes of the node (LOCAL_WORLD_SIZE, set by torchrun/accelerate)
    and its DataLoader workers, so that processes x workers x threads never exceeds the cores."""
    if os.environ.get("LMSTREAM_TOKENIZER_THREADS"):
        return max(1, int(os.environ["LMSTREAM_TOKENIZER_THREADS"]))
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, _cores() // (local_world * max(1, workers)))


def reader_threads(workers: int = 1) -> int:
    """fastokens threads for a reader (in process, or a DataLoader worker): its share of the cores
    (tokenizer_threads) less one for its Python thread, which packs a batch while the encoder's
    helper thread tokenizes the next (lmstream.tokens.tokenize.Encoder.encode_ahead); at least 1.
    LMSTREAM_TOKENIZER_THREADS sets it exactly."""
    share = tokenizer_threads(workers)
    return share if os.environ.get("LMSTREAM_TOKENIZER_THREADS") else max(1, share - 1)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def limit_threads(threads: int) -> None:
    """fastokens' thread pool size for this process (read when the pool starts: call before the
    first encode). A forked DataLoader worker does not inherit its parent's pool threads and encodes
    on its own thread."""
    os.environ["FASTOKENS_BPE_THREADS"] = str(threads)


def fastokens_backend(tokenizer, spec: str | None = None):
    """A fastokens Tokenizer identical to `tokenizer` (special tokens added as HF adds them), or
    None. `spec`: the tokenizer's JSON when already at hand."""
    spec = spec or tokenizer_json(tokenizer)
    if spec is None:
        return None
    try:
        import fastokens
    except ImportError:
        return None
    if "FASTOKENS_BPE_THREADS" not in os.environ:
        limit_threads(reader_threads())
    try:
        fast = fastokens.Tokenizer.from_json_str(spec)
        got = decode_flat(*fast.encode_batch_flat(list(CHECK_TEXTS), add_special_tokens=True))
    except Exception as err:  # noqa: BLE001 - a tokenizer.json it cannot load: the next backend
        log.info("fastokens cannot load this tokenizer (%s: %s)", type(err).__name__, err)
        return None
    return fast if got == _hf_ids(tokenizer, CHECK_TEXTS) else None


def decode_flat(ids: bytes, offsets: bytes) -> list[list[int]]:
    """fastokens' flat output as one list of ids per text (for checks; the encoder keeps it
    flat)."""
    import numpy as np
    flat, ends = np.frombuffer(ids, np.uint32), np.frombuffer(offsets, np.uint64)
    return [flat[int(a):int(b)].tolist() for a, b in zip(ends[:-1], ends[1:])]


def _bytes_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE's byte -> printable-character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def is_gpt2_style(spec: dict) -> bool:
    """A byte-level BPE with GPT-2's pre-tokenizer and no normalizer: its text can be cut where
    GPT-2 splits."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    return (model.get("type") == "BPE" and not spec.get("normalizer")
            and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and not pre.get("add_prefix_space"))


def tiktoken_backend(tokenizer, spec: dict | None = None):
    """A tiktoken Encoding identical to `tokenizer`, or None when it can't reproduce it. `spec`: the
    tokenizer's parsed JSON when already at hand."""
    try:
        import tiktoken
    except ImportError:
        return None
    if spec is None:
        text = tokenizer_json(tokenizer)
        spec = json.loads(text) if text else {}
    if not is_gpt2_style(spec):
        return None
    model, table = spec["model"], _bytes_decoder()
    try:
        ranks = {bytes(table[ch] for ch in tok): i for tok, i in model["vocab"].items()}
    except KeyError:
        return None
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    merged = [model["vocab"].get(a + b, -1) for a, b in merges]
    if len(ranks) != len(model["vocab"]) or merged != sorted(merged) or min(merged, default=0) < 0:
        return None   # merge priority is not the id order: tiktoken's rank rule would differ
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])
                if t["id"] not in ranks.values()}
    enc = tiktoken.Encoding("lmstream-" + str(getattr(tokenizer, "name_or_path", "bpe")),
                            pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    got = [enc.encode(t, allowed_special="all") for t in CHECK_TEXTS]
    return enc if got == _hf_ids(tokenizer, CHECK_TEXTS) else None
