"""Tokens: batched encoding of documents, an EOS token after each one, on the fastest identical
backend.

    enc = build_encoder(tokenizer)
    ids, lengths = enc.encode(["first doc", "second doc"])   # flat int32 ids, tokens per document

GPT-2's tokenizer adds no EOS by itself, so documents would run together once packed; the encoder
appends `eos_token_id` to every document (unless the tokenizer already ended it with one). The
backend is fastokens when it reproduces the tokenizer id for id (any tokenizer.json: GPT-2,
Llama-3-, DeepSeek-style, ...; flat NumPy output), else tiktoken for GPT-2-style BPEs, else the
Hugging Face tokenizer (lmstream.tokens.backends).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import logging
import os
import time

import numpy as np

from . import backends
from ..config import DataArguments
from ..errors import ConfigError

log = logging.getLogger(__name__)

CHUNK_CHARS = 1 << 20   # documents longer than this are encoded in pieces (GPT-2-style tokenizers)
_SAFE_CUT = None
# fastest first; each used only where it is identical to HF
BACKENDS = ("fastokens", "tiktoken", "hf")
# [pid, the thread that encodes the next batch ahead (Encoder.encode_ahead)]: made on first use
_HELPER: list = []
# (tokenizer JSON digest, class, special tokens, allowed) -> the backends chosen, this process
_CHOSEN: dict = {}


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
    return m.start() if m else (len(text) if at + window >= len(text)
                                else _safe_cut(text, at + window, window))


def tokenizer_fingerprint(tokenizer, spec: dict | None = None) -> str:
    """16 hex digits over what decides the ids: vocabulary, merges, normalizer, pre-tokenizer,
    post-processor, added and special tokens (not padding or truncation settings, not the folder it
    was loaded from). `spec`: the tokenizer's parsed JSON when already at hand."""
    if spec is None:
        text = backends.tokenizer_json(tokenizer)
        spec = json.loads(text) if text is not None else None
    if spec is not None:
        spec = {k: v for k, v in spec.items() if k not in ("truncation", "padding")}
    else:   # a slow tokenizer: its vocabulary and special tokens
        spec = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
    spec["special"] = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return hashlib.sha256(json.dumps(spec, sort_keys=True,
                                     ensure_ascii=False).encode()).hexdigest()[:16]


class Encoder:
    """Encodes batches of documents into one flat id array plus per-document lengths (EOS included).

    The backend is the fastest that reproduces the HF tokenizer id for id (BACKENDS order, see
    lmstream.tokens.backends); `allowed` limits the choice (("hf",) forces the reference)."""

    def __init__(self, tokenizer, allowed=BACKENDS):
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ConfigError(f"Tokenizer '{tokenizer.name_or_path}' has no eos_token: set one "
                              "(tokenizer.eos_token = ...) so documents can be separated.")
        self.tokenizer, self.allowed = tokenizer, tuple(allowed)
        self._load()
        self.vocab_size = len(tokenizer)

    def _load(self) -> None:
        """Choose the backend and fingerprint the tokenizer: once per process for the same tokenizer
        content (the train and eval streams, a mixture's sources and copies of a stream share the
        choice and its self-check)."""
        text = backends.tokenizer_json(self.tokenizer)
        key = None if text is None else (hashlib.sha256(text.encode()).hexdigest(),
                                         type(self.tokenizer).__name__,
                                         repr(sorted(self.tokenizer.special_tokens_map.items())),
                                         self.allowed)
        if key not in _CHOSEN:
            _CHOSEN[key] = self._choose(text)
        # id_type: the narrowest type every id fits (what workers send, prepare saves), read from
        # the vocabulary once
        (self.fast, self.tiktoken, self.backend, self.cuttable, self.fingerprint,
         self.id_type) = _CHOSEN[key]
        if key is None:
            _CHOSEN.pop(key)   # a slow tokenizer: nothing to key it by, chosen again each time

    def _choose(self, text: str | None) -> tuple:
        """(fastokens, tiktoken, backend name, cuttable, fingerprint, id type), the tokenizer's JSON
        parsed once."""
        spec = json.loads(text) if text is not None else None
        fast = None
        if "fastokens" in self.allowed:
            fast = backends.fastokens_backend(self.tokenizer, text)
        tik = None
        if fast is None and "tiktoken" in self.allowed:
            tik = backends.tiktoken_backend(self.tokenizer, spec or {})
        backend = "fastokens" if fast is not None else "tiktoken" if tik is not None else "hf"
        # a GPT-2-style text can be cut where its pre-tokenizer splits anyway (long documents, in
        # pieces)
        cuttable = backend != "hf" and spec is not None and backends.is_gpt2_style(spec)
        fingerprint = tokenizer_fingerprint(self.tokenizer, spec)
        return fast, tik, backend, cuttable, fingerprint, id_type(self.tokenizer)

    # the Rust objects don't pickle: rebuilt (and checked again) in the worker
    def __getstate__(self):
        state = dict(self.__dict__)
        state["fast"] = state["tiktoken"] = None
        return state

    def encode_ahead(self, batches: list):
        """(ids, lengths, seconds) of each list of documents in `batches`, in order. With fastokens
        the next batch is encoded on a helper thread while the caller packs the current one:
        fastokens releases the GIL, so tokenizing overlaps the Python work around it, and the
        reader's fastokens threads leave a core for that work (backends.reader_threads). Measured on
        2 cores, cold tokenizer cache: in one process 1 thread with the helper gave 15-20% more
        tokens/s than 2 threads without it; with 2 workers, 5-10% more. A batch None gives None, and
        nothing is encoded beside the caller until it asks for the next one (it may use the encoder
        itself meanwhile)."""
        if self.fast is None:
            yield from (None if docs is None else self._timed_encode(docs) for docs in batches)
            return
        helper, running = self._helper(), {}

        def start(i: int) -> None:
            if i < len(batches) and batches[i] is not None and i not in running:
                running[i] = helper.submit(self._timed_encode, batches[i])
        for i, docs in enumerate(batches):
            if docs is None:
                yield None
                continue
            start(i)
            start(i + 1)
            yield running.pop(i).result()

    def _timed_encode(self, texts: list) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        ids, lengths = self.encode(texts)
        return ids, lengths, time.perf_counter() - t0

    @staticmethod
    def _helper() -> concurrent.futures.ThreadPoolExecutor:
        """This process's encoding thread, shared by its encoders (a forked process makes its own:
        threads do not survive a fork)."""
        if not _HELPER or _HELPER[0] != os.getpid():
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmstream-tok")
            _HELPER[:] = [os.getpid(), pool]
        return _HELPER[1]

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load()

    # set once in __init__, never changed: a copied stream shares its encoder
    def __deepcopy__(self, memo):
        return self

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text as lists (no EOS added): for checks and small inputs."""
        if self.fast is not None:
            flat = self.fast.encode_batch_flat(list(texts), add_special_tokens=True)
            return backends.decode_flat(*flat)
        if self.tiktoken is not None:
            # one call per text: encode_batch's thread pool costs ~15% with one thread
            enc = self.tiktoken
            return [enc.encode(t, allowed_special="all") for t in texts]
        return self.tokenizer(list(texts), verbose=False)["input_ids"]

    def encode_parts(self, doc):
        """(int32 ids, last) for a very long document (a LongText, or a str) in pieces, EOS at the
        end.

        For a GPT-2-style tokenizer the pieces are cut where its pre-tokenizer splits anyway, so the
        ids are those of the whole text, and each piece becomes int32 at once (4 bytes a token, not
        a Python int's 36). Another tokenizer gets the whole text at once (exactness first)."""
        if not self.cuttable:
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
            ids = np.array(self.encode_lists([span[:cut]])[0], dtype=np.int32)
            pos += cut
            if pos >= n:
                if not (len(ids) and ids[-1] == self.eos):
                    ids = np.append(ids, np.int32(self.eos))
            yield ids, pos >= n
        if n == 0:
            yield np.array([self.eos], dtype=np.int32), True

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 ids of all documents (EOS after each) and the tokens per document."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if self.cuttable and any(len(t) > CHUNK_CHARS for t in texts):
            arrays = [self._encode_long(t) if len(t) > CHUNK_CHARS else self.encode([t])[0]
                      for t in texts]
            lengths = np.array([len(a) for a in arrays], dtype=np.int64)
            return np.concatenate(arrays), lengths
        if self.fast is not None:   # flat ids straight from Rust: no Python int per token
            ids, offsets = self.fast.encode_batch_flat(texts, add_special_tokens=True)
            return with_eos(np.frombuffer(ids, np.uint32).view(np.int32),
                            np.frombuffer(offsets, np.uint64), self.eos)
        lists = self.encode_lists(texts)
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32,
                           count=int(offsets[-1]))
        return with_eos(flat, offsets, self.eos)

    def _encode_long(self, text: str) -> np.ndarray:
        """A long str document's ids (EOS included), encoded in pieces."""
        return np.concatenate([ids for ids, _ in self.encode_parts(text)])


def id_type(tokenizer) -> type:
    """np.uint16 when every id of the tokenizer (its vocabulary and added tokens) is below 65536, as
    GPT-2's are, else np.int32: one rule for the ids DataLoader workers send and
    lmstream.tools.prepare saves."""
    if len(tokenizer) > 1 << 16:
        return np.int32
    ids = list(tokenizer.get_vocab().values()) + list(getattr(tokenizer, "added_tokens_decoder",
                                                              {}))
    return np.uint16 if max(ids, default=0) < 1 << 16 else np.int32


def with_eos(flat: np.ndarray, offsets: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths) with an EOS after every document that does not already end with one
    (vectorized)."""
    lengths = np.diff(offsets).astype(np.int64)
    ends = offsets[1:].astype(np.int64)
    last = flat[np.maximum(ends - 1, 0)] if len(flat) else np.full(len(ends), -1, np.int32)
    need = (lengths == 0) | (last != eos)
    return np.insert(flat, ends[need], np.int32(eos)), lengths + need


def settle() -> None:
    """Wait until this process's encoding thread has nothing under way: call before forking, so that
    no child starts as a copy taken while the tokenizer ran on another thread (its locks held by a
    thread the child lacks)."""
    if _HELPER and _HELPER[0] == os.getpid():
        # one thread, tasks in order: this one runs after every earlier one
        _HELPER[1].submit(int).result()


def forget_backends() -> None:
    """Drop the backends chosen in this process: the next encoder loads (and checks) its own, with a
    cold cache."""
    _CHOSEN.clear()


def build_encoder(tokenizer, allowed=BACKENDS) -> Encoder:
    """The encoder for `tokenizer`: the fastest backend identical to it (fastokens, tiktoken, then
    HF)."""
    enc = Encoder(tokenizer, allowed)
    log.info("tokenizer backend: %s", enc.backend)
    return enc


def encoder_for(args: DataArguments, tokenizer) -> Encoder:
    """The encoder dataset_tokenizer_backend asks for; a named backend that can't reproduce the
    tokenizer is refused."""
    if args.dataset_tokenizer_backend == "auto":
        return build_encoder(tokenizer)
    enc = build_encoder(tokenizer, allowed=(args.dataset_tokenizer_backend,))
    if enc.backend != args.dataset_tokenizer_backend:
        raise ConfigError(f"dataset_tokenizer_backend={args.dataset_tokenizer_backend} does not "
                          f"reproduce tokenizer '{tokenizer.name_or_path}' id for id (or is not "
                          "installed): use auto (it falls back) or hf.")
    return enc
