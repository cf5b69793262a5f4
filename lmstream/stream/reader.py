"""One reader's loop: shuffle windows -> tokenizer batches -> packer -> samples, each with the
position after it.

    reader = Reader(plan, args, encoder, block_size, max_len, seed, split, cycle, cap)
    # state: a ReaderState (lmstream.stream.state)
    for sample, state in reader.samples(start_state): ...

A position names the window that produced the sample and the next document and token in it; resuming
re-reads that window and drops the tokens before the position (`cut_heads`). Samples are blocks of
`block_size` tokens (documents packed with EOS between them, the remainder carried over), or with
dataset_group_text false one padded sample per document. Very long documents (LongText) are
tokenized part by part.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..config import DataArguments
from ..corpus.docids import id_columns, read_id_list
from ..corpus.documents import DocumentStream
from .elastic import decode_items
from ..errors import ConfigError
from ..corpus.longtext import LongText
from ..tokens.packing import BlockPacker, Part, cut_heads, document_positions, pad_document
from ..corpus.plan import Plan
from .state import Counters, ReaderState, Sample, check_start
from ..tokens.calls import long_text_runs, tokenizer_batches
from ..tokens.tokenize import Encoder

log = logging.getLogger("lmstream")
PROVENANCE = "provenance"     # a sample's key: int64 (segments, 6), see lmstream.tokens.packing
# text per tokenizer call (about 0.1 s of tiktoken): bounds first-block latency
TOKENIZE_BYTES = 512 * 1024
# with fastokens, where the reader has the process's cores (see Reader._call_bytes)
FAST_TOKENIZE_BYTES = 2 << 20


@dataclass
class Reader:
    """The samples of one reader (a rank, or one of its workers) from a position on."""
    plan: Plan
    args: DataArguments
    encoder: Encoder
    block_size: int
    max_len: int                 # tokens per padded sample (dataset_group_text false)
    seed: int
    split: str                   # "train", "holdout" or "all"
    cycle: bool                  # go on with the next epoch (else publish the epoch's end and stop)
    # cap(state) -> samples in the state's epoch (None: the whole epoch)
    cap: Callable
    max_samples: int | None = None
    warned_short: bool = False
    # ids/urls not to train on (dataset_skip_documents), read on first use
    listed: frozenset | None = None
    # (shard, row group) -> {row: {"id", "url"}}, read when first needed
    ids: dict = field(default_factory=dict)

    def _listed_skips(self, window, b0: int, lens: np.ndarray, skips: list,
                      stats: Counters) -> None:
        """dataset_skip_documents: a listed document of this tokenizer batch gives no token (its
        position, and every other document's, stays as it was: the filter acts after the window's
        permutation)."""
        for i in range(len(lens)):
            if skips[i] < lens[i] and self._is_listed(window, b0 + i, stats):
                skipped = int(lens[i]) - skips[i]
                stats["tokens_listed_skipped"] = stats.get("tokens_listed_skipped", 0) + skipped
                skips[i] = int(lens[i])

    def _is_listed(self, window, j: int, stats: Counters) -> bool:
        """Whether document j of the window has a listed id or url (counted in
        docs_listed_skipped)."""
        if self.listed is None:
            self.listed = read_id_list(self.args.dataset_skip_documents)
        shard, group, row = window.origins[j].tolist()
        if (shard, group) not in self.ids:
            self.ids[(shard, group)] = id_columns(self.plan, shard, group, self.args)
        hit = not self.listed.isdisjoint(self.ids[(shard, group)].get(row, {}).values())
        if hit:
            stats["docs_listed_skipped"] = stats.get("docs_listed_skipped", 0) + 1
        return hit

    def documents(self, slot: int, n_slots: int) -> DocumentStream:
        """The documents reader `slot` of `n_slots` reads (an elastic resume asks this of old
        readers too)."""
        return DocumentStream(self.plan, self.args, self.seed, slot, n_slots, split=self.split,
                              shuffle=self.split == "train")

    def epoch_ids(self, slot: int, n_slots: int, epoch: int = 0, batch_bytes: int = 1 << 20):
        """The token ids (EOS after each document) of reader `slot`'s epoch from its start, in the
        order its samples would carry them, as int32 arrays of whole tokenizer batches: for writing
        the epoch's blocks at once (lmstream.tools.prepare), with no per-block position kept.
        Batches of about 1 MB of text: 64 MB ones (ids and their copies far beyond the caches) made
        prepare 35-40% slower (2 processes, 57 M tokens: 47-52 M tokens/s against 77-83 M)."""
        stream = self.documents(slot, n_slots)
        for window in stream.windows(epoch, 0, (0, 0)):
            batches = tokenizer_batches(window.nbytes, 0, len(window.docs) or 1, batch_bytes)
            for b0, b1 in long_text_runs(window.docs, batches):
                if isinstance(window.docs[b0], LongText):
                    yield from (ids for ids, _ in self.encoder.encode_parts(window.docs[b0]))
                else:
                    yield self.encoder.encode(window.docs[b0:b1])[0]

    def samples(self, state: ReaderState, raw: bool = False):
        """(sample, position after it) from `state` on; a sample None publishes the end of an epoch.
        `raw`: packed blocks as bare int32 arrays without labels (for lmstream.stream.collate's
        collates: one conversion per batch)."""
        stream = self.documents(state.who.slot, state.who.n_slots)
        stream.restore_counters(state.stats)
        stats = dict(state.stats)
        resumed = state.samples_in_epoch > 0   # only saved states have yielded samples
        while True:
            packer, cap = BlockPacker(self.block_size), self.cap(state)
            last = yield from self._epoch(stream, state, stats, packer, cap, resumed, raw)
            stats["tokens_dropped"] += packer.drop_remainder()
            self._check_epoch(state, last, cap)
            state, resumed = state.at_epoch(*state.phase.next(state.epoch), stats=stats), False
            if not self.cycle:   # publish the final counters; a new iter() starts the next epoch
                stats.update(stream.stats)
                yield None, state.moved(stats=dict(stats))
                return

    def _epoch(self, stream: DocumentStream, state: ReaderState, stats: Counters,
               packer: BlockPacker, cap, resumed, raw: bool):
        """The samples of the state's epoch (or owed phase) from its position on; returns the last
        position."""
        last, in_epoch = state, state.samples_in_epoch
        if cap is not None and in_epoch >= cap:
            return last
        items = decode_items(state.phase.items, self.plan) if state.phase.owed else None
        if resumed:
            check_start(state.start, stream.slot_pieces(state.epoch) if items is None else items)
        doc0, tok0 = state.doc, state.token
        windows = stream.windows(state.epoch, state.window, state.start, count=not resumed,
                                 items=items, tag=(state.phase.gen,) if state.phase.owed else ())
        try:
            for window in windows:
                if resumed and doc0 > len(window.docs):
                    raise ConfigError(f"The data position is corrupt: document {doc0} of window "
                                      f"{window.index}, which has {len(window.docs)} documents: "
                                      "resume from another checkpoint.")
                for s in self._samples(window, doc0, tok0, packer, stats, raw):
                    in_epoch += 1
                    stats["docs"] += s.docs_done
                    stats["bytes"] += s.bytes_done
                    stats.update(stream.stats)
                    (win, j), phase = s.next_ref, state.phase
                    # the constructor, not dataclasses.replace: this runs once per sample
                    last = ReaderState(who=state.who, epoch=win.epoch, window=win.index,
                                       start=win.start, next=win.next, key=win.key, doc=j,
                                       token=s.next_offset, samples_in_epoch=in_epoch, phase=phase,
                                       stats=dict(stats))
                    yield s.sample, last
                    if cap is not None and in_epoch >= cap:
                        return last
                doc0 = tok0 = 0
                resumed = False
        finally:
            windows.close()
        return last

    def _check_epoch(self, state: ReaderState, last: ReaderState, cap) -> None:
        """An epoch that gave no sample is an error; one shorter than max_train_samples asks is
        said, once."""
        in_epoch, owed = last.samples_in_epoch, state.phase.owed
        if in_epoch == 0 and not owed:
            raise ConfigError(self._empty_message(state))
        if cap is not None and in_epoch < cap and not owed and not self.warned_short:
            # max_train_samples asks more blocks than the data holds: say so, once
            self.warned_short = True
            log.warning("The data gave reader %d only %d of the %d blocks its epoch should have "
                        "(max_train_samples=%d): epochs are shorter than asked.", state.who.slot,
                        in_epoch, cap, self.max_samples)

    def _empty_message(self, state: ReaderState) -> str:
        who = state.who
        where = f"rank {who.rank}" + (f", worker {who.slot % who.workers}" if who.workers > 1
                                      else "")
        return (f"Dataset '{self.args.dataset_name}' gave {where} no complete block of "
                f"{self.block_size} tokens in an epoch ({len(self.plan.pieces)} piece(s) for "
                f"{who.n_slots} reader(s)): use more data, a smaller dataset_block_size, or fewer "
                "workers/processes.")

    def _call_bytes(self) -> int:
        """Text per tokenizer call. fastokens in one process (or a loader's only worker): 2 MB,
        about 10 ms, gave 7-16% more tokens/s than 512 KB on documents of 22 KB on average (2 cores,
        57 M tokens, A/B in turn; on 3 KB ones the document cap binds first). In each of 2 workers
        on 2 cores it gave no more (within noise)."""
        info = torch.utils.data.get_worker_info()
        alone = info is None or info.num_workers == 1
        if alone and self.encoder.backend == "fastokens":
            return FAST_TOKENIZE_BYTES
        return TOKENIZE_BYTES

    def _samples(self, window, doc0: int, tok0: int, packer: BlockPacker, stats: Counters,
                 raw: bool):
        """The Samples of one window, from document doc0's token tok0 on."""
        calls = tokenizer_batches(window.nbytes, doc0, self.args.dataset_tokenize_batch_size,
                                  self._call_bytes())
        runs = list(long_text_runs(window.docs, calls))
        # a LongText is alone in its run and encoded by _long_samples: None (the encoder's helper
        # waits meanwhile)
        docs_of = [None if isinstance(window.docs[b0], LongText) else window.docs[b0:b1] for b0,
                   b1 in runs]
        for (b0, b1), docs, encoded in zip(runs, docs_of, self.encoder.encode_ahead(docs_of)):
            # tokens of each document already trained on: resuming inside it, or another reader's
            # (elastic)
            skips = [max(window.skips[j], tok0 if j == doc0 else 0) for j in range(b0, b1)]
            if docs is None:   # a listed one is skipped whole, untokenized
                if not (self.args.dataset_skip_documents and self._is_listed(window, b0, stats)):
                    yield from self._long_samples(window, b0, skips[0], packer, stats, raw)
                continue
            ids, lens, seconds = encoded
            stats["tokenize_seconds"] += seconds
            refs = [(window, j) for j in range(b0, b0 + len(docs))]
            if self.args.dataset_skip_documents:
                self._listed_skips(window, b0, lens, skips, stats)
            if any(skips):
                ids, lens = cut_heads(ids, lens, skips, refs)
            if self.args.dataset_group_text:
                span = slice(b0, b0 + len(docs))
                packed = packer.feed(ids, lens, window.nbytes[span], refs, window.origins[span])
                yield from self._blocks(packed, stats, raw)
            else:
                yield from self._padded(ids, lens, window, b0, stats)

    def _blocks(self, packed, stats: Counters, raw: bool):
        """Samples (labels = input_ids, the provenance of their tokens) from the packer's output,
        counted."""
        isolated = self.args.dataset_document_attention == "isolated"
        for p in packed:
            stats["tokens"] += len(p.block)
            stats["blocks"] += 1
            if raw:
                sample = {"input_ids": p.block, PROVENANCE: p.provenance}
            else:
                t = torch.from_numpy(p.block.astype(np.int64))
                sample = {"input_ids": t, "labels": t.clone(), PROVENANCE: p.provenance}
            if isolated:   # position_ids restarting at each document: no attention across them
                pos = document_positions(p.block, self.encoder.eos)
                sample["position_ids"] = pos if raw else torch.from_numpy(pos.astype(np.int64))
            yield Sample(sample, p.next_ref, p.next_offset, p.docs_done, p.bytes_done)

    def _long_samples(self, window, j: int, tok0: int, packer: BlockPacker, stats: Counters,
                      raw: bool):
        """A very long document, tokenized and packed part by part (memory bounded by the part
        size)."""
        doc, base, cut = window.docs[j], 0, 0
        for ids, last in self.encoder.encode_parts(doc):
            n = len(ids)
            # one padded sample: its head, the rest counted as cut
            if not self.args.dataset_group_text:
                if base == 0:
                    head = ids[: self.max_len]
                cut += max(0, min(n, base + n - self.max_len))
                base += n
                if last:
                    stats["tokens_truncated"] += cut
                    yield from self._padded(head, np.array([len(head)]), window, j, stats)
                continue
            if base + n <= tok0:   # emitted before the resume
                base += n
                continue
            skip = max(0, tok0 - base)
            ref = Part((window, j), base + skip, last)
            yield from self._blocks(packer.feed(ids[skip:], np.array([n - skip]), [doc.nbytes],
                                                [ref], window.origins[j:j + 1]), stats, raw)
            base += n

    def _padded(self, ids, lens, window, b0, stats):
        pad = self.encoder.tokenizer.pad_token_id
        pad = self.encoder.eos if pad is None else pad
        ends = np.cumsum(lens)
        for i, n in enumerate(lens):
            input_ids, labels, mask, cut = pad_document(ids[ends[i] - n:ends[i]], self.max_len, pad)
            stats["tokens"] += int(n) - cut
            stats["tokens_truncated"] += cut
            stats["blocks"] += 1
            j = b0 + i
            prov = np.array([[0, *window.origins[j], 0, int(n) - cut]], dtype=np.int64)
            sample = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
                      "attention_mask": torch.from_numpy(mask), PROVENANCE: prov}
            yield Sample(sample, (window, j + 1), 0, 1, window.nbytes[j])
