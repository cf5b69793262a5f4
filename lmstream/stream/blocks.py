"""The stream of one rank: documents -> tokens -> blocks as a torch IterableDataset with exact, O(1)
resume.

    # lmstream.build_pipeline chooses this or a mixture
    blocks = build_stream(args, tokenizer, seed=0)
    for b in blocks: b["input_ids"], b["labels"]
    state = blocks.state_dict()
    fresh = build_stream(args, tokenizer, seed=0)
    fresh.load_state_dict(state)     # continues where `blocks` stood

StreamingBlocks holds the topology (which reader this process or DataLoader worker is), the reader's
state (lmstream.stream.state: a position, not a replay log) and the epoch caps;
lmstream.stream.reader runs the loop. With DataLoader workers use
`lmstream.stream.loader.build_loader`: each worker is a reader with its own state, and the loader's
state_dict holds them all. `resume_elastic` continues a checkpoint saved with another topology
(lmstream.stream.elastic).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os

import torch

from ..config import DataArguments
from .elastic import redistribute
from ..errors import ConfigError
from ..corpus.plan import Plan
from ..corpus.planfile import fingerprint
from .reader import Reader
from ..corpus.sources import plan_dataset
from .state import Identity, ReaderState, check_settings, reader_states, share
from ..tokens.packing import resolve_block_size
from ..tokens.tokenize import Encoder, encoder_for


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Blocks (or padded documents) of one rank, resumable via state_dict/load_state_dict."""

    def __init__(self, plan: Plan, args: DataArguments, encoder: Encoder, block_size: int,
                 seed: int, rank: int, world_size: int, split: str = "train",
                 max_samples: int | None = None):
        self.plan, self.args, self.encoder = plan, args, encoder
        self.block_size, self.seed, self.rank, self.world_size = block_size, seed, rank, world_size
        # "train", "holdout" (held-out docs of train) or "all" (an eval split)
        self.split = split
        self.training = split == "train"
        self.max_samples = max_samples      # samples per epoch over all ranks and workers
        # a sized stream (max_samples) ends with each epoch: the next iter() (or loader.set_epoch)
        # starts the next one, so that a Trainer's epochs are the stream's epochs
        self.cycle = self.training and args.dataset_cycle and max_samples is None
        self.start_epoch = 0                # a fresh stream starts at this epoch (set_epoch)
        # ... and at least at this one (a resume on changed data)
        self.min_epoch = 0
        self.max_len = args.dataset_max_seq_length or block_size
        # what a worker's batches carry ids as (lmstream.stream.batches)
        self.id_type = encoder.id_type
        self.settings = self._settings()
        self.reader = Reader(plan, args, encoder, block_size, self.max_len, seed, split, self.cycle,
                             self.cap, max_samples)
        # position after the last sample yielded (or loaded)
        self._state: ReaderState | None = None
        # slot -> initial state (elastic resume, or a new iterator)
        self._starts: dict[int, ReaderState] = {}
        # a logical reader (lmstream.stream.logical): reader `rank` of `world_size` wherever it runs
        self.logical = False

    def __repr__(self) -> str:
        if self.max_samples:
            size = f"{self.max_samples:,} samples per epoch"
        else:
            size = "unbounded (cycles epochs)" if self.cycle else "one epoch"
        return (f"StreamingBlocks(split {self.split!r}, rank {self.rank} of {self.world_size}, "
                f"{len(self.plan.shards)} shard(s) / {len(self.plan.pieces)} piece(s), blocks of "
                f"{self.block_size} tokens, tokenized by {self.encoder.backend}, {size})")

    def _settings(self) -> dict:
        names = [os.path.basename(s.url) for s in self.plan.shards]
        a = self.args
        return {"shards": hashlib.sha1("\n".join(names).encode()).hexdigest()[:16],
                "num_shards": len(names), "data": fingerprint(self.plan),
                "text_field": a.dataset_text_field, "split": self.split,
                "block_size": self.block_size, "group_text": a.dataset_group_text,
                "max_len": self.max_len, "seed": self.seed, "shuffle": a.dataset_shuffle,
                "shuffle_buffer": a.dataset_shuffle_buffer, "holdout": a.dataset_holdout_fraction,
                "sample_by": a.dataset_text_sample_by, "max_samples": self.max_samples,
                "vocab_size": self.encoder.vocab_size, "eos": self.encoder.eos,
                "tokenizer": self.encoder.fingerprint}

    # -- topology -------------------------------------------------------------------------------
    def identity(self) -> Identity:
        """Which reader the calling process is: this rank, or one of its DataLoader workers."""
        if self.logical:
            return self._identity(self.rank, 1)
        info = torch.utils.data.get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        return self._identity(self.rank * workers + wid, workers)

    def as_reader(self, index: int, share: int = 1, world_size: int | None = None) -> StreamingBlocks:
        """Logical reader `index` of `world_size` (lmstream.stream.logical; default: this stream's),
        fresh, the same reader in any process; `share`: logical readers in its process (they split
        the read-ahead budget)."""
        s = copy.copy(self)
        s.rank, s.logical, s._state, s._starts = index, True, None, {}
        s.world_size = world_size or self.world_size
        if share > 1:
            s.args = dataclasses.replace(self.args, dataset_readahead_bytes=max(
                1 << 20, self.args.dataset_readahead_bytes // share))
            s.reader = dataclasses.replace(self.reader, args=s.args)
        return s

    def _identity(self, slot: int, workers: int) -> Identity:
        return Identity(self.settings, self.rank, self.world_size, workers, slot,
                        self.world_size * workers)

    def _initial(self, who: Identity) -> ReaderState:
        start = self._starts.get(who.slot)
        if start is not None and start.who.n_slots == who.n_slots:
            return start
        return ReaderState(who=who)

    # -- state ----------------------------------------------------------------------------------
    def position(self) -> ReaderState | dict:
        """Where the stream stands, as it is kept (state_dict gives its JSON form): what a logical
        reader sends with each block, converted only when a checkpoint asks."""
        return self._state if self._state is not None else self.state_dict()

    def state_dict(self) -> dict:
        """Where this rank's (or this worker's) stream stands, JSON-serializable."""
        # not started: the initial position (not kept: set_epoch may still move it)
        if self._state is None:
            return self._initial(self.identity()).to_json()
        return self._state.to_json()

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the last sample of the run that saved `state`."""
        check_settings(self.settings, state)
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ConfigError(f"The data state belongs to rank {state['rank']} of "
                              f"{state['world_size']}, not rank {self.rank} of {self.world_size}: "
                              "load it with the same number of processes, or pass every rank's "
                              "state to resume_elastic (the training job does).")
        self._state = ReaderState.from_json(state)

    def resume_elastic(self, loader_states: list, num_workers: int) -> None:
        """Continue from the loader states of every rank of a run with another number of processes
        or workers: within the current epoch no document twice, none skipped (see
        lmstream.stream.elastic)."""
        old = reader_states(loader_states)
        if not old:
            raise ConfigError("The checkpoint holds no lmstream data position to resume from.")
        for st in old:
            check_settings(self.settings, st)
        workers = max(1, num_workers)

        def regular_cap(st: ReaderState):
            return self.regular_cap(st.who.slot, st.who.n_slots, st.who.world_size)

        starts = redistribute([ReaderState.from_json(st) for st in old], self.reader.documents,
                              self.plan, self.world_size * workers, regular_cap)
        mine = range(self.rank * workers, (self.rank + 1) * workers)
        self._starts = {s: ReaderState(who=self._identity(s, workers), epoch=starts[s][0],
                                       phase=starts[s][1], stats=starts[s][2]) for s in mine}
        self._state = None

    def carry_over(self, loader_state: dict) -> None:
        """New worker processes start where the readers of `loader_state` (the last iterator's)
        stood."""
        self._starts.update({st["slot"]: ReaderState.from_json(st)
                             for st in reader_states(loader_state)})

    @property
    def stats(self) -> dict:
        """Counters of what this stream produced so far (see `merge_stats` for loaders)."""
        return self.state_dict()["stats"]

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self):
        return self.iterate()

    def iterate(self, raw: bool = False):
        """The samples from the stream's position on; `raw`: packed blocks as bare int32 arrays
        (Reader.samples)."""
        who = self.identity()
        state = self._state
        if state is None and who.slot in self._starts:
            state = self._initial(who)
        fresh = state is None
        if state is None or state.who.n_slots != who.n_slots or state.who.slot != who.slot:
            if state is not None and state.started:
                raise ConfigError(f"The data state was saved with {state.who.workers} DataLoader "
                                  f"worker(s) per rank, this run has {who.workers}: use "
                                  f"dataloader_num_workers={state.who.workers}, or resume_elastic "
                                  "(the training job does).")
            state = self._initial(who)
        # set_epoch picks the epoch a *fresh* stream starts at; a stream with a position (loaded,
        # carried over from the last iterator, or owed after an elastic resume) goes on from it:
        # nothing is skipped
        first = max(self.start_epoch, self.min_epoch)
        while fresh and state.epoch < first:
            state = state.advanced(first)
        while (cap := self.cap(state)) is not None and state.samples_in_epoch >= cap:
            if cap == 0 and not state.phase.owed:
                return   # fewer samples per epoch than readers: this one has none, in any epoch
            # the epoch's last sample was here (its end not yet published)
            state = state.advanced()
        for sample, state in self.reader.samples(state, raw):
            self._state = state
            if sample is not None:
                yield sample

    # -- epoch sizes ------------------------------------------------------------------------------
    def cap(self, state: ReaderState) -> int | None:
        """Samples in the state's epoch: its own cap in a phase owed after an elastic resume, else
        the regular one."""
        if state.phase.owed:
            return state.phase.cap
        return self.regular_cap(state.who.slot, state.who.n_slots, state.who.world_size)

    def regular_cap(self, slot: int, n_slots: int, world_size: int) -> int | None:
        """Samples of a reader's epoch: max_samples split between ranks, then between the rank's
        workers.

        For training every rank gets max_samples // world_size (equal epochs on every rank: no rank
        waits for a step the others never take); evaluation spreads them all."""
        if self.max_samples is None:
            return None
        if not self.training:
            return share(self.max_samples, n_slots, slot)
        workers = n_slots // world_size
        return share(self.max_samples // world_size, workers, slot % workers)

    def __len__(self) -> int:
        """Samples per epoch of this rank, for a sized stream (max_samples, training); else
        TypeError."""
        if self.max_samples is None or not self.training:
            raise TypeError("a stream without max_train_samples has no length")
        return self.max_samples // self.world_size

    def epoch_samples(self, num_workers: int) -> list[int] | None:
        """Samples of one epoch of each of this rank's readers (a sized stream), else None."""
        if self.max_samples is None or not self.training:
            return None
        workers = max(1, num_workers)
        return [self.regular_cap(self.rank * workers + w, self.world_size * workers,
                                 self.world_size)
                for w in range(workers)]


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the number of processes: as given, else RANK and WORLD_SIZE."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world_size {world_size}.")
    return rank, world_size


def build_stream(args: DataArguments, tokenizer, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, split: str = "train",
                 max_positions: int | None = None, max_samples: int | None = None,
                 plan: Plan | None = None, encoder=None) -> StreamingBlocks:
    """The streaming dataset of blocks of one source for `rank` of `world_size` (default:
    RANK/WORLD_SIZE env); `lmstream.build_pipeline` (lmstream.stream.pipeline) also builds mixtures.

    Args:
        args: the dataset arguments (dataset_name, dataset_block_size, ...).
        tokenizer: a Hugging Face tokenizer with an eos_token.
        seed: fixes shard order and shuffle windows; same seed, same order, on any machine.
        split: "train", or "eval": the test split if the dataset has one, else the held-out
        documents.
        max_positions: the model's positions, to check the block size against.
        max_samples: samples per epoch over all ranks (max_train_samples / max_eval_samples).
        plan: the training split's shards and pieces, already resolved (shared by the train pipeline
        and the held-out evaluation; an evaluation on the test split plans that split itself).
        encoder: the Encoder `encoder_for(args, tokenizer)` gives, when already at hand (it reads
        the tokenizer's JSON: tens of milliseconds for GPT-2's, more for larger vocabularies).
    """
    rank, world_size = rank_and_world(rank, world_size)
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
        raise ConfigError(f"max_train_samples={max_samples} leaves some of the {world_size} "
                          "processes without a block per epoch: use max_train_samples >= "
                          f"{world_size}.")
    if plan is None:
        plan = plan_dataset(args)
    encoder = encoder or encoder_for(args, tokenizer)
    return StreamingBlocks(plan, args, encoder, block_size, seed, rank, world_size, mode,
                           max_samples)
