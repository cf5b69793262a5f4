"""Logical readers: every optimizer step trains on the same blocks, whatever the processes and
DataLoader workers that serve them.

    blocks = build_pipeline(dataclasses.replace(args, dataset_logical_readers=64), tokenizer)
    loader = build_loader(blocks, batch_size=8, num_workers=8)   # lmstream.stream.serving

A run has R logical readers, fixed when it starts for the first time. Reader l of R is a stream of
blocks that is a pure function of the seed, the plan and l (lmstream.corpus.documents deals it the
pieces of slot l of R; a mixture draws its sources from (seed, l, n)). The run's blocks are their
round robin: global block k is block k // R of reader k % R, and optimizer step s trains on global
blocks [K0 + s G, K0 + (s + 1) G), G = processes x batch x accumulation.

Rank r of W processes takes k = K0 + r, K0 + r + W, ... and hands them out in that order, B to a
micro-batch; its worker v of V takes every V-th of those. Physical reader p = v W + r (of P = W V)
thus takes k = K0 + p (mod P) and, when P divides R, all of them come from the readers
l = K0 + p (mod P): each logical reader lives in exactly one worker, and what a step holds does not
depend on W, V, B or the accumulation, only on G. A checkpoint holds every logical reader's position
and K: any topology that divides R continues from it (`place`); one that does not falls back to
lmstream.stream.elastic (lmstream.training.run decides, with a warning).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from ..errors import ConfigError
from .state import ReaderState, find_dicts

MAX_READERS = 256    # the default's ceiling (see `default_readers`)
KEY = "logical"      # a rank's loader state: {"logical": {...}, "readers": [reader states]}


def default_readers(pieces: int, world_size: int) -> int:
    """R for a run started without --dataset_logical_readers: the largest power of two up to
    MAX_READERS and up to the data's pieces (a reader with no piece of its own would read others'
    row groups for a fraction of their rows), made a multiple of the processes."""
    r = 1
    while r * 2 <= min(MAX_READERS, max(1, pieces)):
        r *= 2
    return math.lcm(r, world_size)


def serving_workers(readers: int, world_size: int, workers: int) -> int:
    """DataLoader workers per process that serve R readers evenly: the most, up to `workers`, that
    divide this process's R / W readers (0: in the training process)."""
    if readers % world_size:
        raise ConfigError(f"dataset_logical_readers={readers} cannot be split evenly between "
                          f"{world_size} processes: use a multiple of {world_size}, or 0 for one "
                          "reader per process and worker.")
    if workers <= 0:
        return 0
    per_rank = readers // world_size
    return max(d for d in range(1, min(workers, per_rank) + 1) if per_rank % d == 0)


def step_of(readers: int, origin: tuple, global_batch: int, slot: int, n: int) -> int:
    """The optimizer step (0: the first) that block n of logical reader `slot` feeds, steps counted
    from `origin` (global block, step) on (a mixture's schedule: MixtureBlocks.step_fn)."""
    return origin[1] + (n * readers + slot - origin[0]) // global_batch


class LogicalStream(torch.utils.data.IterableDataset):
    """The blocks a rank hands out, drawn from the logical readers its workers serve.

    `template` is a StreamingBlocks or MixtureBlocks of the data (built for any rank); its
    `as_reader(l, world_size=R)` is logical reader l."""

    def __init__(self, template, readers: int, rank: int, world_size: int):
        serving_workers(readers, world_size, 0)   # refuse a world size that does not divide R
        self.template = template.as_reader(0, world_size=readers)
        self.readers, self.rank, self.world_size = readers, rank, world_size
        self.plan = getattr(template, "plan", None)
        self.block_size, self.id_type = template.block_size, template.id_type
        self.names = getattr(template, "names", None)
        self.base = 0          # K0: the global block this rank's sequence starts after
        # (global block, optimizer step) steps are counted from: moved when G changes at a resume
        self.origin = (0, 0)
        self.handed = 0        # this rank's blocks handed out since K0
        self.starts: dict[int, dict] = {}   # logical reader -> its saved state
        self.batch_size, self.accumulation = 1, 1

    def __repr__(self) -> str:
        return (f"LogicalStream(rank {self.rank} of {self.world_size}, {self.readers} logical "
                f"readers, blocks of {self.block_size} tokens)")

    @property
    def streams(self) -> list:
        """A mixture's sources (of reader 0): what describes a block's source."""
        return getattr(self.template, "streams", [self.template])

    def set_batches(self, batch_size: int, accumulation: int | None = None) -> None:
        self.batch_size = batch_size
        if accumulation is not None:
            self.accumulation = accumulation

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size * self.accumulation

    # -- readers --------------------------------------------------------------------------------
    def reader(self, index: int, share: int = 1):
        """Logical reader `index`, at its saved position; `share`: readers in this process (they
        split the read-ahead budget)."""
        stream = self.template.as_reader(index, share=share)
        if hasattr(stream, "step_fn"):
            stream.step_fn = functools.partial(step_of, self.readers, self.origin,
                                               self.global_batch)
        if index in self.starts:
            stream.load_state_dict(self.starts[index])
        return stream

    def blocks(self, worker: int, workers: int):
        """(rank index i, logical reader, sample, its position after it) for physical reader `worker`
        of `workers` (1: the training process), from this rank's position on."""
        step = self.world_size
        i = self.handed + (worker - self.handed) % workers
        share = self.readers // (self.world_size * workers)
        open_: dict[int, tuple] = {}
        while True:
            index = (self.base + i * step + self.rank) % self.readers
            if index not in open_:
                stream = self.reader(index, share)
                open_[index] = (stream, stream.iterate(raw=True))
            stream, it = open_[index]
            sample = next(it, None)
            if sample is None:
                return   # a mixture source with on_exhausted=stop ended the data
            yield i, index, sample, stream.position()
            i += workers

    def initial_state(self, index: int) -> dict:
        """Logical reader `index`'s state before this rank's first block (saved, or fresh)."""
        return self.starts[index] if index in self.starts else self.template.as_reader(
            index).state_dict()

    def mine(self) -> list[int]:
        """The logical readers this rank serves."""
        return [i for i in range(self.readers) if (i - self.base - self.rank) % self.world_size
                == 0]

    # -- positions ------------------------------------------------------------------------------
    def state(self, handed: int, states: dict) -> dict:
        """This rank's loader state after `handed` blocks, its readers at `states` (or where they
        started)."""
        return {KEY: {"readers": self.readers, "rank": self.rank, "world_size": self.world_size,
                      "base": self.base, "origin": list(self.origin), "handed": handed,
                      "global_batch": self.global_batch},
                "readers": [as_json(states.get(i)) or self.initial_state(i) for i in self.mine()]}

    def place(self, rank_states: list[dict]) -> None:
        """Continue from every rank's saved state: on the processes and global batch that saved it,
        each rank exactly where it stood; on others, from the global position (a step boundary:
        every rank handed out as many blocks)."""
        heads = [s.get(KEY) for s in rank_states]
        if any(h is None for h in heads):
            raise ConfigError("The checkpoint's data positions were saved without logical readers: "
                              "resume with --dataset_logical_readers 0.")
        if any(h["readers"] != self.readers for h in heads):
            raise ConfigError(f"The checkpoint was saved with {heads[0]['readers']} logical "
                              f"readers, this run asks {self.readers}: resume with "
                              f"--dataset_logical_readers {heads[0]['readers']}.")
        by_reader = {st_reader(st): st for s in rank_states for st in s["readers"]}
        if sorted(by_reader) != list(range(self.readers)):
            raise ConfigError(f"The checkpoint's data positions do not cover its {self.readers} "
                              "logical readers exactly once (a rank's file is missing or from "
                              "another run): resume from a complete checkpoint.")
        h = heads[0]
        self.origin = tuple(h["origin"])
        at_step = len({(x["base"], x["handed"]) for x in heads}) == 1   # every rank as far
        total = global_blocks(h) if at_step else None
        if (h["world_size"], h["global_batch"]) == (self.world_size, self.global_batch) and all(
                x["rank"] == r for r, x in enumerate(heads)):
            # the processes that saved it: each rank exactly where it stood
            mine = heads[self.rank]
            self.base, self.handed = mine["base"], mine["handed"]
        elif at_step:
            self.base, self.handed = total, 0
            if h["global_batch"] != self.global_batch:   # steps of another size from here on
                self.origin = (total, step_of(1, self.origin, h["global_batch"], total, 0))
        else:
            raise ConfigError("The data position was saved in the middle of an optimizer step: "
                              "resume it with the processes that saved it, or from a checkpoint "
                              "the Trainer wrote.")
        check_counts(by_reader, total, self.readers)
        self.starts = by_reader

    def place_rank(self, state: dict) -> None:
        """Continue exactly at this rank's own saved state (same processes: a loop that saved
        between two micro-batches)."""
        head = state.get(KEY) or {}
        if (head.get("rank"), head.get("world_size"), head.get("readers")) != (
                self.rank, self.world_size, self.readers):
            raise ConfigError(f"The data state belongs to rank {head.get('rank')} of "
                              f"{head.get('world_size')} with {head.get('readers')} logical "
                              f"readers, not rank {self.rank} of {self.world_size} with "
                              f"{self.readers}: pass every rank's state to place() (the training "
                              "job does).")
        self.base, self.origin, self.handed = head["base"], tuple(head["origin"]), head["handed"]
        self.starts = {st_reader(st): st for st in state["readers"]}

    @property
    def min_epoch(self) -> int:
        return getattr(self.template, "min_epoch", 0)

    @min_epoch.setter
    def min_epoch(self, epoch: int) -> None:
        """Changed data accepted at a resume: every reader starts this epoch again."""
        self.template.min_epoch = epoch

    def __iter__(self):
        for _, _, sample, _ in self.blocks(0, 1):
            yield sample


def global_blocks(head: dict) -> int:
    """The global blocks handed out by the run whose rank saved `head` (a rank state's KEY part),
    when every rank had handed out as many."""
    return head["base"] + head["handed"] * head["world_size"]


def as_json(position) -> dict | None:
    """A reader's position as its state's JSON form (a ReaderState is converted here, when a
    checkpoint asks, not with every block)."""
    return position.to_json() if isinstance(position, ReaderState) else position


def st_reader(state: dict) -> int:
    """The logical reader a saved reader (or mixture) state belongs to."""
    found = find_dicts(state, lambda d: "slot" in d and "n_slots" in d)
    return found[0]["slot"]


def check_counts(by_reader: dict, total: int | None, readers: int) -> None:
    """Each logical reader made exactly the blocks the global position says (a checkpoint whose
    files disagree would otherwise train some blocks twice or skip them)."""
    if total is None:
        return
    for index, st in by_reader.items():
        made = st["mixture_n"] if "mixture_n" in st else st["stats"]["blocks"]
        want = max(0, -(-(total - index) // readers))
        if made != want:
            raise ConfigError(f"The checkpoint's logical reader {index} made {made} blocks where "
                              f"its global position ({total} blocks) needs {want}: resume from "
                              "another checkpoint.")


def logical_readers_of(rank_states: list[dict] | None) -> int | None:
    """The logical readers a checkpoint's data positions were saved with (0: per-process readers,
    None: no positions)."""
    if not rank_states:
        return None
    head = rank_states[0].get(KEY) if isinstance(rank_states[0], dict) else None
    return head["readers"] if head else 0


def with_readers(args, readers: int):
    return dataclasses.replace(args, dataset_logical_readers=readers)
