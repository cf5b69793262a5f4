"""Weighted mixtures of streams: web text, code, books... in set proportions, resumable exactly.

    args = DataArguments(dataset_mixture='[{"name": "HuggingFaceFW/fineweb", "config": "CC-MAIN-2024-10", "weight": 0.7},'
                                         ' {"name": "codeparrot/github-code", "weight": 0.3, "on_exhausted": "stop"}]')
    blocks = build_pipeline(args, tokenizer)      # a MixtureBlocks

Each source is its own StreamingBlocks (own shards, shuffle, packing, held-out set). Block n of a
reader comes from the source drawn by an RNG seeded with (seed, reader, n), so the sequence is fixed
by the seed and needs no history to resume: the state is n plus every source's own state. The
realised token shares converge to the weights (one block = block_size tokens). A source that runs
out either starts its next epoch ("cycle", the default) or ends the whole mixture ("stop"); both are
logged.
"""
from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import torch

from ..config import DataArguments
from ..mixspec import parse_mixture, parse_schedule, source_label, weights_at
from ..errors import ConfigError
from ..tokens.provenance import with_source
from .blocks import build_stream
from .state import find_dicts, share, sum_counters

log = logging.getLogger("lmstream")
# "mix" in ASCII: keeps the source draws apart from the other RNG streams of the same seed
DRAWS = 0x6D6978
def source_arguments(args: DataArguments, src: dict) -> DataArguments:
    return dataclasses.replace(args, dataset_mixture=None, dataset_mixture_schedule=None,
                               dataset_name=src["name"],
                               dataset_config_name=src["config"], dataset_train_split=src["split"],
                               dataset_text_field=src["text_field"],
                               dataset_cycle=args.dataset_cycle and src["on_exhausted"] == "cycle")


# a source's keys, as the messages of a plain dataset name them (the flags it stands for)
_AS_KEYS = {"dataset_config_name": "config", "dataset_train_split": "split",
            "dataset_text_field": "text_field", "dataset_name": "name",
            "dataset_train_split/dataset_test_split": "split"}


def source_error(err: ConfigError, i: int, src: dict) -> ConfigError:
    """`err` of mixture source `i`, said of that source and its keys (not of the flags a plain
    dataset would have set)."""
    text = str(err)
    for flag, key in sorted(_AS_KEYS.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(flag, f"'{key}'")
    return type(err)(f"dataset_mixture source {i} ({src['name']}): {text}")


class MixtureBlocks(torch.utils.data.IterableDataset):
    """Blocks drawn from several StreamingBlocks in proportion to their weights."""

    def __init__(self, streams: list, names: list[str], weights: list[float], seed: int,
                 schedule: list | None = None, accept_change: bool = False):
        self.streams, self.names, self.seed = streams, names, seed
        w = np.asarray(weights, dtype=np.float64)
        self.cum = np.cumsum(w / w.sum())
        # dataset_mixture_schedule: [(step, weights)], the weights of each block those of the
        # optimizer step it feeds (step_of); None: the fixed weights above
        self.schedule, self.accept_change = schedule, accept_change
        # as a state's settings hold it (JSON: lists)
        self.schedule_json = ([[s, list(w)] for s, w in schedule] if schedule is not None
                              else None)
        # what maps a reader's block count to the optimizer step: blocks per batch (the loader's,
        # build_loader sets it) and batches per step (the Trainer's gradient accumulation)
        self.batch_size, self.accumulation = 1, 1
        self._base = (0, 0)                      # (n, step) the step count starts from
        self._saved_shape, self._saved_step = None, 0   # a resumed state's (batch, accumulation)
        # step_fn(slot, n) -> optimizer step: a logical reader's (lmstream.stream.logical)
        self.step_fn = None
        self.block_size = streams[0].block_size
        # one that holds every source's ids
        self.id_type = np.result_type(*[s.id_type for s in streams]).type
        # Variables for checkpointing
        self._n = 0                              # blocks yielded by this reader
        self._counts = [0] * len(streams)        # ... from each source
        self._gen = 0                            # elastic resumes so far (a new draw sequence each)
        # slot -> n, counts, gen to start from (elastic resume, carry-over)
        self._starts: dict[int, dict] = {}

    def set_batches(self, batch_size: int, accumulation: int | None = None) -> None:
        """Blocks per batch of this reader's loader, and (when given) batches per optimizer step:
        what keys the schedule to the optimizer step."""
        self.batch_size = batch_size
        if accumulation is not None:
            self.accumulation = accumulation

    def step_of(self, slot: int, n: int) -> int:
        """The optimizer step (0: the first update) that block `n` of reader `slot` feeds: the
        loader hands out its workers' batches in turn, so on every rank batch j of worker w is the
        rank's batch j * workers + w."""
        if self.step_fn is not None:
            return self.step_fn(slot, n)
        workers = self.streams[0].identity().workers
        n0, step0 = self._base
        batch = ((n - n0) // self.batch_size) * workers + slot % workers
        return step0 + batch // self.accumulation

    def as_reader(self, index: int, share: int = 1, world_size: int | None = None) -> MixtureBlocks:
        """Logical reader `index` (lmstream.stream.logical): every source's, fresh."""
        m = copy.copy(self)
        m.streams = [s.as_reader(index, share, world_size) for s in self.streams]
        m._n, m._counts, m._gen, m._base, m._starts = 0, [0] * len(self.streams), 0, (0, 0), {}
        return m

    def _pick(self, slot: int, n: int) -> int:
        key = [self.seed, DRAWS, slot, n] + ([self._gen] if self._gen else [])
        u = np.random.default_rng(key).random()
        cum = self.cum
        if self.schedule is not None:
            cum = np.cumsum(weights_at(self.schedule, self.step_of(slot, n)))
        return int(min(np.searchsorted(cum, u, side="right"), len(cum) - 1))

    def __iter__(self):
        return self.iterate()

    def iterate(self, raw: bool = False):
        """The mixture's samples; `raw`: packed blocks as bare int32 arrays
        (lmstream.stream.reader.Reader.samples)."""
        slot = self.streams[0].identity().slot
        if self._n == 0 and slot in self._starts:
            start = self._starts.pop(slot)
            self._n, self._counts, self._gen = start["n"], list(start["counts"]), start["gen"]
            self._base = tuple(start.get("base", (0, 0)))
        if self._saved_shape not in (None, self._shape()):
            # resumed with another batch size or accumulation: the step count goes on from here
            self._base, self._saved_shape = (self._n, self._saved_step), None
        iters = [s.iterate(raw) for s in self.streams]
        while True:
            k = self._pick(slot, self._n)
            try:
                sample = next(iters[k])
            # only a source with on_exhausted=stop (or dataset_cycle false) ends
            except StopIteration:
                log.warning("dataset_mixture: source %s is exhausted after %d blocks; the mixture "
                            "stops (on_exhausted=stop)", self.names[k], self._counts[k])
                return
            self._n += 1
            self._counts[k] += 1
            # the source of each segment: this source's number
            if sample.get("provenance") is not None:
                sample["provenance"] = with_source(sample["provenance"], k)
            yield sample

    def position(self) -> dict:   # what a logical reader sends with each block
        return self.state_dict()

    def state_dict(self) -> dict:
        states = [s.state_dict() for s in self.streams]
        stats = sum_counters(st["stats"] for st in states)
        for name, c in zip(self.names, self._counts):
            stats[f"tokens/{name}"] = c * self.block_size
        state = {"version": states[0]["version"],
                 "settings": {"mixture": self.names, "cum": self.cum.tolist()},
                 "mixture_n": self._n, "mixture_counts": list(self._counts),
                 "mixture_gen": self._gen, "sources": states, "stats": stats}
        if self.schedule is not None:
            slot = self.streams[0].identity().slot
            state["settings"]["schedule"] = self.schedule_json
            state.update(mixture_base=list(self._base), mixture_shape=list(self._shape()),
                         mixture_step=self.step_of(slot, self._n))
        return state

    def _shape(self) -> tuple[int, int]:
        return (self.batch_size, self.accumulation)

    def _check(self, state: dict) -> None:
        """Refuse another mixture. Sources are matched by content (shard names and content
        fingerprints, as each source checks its own state), so a copy of the same files under
        another path resumes; by name only for states saved before sources had content
        fingerprints."""
        saved = state.get("settings", {}).get("mixture")
        sources = state.get("sources", [])
        same_content = len(sources) == len(self.streams) and all(
            "data" in st.get("settings", {}) and all(st["settings"].get(k) == s.settings[k]
                                                     for k in ("data", "shards"))
            for st, s in zip(sources, self.streams))
        if len(sources) != len(self.streams) or (saved != self.names and not same_content):
            raise ConfigError(f"The data state was saved for another dataset_mixture ({saved}): "
                              "resume with the same sources.")
        saved = state["settings"].get("schedule")
        mine = self.schedule_json
        same = (saved == mine if saved is not None or mine is not None
                else np.allclose(state["settings"]["cum"], self.cum))
        if same:
            return
        if not self.accept_change:
            raise ConfigError("The data state was saved with other dataset_mixture weights or "
                              "another dataset_mixture_schedule: resume with the same ones, or "
                              "pass --dataset_accept_mixture_change true to change them from "
                              "here on.")
        log.warning("dataset_mixture: the weights change at this resume (saved: %s; now: %s)",
                    saved or state["settings"]["cum"], mine or self.cum.tolist())

    def load_state_dict(self, state: dict) -> None:
        self._check(state)
        for stream, st in zip(self.streams, state["sources"]):
            stream.load_state_dict(st)
        self._n, self._counts = state["mixture_n"], list(state["mixture_counts"])
        self._gen = state.get("mixture_gen", 0)
        self._base = tuple(state.get("mixture_base", (0, 0)))
        self._saved_step = state.get("mixture_step", 0)
        self._saved_shape = tuple(state["mixture_shape"]) if "mixture_shape" in state else None

    def resume_elastic(self, loader_states: list, num_workers: int) -> None:
        """Continue from every rank's loader states saved with another number of processes or
        workers: each source is redistributed on its own (see StreamingBlocks.resume_elastic); the
        source draws start a new sequence, and the per-source counts (logged shares) carry over,
        split between readers."""
        mixes = _mixture_states(loader_states)
        if not mixes:
            raise ConfigError("The checkpoint holds no dataset_mixture data position: resume with "
                              "the arguments of the run that saved it.")
        for m in mixes:
            self._check(m)
        for i, stream in enumerate(self.streams):
            stream.resume_elastic([m["sources"][i] for m in mixes], num_workers)
        workers = max(1, num_workers)
        n_slots, rank = self.streams[0].world_size * workers, self.streams[0].rank
        totals = [sum(m["mixture_counts"][i] for m in mixes) for i in range(len(self.streams))]
        gen = max(m.get("mixture_gen", 0) for m in mixes) + 1
        # the step count goes on from the step the slowest reader had reached
        base = (0, min(m.get("mixture_step", 0) for m in mixes))
        self._starts = {s: {"n": 0, "counts": [share(t, n_slots, s) for t in totals], "gen": gen,
                            "base": base}
                        for s in range(rank * workers, (rank + 1) * workers)}

    def carry_over(self, loader_state: dict) -> None:
        """New worker processes start where the readers of `loader_state` (the last iterator's)
        stood."""
        for m in _mixture_states(loader_state):
            slot = m["sources"][0]["slot"]
            self._starts[slot] = {"n": m["mixture_n"], "counts": m["mixture_counts"],
                                  "gen": m.get("mixture_gen", 0),
                                  "base": m.get("mixture_base", (0, 0))}
            for stream, st in zip(self.streams, m["sources"]):
                stream.carry_over(st)

    @property
    def stats(self) -> dict:
        return self.state_dict()["stats"]


def _mixture_states(obj) -> list[dict]:
    return find_dicts(obj, lambda d: "mixture_n" in d)


class ChainBlocks(torch.utils.data.IterableDataset):
    """Evaluation over a mixture: every source's held-out (or test) blocks, one source after the
    other."""

    def __init__(self, streams: list):
        self.streams = streams
        self.id_type = np.result_type(*[s.id_type for s in streams]).type

    def __iter__(self):
        return self.iterate()

    def iterate(self, raw: bool = False):
        for stream in self.streams:
            yield from stream.iterate(raw)


def build_mixture(args: DataArguments, tokenizer, seed: int, rank: int, world_size: int, split: str,
                  max_positions: int | None, max_samples: int | None):
    """MixtureBlocks for training (ChainBlocks for evaluation) over the sources of
    dataset_mixture."""
    if max_samples is not None and split == "train":
        raise ConfigError("max_train_samples is not supported with dataset_mixture: bound "
                          "the run with max_steps.")
    sources = parse_mixture(args.dataset_mixture)
    streams = []
    for i, src in enumerate(sources):
        try:
            streams.append(build_stream(source_arguments(args, src), tokenizer, seed=seed,
                                        rank=rank, world_size=world_size, split=split,
                                        max_positions=max_positions,
                                        max_samples=max_samples if split != "train" else None))
        except ConfigError as err:
            raise source_error(err, i, src) from None
    if split != "train":
        return ChainBlocks(streams)
    names = [source_label(src) for src in sources]
    log.info("dataset_mixture: %s",
             ", ".join(f"{n} weight {src['weight']} ({src['on_exhausted']} when exhausted)"
                                              for n, src in zip(names, sources)))
    schedule = (parse_schedule(args.dataset_mixture_schedule, sources)
                if args.dataset_mixture_schedule is not None else None)
    return MixtureBlocks(streams, names, [src["weight"] for src in sources], seed, schedule,
                         args.dataset_accept_mixture_change)
