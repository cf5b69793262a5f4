"""The pipeline: documents -> tokens -> blocks as a torch IterableDataset with exact, O(1) resume.

    blocks = build_pipeline(args, tokenizer, seed=0)
    for b in blocks: b["input_ids"], b["labels"]
    state = blocks.state_dict(); fresh = build_pipeline(args, tokenizer, seed=0); fresh.load_state_dict(state)

The state is a position, not a replay log: (epoch, shuffle window and where it starts in the slot's
pieces, document within the window, token within the document) plus counters. Resuming re-reads one
window (at most one row group more) and re-tokenizes the documents from that position onwards.
With DataLoader workers use `build_loader` (torchdata's StatefulDataLoader): each worker is a slot
with its own state, and the loader's state_dict holds them all.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
import warnings

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from .config import ConfigError, DataArguments
from .documents import DocumentStream, Plan, plan_pieces
from .elastic import decode_items, epoch_start, find_dicts, reader_states, redistribute, share
from .longtext import LongText
from .planfile import fingerprint
from .packing import BlockPacker, pad_document
from .sources import resolve_shards
from .stopping import ignore_signals_in_worker, kill_workers_at_exit
from .tokenize import Encoder, build_encoder

log = logging.getLogger("lmstream")
# torchdata's StatefulDataLoader calls a deprecated torch API on every iterator: not the user's concern
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
STATE_VERSION = 2
TOKENIZE_BYTES = 512 * 1024   # text per tokenizer call (about 0.1 s of tiktoken): bounds first-block latency
_COUNTERS = ("docs", "bytes", "tokens", "blocks", "tokens_dropped", "tokens_truncated", "tokenize_seconds")


def resolve_block_size(args: DataArguments, tokenizer, max_positions: int | None = None) -> int:
    """dataset_block_size, or min(1024, tokenizer.model_max_length, model positions); checked."""
    limit = max_positions or None
    if args.dataset_block_size is None:
        size = min(1024, getattr(tokenizer, "model_max_length", 1024) or 1024, limit or 1024)
    else:
        size = args.dataset_block_size
    if limit and size > limit:
        raise ConfigError(f"dataset_block_size={size} is larger than the model's {limit} positions: "
                          f"use dataset_block_size <= {limit}.")
    return size


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Blocks (or padded documents) of one rank, resumable via state_dict/load_state_dict."""

    def __init__(self, plan: Plan, args: DataArguments, encoder: Encoder, block_size: int, seed: int,
                 rank: int, world_size: int, split: str = "train", max_samples: int | None = None):
        self.plan, self.args, self.encoder = plan, args, encoder
        self.block_size, self.seed, self.rank, self.world_size = block_size, seed, rank, world_size
        self.split = split                  # "train", "holdout" (held-out docs of train) or "all" (an eval split)
        self.training = split == "train"
        self.max_samples = max_samples      # samples per epoch over all ranks and workers
        # a sized stream (max_samples) ends with each epoch: the next iter() (or loader.set_epoch) starts
        # the next one, so that a Trainer's epochs are the stream's epochs
        self.cycle = self.training and args.dataset_cycle and max_samples is None
        self.start_epoch = 0                # a fresh stream starts at this epoch (set_epoch)
        self.min_epoch = 0                  # ... and at least at this one (a resume on changed data)
        self.max_len = args.dataset_max_seq_length or block_size
        self.settings = self._settings()
        # Variables for checkpointing
        self._state: dict | None = None     # position after the last sample yielded (or loaded)
        self._starts: dict[int, dict] = {}  # slot -> initial state after an elastic resume
        self._warned_short = False

    def _settings(self) -> dict:
        names = [os.path.basename(s.url) for s in self.plan.shards]
        a = self.args
        return {"shards": hashlib.sha1("\n".join(names).encode()).hexdigest()[:16], "num_shards": len(names),
                "data": fingerprint(self.plan),
                "text_field": a.dataset_text_field, "split": self.split, "block_size": self.block_size,
                "group_text": a.dataset_group_text, "max_len": self.max_len, "seed": self.seed,
                "shuffle": a.dataset_shuffle, "shuffle_buffer": a.dataset_shuffle_buffer,
                "holdout": a.dataset_holdout_fraction, "sample_by": a.dataset_text_sample_by,
                "max_samples": self.max_samples, "vocab_size": self.encoder.vocab_size, "eos": self.encoder.eos,
                "tokenizer": self.encoder.fingerprint}

    # -- topology -------------------------------------------------------------------------------
    def _slot(self) -> tuple[int, int, int]:
        info = torch.utils.data.get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + wid, self.world_size * workers, workers

    def _base(self, slot: int, n_slots: int, workers: int) -> dict:
        return {"version": STATE_VERSION, "settings": self.settings, "rank": self.rank, "world_size": self.world_size,
                "workers": workers, "slot": slot, "n_slots": n_slots}

    def _initial(self, slot: int, n_slots: int, workers: int) -> dict:
        if slot in self._starts and self._starts[slot]["n_slots"] == n_slots:
            return copy.deepcopy(self._starts[slot])
        return {**self._base(slot, n_slots, workers), **epoch_start(0), "stats": dict.fromkeys(_COUNTERS, 0)}

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where this rank's (or this worker's) stream stands, JSON-serializable."""
        if self._state is None:   # not started: the initial position (not kept: set_epoch may still move it)
            return self._initial(*self._slot())
        return copy.deepcopy(self._state)

    def _check_saved(self, state: dict) -> None:
        """Refuse a reader state of another format version or other data settings."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"The data state has version {state.get('version')}, this lmstream reads {STATE_VERSION}.")
        # "data" and "tokenizer" (content fingerprints) are absent from states saved by earlier lmstream versions
        diff = [k for k in self.settings if state["settings"].get(k) != self.settings[k]
                and not (k in ("data", "tokenizer") and k not in state["settings"])]
        if diff == ["tokenizer"]:
            raise ConfigError("The data position was saved with another tokenizer (same vocabulary size and EOS, other "
                              f"ids: fingerprint {state['settings']['tokenizer']} then, {self.settings['tokenizer']} "
                              "now): resume with the tokenizer the run was trained with (tokenizer_name / the "
                              "checkpoint's tokenizer files), or start a new run.")
        if diff == ["data"]:
            raise ConfigError("The data changed since this data position was saved (same files, other content: "
                              f"fingerprint {state['settings']['data']} then, {self.settings['data']} now): resume on "
                              "the data it was trained on, or pass --dataset_accept_changed_data true to start the "
                              "epoch again on the new data.")
        if diff:
            saved = {k: state["settings"].get(k) for k in diff}
            now = {k: self.settings[k] for k in diff}
            raise ConfigError(f"The data state was saved with other data settings ({saved} then, {now} now): "
                              "resume with the same dataset arguments, seed and tokenizer, or start a new run.")

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the last sample of the run that saved `state`."""
        self._check_saved(state)
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ConfigError(f"The data state belongs to rank {state['rank']} of {state['world_size']}, not rank "
                              f"{self.rank} of {self.world_size}: load it with the same number of processes, or pass every rank's "
                              "state to resume_elastic (the training job does).")
        self._state = copy.deepcopy(state)

    def resume_elastic(self, loader_states: list, num_workers: int) -> None:
        """Continue from the loader states of every rank of a run with another number of processes or
        workers: within the current epoch no document twice, none skipped (see lmstream.elastic)."""
        old = reader_states(loader_states)
        if not old:
            raise ConfigError("The checkpoint holds no lmstream data position to resume from.")
        for st in old:
            self._check_saved(st)
        workers = max(1, num_workers)
        n_slots = self.world_size * workers

        def stream_of(slot, n):
            return DocumentStream(self.plan, self.args, self.seed, slot, n, split=self.split, shuffle=self.training)

        def regular_cap(st):
            return self._cap({"slot": st["slot"], "n_slots": st["n_slots"], "world_size": st["world_size"]})

        starts = redistribute(old, stream_of, self.plan, n_slots, regular_cap)
        mine = range(self.rank * workers, (self.rank + 1) * workers)
        self._starts = {s: {**self._base(s, n_slots, workers), **starts[s]} for s in mine}
        self._state = None

    def carry_over(self, loader_state: dict) -> None:
        """New worker processes start where the readers of `loader_state` (the last iterator's) stood."""
        self._starts.update({st["slot"]: st for st in reader_states(loader_state)})

    @property
    def stats(self) -> dict:
        """Counters of what this stream produced so far (see `merge_stats` for loaders)."""
        return self.state_dict()["stats"]

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self):
        slot, n_slots, workers = self._slot()
        state = self._state
        if state is None and slot in self._starts:
            state = self._initial(slot, n_slots, workers)
        fresh = state is None
        if state is None or state["n_slots"] != n_slots or state["slot"] != slot:
            if state is not None and state["stats"]["blocks"] + state["stats"]["docs"] > 0:
                raise ConfigError(f"The data state was saved with {state['workers']} DataLoader worker(s) per rank, "
                                  f"this run has {workers}: use dataloader_num_workers={state['workers']}, or "
                                  "resume_elastic (the training job does).")
            state = self._initial(slot, n_slots, workers)
        # set_epoch picks the epoch a *fresh* stream starts at; a stream with a position (loaded, carried
        # over from the last iterator, or owed after an elastic resume) goes on from it: nothing is skipped
        while fresh and state["epoch"] < max(self.start_epoch, self.min_epoch):
            state = self._advanced(state, max(self.start_epoch, self.min_epoch))
        while (cap := self._cap(state)) is not None and state["samples_in_epoch"] >= cap:
            if cap == 0 and state.get("items") is None:
                return   # fewer samples per epoch than readers: this one has none, in any epoch
            state = self._advanced(state)   # the epoch's last sample was here (its end not yet published)
        for sample, state in self._generate(state):
            self._state = state
            if sample is not None:
                yield sample

    def _cap(self, state) -> int | None:
        """Samples of the slot's epoch: max_samples split between ranks, then between the rank's workers.

        For training every rank gets max_samples // world_size (equal epochs on every rank: no rank
        waits for a step the others never take); evaluation spreads them all."""
        if state.get("items") is not None:   # a phase owed after an elastic resume has its own cap
            return state.get("cap")
        if self.max_samples is None:
            return None
        n, slot, n_slots = self.max_samples, state["slot"], state["n_slots"]
        if not self.training:
            return share(n, n_slots, slot)
        world = state.get("world_size", self.world_size)   # another run's, for an elastic resume
        workers = n_slots // world
        return share(n // world, workers, slot % workers)

    def __len__(self) -> int:
        """Samples per epoch of this rank, for a sized stream (max_samples, training); else TypeError."""
        if self.max_samples is None or not self.training:
            raise TypeError("a stream without max_train_samples has no length")
        return self.max_samples // self.world_size

    def epoch_samples(self, num_workers: int) -> list[int] | None:
        """Samples of one epoch of each of this rank's readers (a sized stream), else None."""
        if self.max_samples is None or not self.training:
            return None
        workers = max(1, num_workers)
        return [self._cap({"slot": self.rank * workers + w, "n_slots": self.world_size * workers})
                for w in range(workers)]

    def _generate(self, state: dict):
        stream = DocumentStream(self.plan, self.args, self.seed, state["slot"], state["n_slots"],
                                split=self.split, shuffle=self.training)
        stats = dict(state["stats"])
        for k in stream.stats:
            stream.stats[k] = stats.get(k, 0)
        epoch, widx, start = state["epoch"], state["window"], tuple(state["start"])
        doc0, tok0, in_epoch = state["doc"], state["token"], state["samples_in_epoch"]
        phase = {k: state.get(k) for k in ("items", "cap", "pending", "gen")}
        resumed = in_epoch > 0   # only saved states have yielded samples
        last = state
        base = self._base(state["slot"], state["n_slots"], state["workers"])
        while True:
            packer = BlockPacker(self.block_size)
            owed = phase["items"] is not None      # a phase owed after an elastic resume
            items = decode_items(phase["items"], self.plan) if owed else None
            cap = self._cap({**base, **phase})
            if cap is None or in_epoch < cap:
                if resumed:
                    _check_start(start, stream.slot_pieces(epoch) if items is None else items)
                windows = stream.windows(epoch, widx, start, count=not resumed, items=items,
                                         tag=(phase["gen"],) if owed else ())
                for window in windows:
                    if resumed and doc0 > len(window.docs):
                        raise ConfigError(f"The data position is corrupt: document {doc0} of window {window.index}, "
                                          f"which has {len(window.docs)} documents: resume from another checkpoint.")
                    for sample, (win, j), off, nd, nb in self._samples(window, doc0, tok0, packer, stats):
                        in_epoch += 1
                        stats["docs"] += nd
                        stats["bytes"] += nb
                        stats.update(stream.stats)
                        pos = {"epoch": win.epoch, "window": win.index, "start": list(win.start),
                               "next": list(win.next), "key": None if win.key is None else list(win.key),
                               "doc": j, "token": off, "samples_in_epoch": in_epoch, **phase, "stats": dict(stats)}
                        last = {**base, **pos}
                        yield sample, last
                        if cap is not None and in_epoch >= cap:
                            break
                    else:
                        doc0 = tok0 = 0
                        resumed = False
                        continue
                    break
                windows.close()
            stats["tokens_dropped"] += packer.drop_remainder()
            if in_epoch == 0 and not owed:
                raise ConfigError(self._empty_message(state))
            if cap is not None and in_epoch < cap and not owed and not self._warned_short:
                self._warned_short = True   # max_train_samples asks more blocks than the data holds: say so, once
                log.warning("The data gave reader %d only %d of the %d blocks its epoch should have "
                            "(max_train_samples=%d): epochs are shorter than asked.", state["slot"], in_epoch, cap,
                            self.max_samples)
            epoch, phase = self._next_phase(epoch, phase)
            widx, start, doc0, tok0, in_epoch, resumed = 0, (0, 0), 0, 0, 0, False
            if not self.cycle:   # publish the final counters; a new iter() starts the next epoch
                stats.update(stream.stats)
                yield None, {**last, **epoch_start(epoch, **phase), "stats": dict(stats)}
                return

    def _advanced(self, state: dict, at_least: int = 0) -> dict:
        """`state` moved to the start of its next epoch (or owed phase); a regular epoch at least `at_least`."""
        epoch, phase = self._next_phase(state["epoch"], state)
        if phase["items"] is None:
            epoch = max(epoch, at_least)
        return {**state, **epoch_start(epoch, **phase)}

    @staticmethod
    def _next_phase(epoch: int, phase: dict):
        """The epoch after `epoch`: the next phase owed after an elastic resume, else a regular epoch."""
        pending = json.loads(phase["pending"] or "[]")
        if pending:
            e, items, cap = pending.pop(0)
            return e, {"items": items, "cap": cap, "pending": json.dumps(pending) if pending else None,
                       "gen": phase["gen"]}
        return epoch + 1, {"items": None, "cap": None, "pending": None, "gen": phase["gen"]}

    def _empty_message(self, state) -> str:
        where = f"rank {self.rank}" + (f", worker {state['slot'] % state['workers']}" if state["workers"] > 1 else "")
        return (f"Dataset '{self.args.dataset_name}' gave {where} no complete block of {self.block_size} tokens in an "
                f"epoch ({len(self.plan.pieces)} piece(s) for {state['n_slots']} reader(s)): use more data, a smaller "
                "dataset_block_size, or fewer workers/processes.")

    def _samples(self, window, doc0: int, tok0: int, packer: BlockPacker, stats: dict):
        """(sample, next document ref, token offset, docs completed, bytes completed) for one window."""
        for b0, b1 in _runs(window.docs, _batches(window.nbytes, doc0, self.args.dataset_tokenize_batch_size)):
            docs = window.docs[b0:b1]
            # tokens of each document already trained on: resuming inside it, or another reader's (elastic)
            skips = [max(window.skips[j], tok0 if j == doc0 else 0) for j in range(b0, b1)]
            if isinstance(docs[0], LongText):   # always alone in its run
                yield from self._long_samples(window, b0, skips[0], packer, stats)
                continue
            t0 = time.perf_counter()
            ids, lens = self.encoder.encode(docs)
            stats["tokenize_seconds"] += time.perf_counter() - t0
            refs = [(window, j) for j in range(b0, b0 + len(docs))]
            if any(skips):
                ids, lens = _cut_heads(ids, lens, skips, refs)
            if self.args.dataset_group_text:
                yield from self._blocks(packer.feed(ids, lens, window.nbytes[b0:b0 + len(docs)], refs), stats)
            else:
                yield from self._padded(ids, lens, window, b0, stats)

    @staticmethod
    def _blocks(packed, stats: dict):
        """Samples (labels = input_ids) from the packer's output, counted."""
        for block, ref, off, nd, nb in packed:
            stats["tokens"] += len(block)
            stats["blocks"] += 1
            t = torch.from_numpy(block.astype(np.int64))
            yield {"input_ids": t, "labels": t.clone()}, ref, off, nd, nb

    def _long_samples(self, window, j: int, tok0: int, packer: BlockPacker, stats: dict):
        """A very long document, tokenized and packed part by part (memory bounded by the part size)."""
        doc, base, cut = window.docs[j], 0, 0
        for ids, last in self.encoder.encode_parts(doc):
            n = len(ids)
            if not self.args.dataset_group_text:   # one padded sample: its head, the rest counted as cut
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
            ref = ((window, j), base + skip, last)
            yield from self._blocks(packer.feed(ids[skip:], np.array([n - skip]), [doc.nbytes], [ref]), stats)
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
            yield ({"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
                    "attention_mask": torch.from_numpy(mask)}, (window, j + 1), 0, 1, window.nbytes[j])


def _check_start(start, pieces: list) -> None:
    """A saved window start must lie within the reader's pieces (else the rest of the epoch would be skipped)."""
    p, row = start
    rows = getattr(pieces[p], "num_rows", None) if p < len(pieces) else None
    if p > len(pieces) or (p == len(pieces) and row > 0) or (rows is not None and row > rows):
        raise ConfigError(f"The data position is corrupt: window start (piece {p}, row {row}) lies outside the "
                          f"reader's {len(pieces)} pieces: resume from another checkpoint.")


POSITION_INTS = ("epoch", "window", "doc", "token", "samples_in_epoch", "slot", "n_slots", "workers", "rank",
                 "world_size")


def position_problem(state) -> str | None:
    """What is wrong with a saved reader state's shape and ranges (None: nothing); see also _check_start."""
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict) or not isinstance(state.get("stats"), dict):
        return "not a reader state (settings or counters missing)"
    for k in POSITION_INTS:
        v = state.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"{k}={v!r}, not a count"
    for k in ("start", "next"):
        v = state.get(k)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x >= 0 for x in v)):
            return f"{k}={v!r}, not a (piece, row) position"
    if state["slot"] >= state["n_slots"] or state["n_slots"] % max(1, state["world_size"]):
        return f"reader {state['slot']} of {state['n_slots']} for {state['world_size']} process(es)"
    return None


def _cut_heads(ids: np.ndarray, lens: np.ndarray, skips: list[int], refs: list):
    """Drop the first skips[i] tokens of document i; its ref becomes (ref, skipped, last=True)."""
    keep, lens = np.ones(len(ids), dtype=bool), lens.copy()
    starts = np.cumsum(lens) - lens
    for i, k in enumerate(skips):
        if k > lens[i]:
            raise ConfigError(f"The data position is corrupt: token {k} of a document of {int(lens[i])} tokens (EOS "
                              "included): resume from another checkpoint.")
        if k:
            keep[starts[i]:starts[i] + k] = False
            lens[i] -= k
            refs[i] = (refs[i], k, True)
    return ids[keep], lens


def _batches(nbytes: list[int], start: int, max_docs: int, max_bytes: int = TOKENIZE_BYTES):
    """(first, end) document ranges for tokenizer calls: at most max_docs documents and about
    max_bytes of text each, so the first block comes out quickly even when documents are long."""
    b0 = start
    while b0 < len(nbytes):
        b1, size = b0, 0
        while b1 < len(nbytes) and b1 - b0 < max_docs and (b1 == b0 or size + nbytes[b1] <= max_bytes):
            size += nbytes[b1]
            b1 += 1
        yield b0, b1
        b0 = b1


def _runs(docs: list, batches):
    """Split tokenizer batches so that every very long document (LongText) is a run of its own."""
    for b0, b1 in batches:
        start = b0
        for j in range(b0, b1):
            if isinstance(docs[j], LongText):
                if start < j:
                    yield start, j
                yield j, j + 1
                start = j + 1
        if start < b1:
            yield start, b1


def plan_dataset(args: DataArguments, split: str | None = None) -> Plan:
    """Resolve `dataset_name` and list the pieces of the split (default dataset_train_split)."""
    policy = args.retry_policy()
    shards = resolve_shards(args.dataset_name, args.dataset_config_name, split or args.dataset_train_split, policy)
    plan = plan_pieces(shards, args.dataset_text_field, policy, args.dataset_skip_bad_shards)
    plan.source = plan_source(args, split)
    return plan


def plan_source(args: DataArguments, split: str | None = None) -> dict:
    """What a plan was made from: a saved plan serves a resume only when these are the same."""
    return {"dataset_name": args.dataset_name, "config": args.dataset_config_name,
            "split": split or args.dataset_train_split, "text_field": args.dataset_text_field}


def build_pipeline(args: DataArguments, tokenizer, seed: int = 0, rank: int | None = None,
                   world_size: int | None = None, split: str = "train", max_positions: int | None = None,
                   max_samples: int | None = None, plan: Plan | None = None) -> StreamingBlocks:
    """The streaming dataset of blocks for `rank` of `world_size` (default: RANK/WORLD_SIZE env).

    Args:
        args: the dataset arguments (dataset_name, dataset_block_size, ...).
        tokenizer: a Hugging Face tokenizer with an eos_token.
        seed: fixes shard order and shuffle windows; same seed, same order, on any machine.
        split: "train", or "eval": the test split if the dataset has one, else the held-out documents.
        max_positions: the model's positions, to check the block size against.
        max_samples: samples per epoch over all ranks (max_train_samples / max_eval_samples).
        plan: shards and pieces already resolved (shared by train and eval pipelines).
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world_size {world_size}.")
    if args.dataset_mixture:
        from .mixture import build_mixture
        return build_mixture(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples)
    block_size = resolve_block_size(args, tokenizer, max_positions)
    mode = "train"
    if split == "eval":
        if args.dataset_holdout_fraction > 0:
            mode = "holdout"
        else:
            plan = plan_dataset(args, args.dataset_test_split)
            mode = "all"
    elif split != "train":
        raise ConfigError(f"split must be 'train' or 'eval', not {split!r}.")
    elif max_samples is not None and max_samples < world_size:
        raise ConfigError(f"max_train_samples={max_samples} leaves some of the {world_size} processes without a "
                          f"block per epoch: use max_train_samples >= {world_size}.")
    if plan is None:
        plan = plan_dataset(args)
    return StreamingBlocks(plan, args, build_encoder(tokenizer), block_size, seed, rank, world_size, mode, max_samples)


class ArrayBatch:
    """A batch as NumPy arrays on its way from a worker: pickled by value through the worker's queue.

    torch would move tensors through shared memory, one file-descriptor hand-over (a socket connection)
    per tensor, which costs the consuming process about twice as much per batch as unpickling 2 x 64 KB.
    The loader's pin-memory thread calls `pin_memory` (off the training thread); otherwise the iterator
    turns it into tensors (zero-copy).
    """

    def __init__(self, arrays: dict):
        self.arrays = arrays

    def tensors(self) -> dict:
        return {k: torch.from_numpy(v) for k, v in self.arrays.items()}

    def pin_memory(self, device=None) -> dict:
        return {k: t.pin_memory() for k, t in self.tensors().items()}


def collate_arrays(samples: list[dict]) -> ArrayBatch:
    """Stack the samples' tensors into arrays (in the worker)."""
    return ArrayBatch({k: np.stack([s[k].numpy() for s in samples]) for k in samples[0]})


class _TimedIterator:
    """Adds the seconds spent waiting for each batch to the loader's `wait_seconds`."""

    def __init__(self, it, loader):
        self.it, self.loader = it, loader

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            batch = next(self.it)
            return batch.tensors() if isinstance(batch, ArrayBatch) else batch
        except ConfigError as err:
            raise own_message(err) from None
        finally:
            self.loader.wait_seconds += time.perf_counter() - t0


def own_message(err: ConfigError) -> ConfigError:
    """An lmstream error re-raised by a DataLoader worker ("Caught Unreadable in DataLoader worker process 1.
    Original Traceback ...") as its own sentence first, the worker named after it."""
    text = str(err)
    m = re.match(r"Caught \w+ in (DataLoader worker process \d+)\.", text)
    if not m:
        return err
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    at = text.rfind(prefix)
    body = text[at + len(prefix):] if at >= 0 else text.strip().splitlines()[-1]
    sentence = " ".join(line.strip() for line in body.strip().splitlines())
    try:
        return type(err)(f"{sentence} (in {m.group(1)})")
    except TypeError:
        return ConfigError(f"{sentence} (in {m.group(1)})")


class BlockLoader(StatefulDataLoader):
    """torchdata's StatefulDataLoader (per-worker data state) that also times the consumer's waits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wait_seconds = 0.0   # time the consumer spent blocked on next(): data starvation

    def __iter__(self):
        done = getattr(self, "_iterator", None)
        if (done is not None and not self._initial_iter_for_state_dict and self.num_workers > 0
                and not self.persistent_workers and hasattr(self.dataset, "carry_over")):
            # a new iterator has new worker processes: hand them where the last ones stood (the last batch
            # yielded) with their counters, as a re-iterated in-process stream continues
            self.dataset.carry_over(done.state_dict())
        return _TimedIterator(super().__iter__(), self)

    def __len__(self) -> int:
        """Batches per epoch of a sized stream (max_train_samples): each worker's samples in batches."""
        sizes = self.dataset.epoch_samples(self.num_workers) if hasattr(self.dataset, "epoch_samples") else None
        if sizes is None:
            raise TypeError("a stream without max_train_samples has no length")
        return sum(-(-n // self.batch_size) for n in sizes)

    def set_epoch(self, epoch: int) -> None:
        """A fresh stream starts at `epoch` (the Trainer calls this before each epoch); one with a position
        (resumed, or continued from the last iterator) goes on from it. A sized stream ends with each epoch."""
        if hasattr(self.dataset, "start_epoch"):
            self.dataset.start_epoch = epoch


def build_loader(dataset: StreamingBlocks, batch_size: int, num_workers: int = 0, **kwargs) -> BlockLoader:
    """A loader over `dataset` whose state_dict holds every worker's data position."""
    if batch_size < 1:
        raise ConfigError(f"per_device_train_batch_size={batch_size} must be at least 1.")
    if num_workers > 0:
        kwargs.setdefault("prefetch_factor", 4)
        kwargs.setdefault("collate_fn", collate_arrays)
        kwargs.setdefault("worker_init_fn", ignore_signals_in_worker)
        kill_workers_at_exit()
    else:
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
    return BlockLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)


def merge_stats(loader_state: dict) -> dict:
    """Sum the counters of every worker found in a StatefulDataLoader state_dict."""
    total: dict = {}
    for st in _find_states(loader_state):
        for k, v in st["stats"].items():
            total[k] = total.get(k, 0) + v
    return total


def _find_states(obj):
    return find_dicts(obj, lambda d: d.get("version") == STATE_VERSION and "settings" in d and "stats" in d)


def stream_epoch(loader_state: dict) -> int:
    """The epoch the slowest reader (worker, or mixture source) of a loader state is in."""
    epochs = [st["epoch"] for st in reader_states(loader_state)]
    return min(epochs) if epochs else 0
