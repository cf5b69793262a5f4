"""The loader: torchdata's StatefulDataLoader over a stream, with every worker's data position in
its state_dict, batches passed from workers as NumPy arrays in groups (lmstream.stream.batches), and
the consumer's waits timed (data starvation).

    loader = build_loader(blocks, batch_size=8, num_workers=8)
    state = loader.state_dict()          # every worker's reader state (lmstream.stream.state)
"""
from __future__ import annotations

import collections
import copy
import functools
import time
import warnings

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from ..tokens import backends
from .batches import Grouped, Handout, group_size, saved_group, whole
from .collate import ArrayBatch, Arrays, collate_arrays, collate_tensors
from ..errors import ConfigError
from .logical import LogicalStream
from .serving import LogicalLoader
from .state import find_dicts, reader_states
from .workers import before_fork, ignore_signals_in_worker, kill_workers_at_exit, own_message

# torchdata's StatefulDataLoader calls a deprecated torch API on every iterator: not the user's
# concern
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
# messages (batch groups) in flight per worker, unless dataloader_prefetch_factor says otherwise
PREFETCH_FACTOR = 4


class _TimedIterator:
    """The loader's batches one by one (a loader over batch groups hands them out with
    lmstream.stream.batches.Handout); adds the seconds spent waiting for each to the loader's
    `wait_seconds`."""

    def __init__(self, it, loader, handout: Handout | None = None):
        self.it, self.loader, self.handout = it, loader, handout

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            batch = next(self.handout if self.handout is not None else self.it)
            self.loader.provenance = getattr(batch, "provenance", None)
            self.loader.taken.append(self.loader.provenance)
            return batch.tensors() if isinstance(batch, ArrayBatch) else dict(batch)
        except StopIteration:
            self.loader.publish_final_states(self.it)
            raise
        except ConfigError as err:
            raise own_message(err) from None
        finally:
            self.loader.wait_seconds += time.perf_counter() - t0


class BlockLoader(StatefulDataLoader):
    """torchdata's StatefulDataLoader (per-worker data state) that also times the consumer's waits,
    and hands out the batches of the groups its workers send (lmstream.stream.batches) one by one.

    The one adapter to torchdata's privates: a new iterator's workers must start where the last
    iterator's stood, and torchdata has no public hook for it, so `__iter__` reads `_iterator` and
    `_initial_iter_for_state_dict`; the workers' final states must reach state_dict()
    (`publish_final_states`); and state_dict() puts each worker after its last batch handed out, not
    after the last group it sent (`_handed_out`)."""

    def __init__(self, dataset, *args, micro_batch: int | None = None, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        # the stream itself
        self.stream = dataset.stream if isinstance(dataset, (Grouped, Arrays)) else dataset
        self.micro_batch = micro_batch or self.batch_size   # samples per batch handed out
        self.wait_seconds = 0.0   # time the consumer spent blocked on next(): data starvation
        # the last batch's: per sample, its segments (lmstream.tokens.packing)
        self.provenance = None
        # the provenance of the batches taken since it was cleared
        self.taken = collections.deque(maxlen=1024)
        # the current iterator's Handout (not the iterator: it refers to the loader)
        self.handout = None

    def __iter__(self):
        done = getattr(self, "_iterator", None)
        if (done is not None and not self._initial_iter_for_state_dict and self.num_workers > 0
                and not self.persistent_workers and hasattr(self.stream, "carry_over")):
            # a new iterator has new worker processes: hand them where the last ones stood (the last
            # batch handed out) with their counters, as a re-iterated in-process stream continues
            self.stream.carry_over(self.state_dict())
        if self.num_workers > 0:
            before_fork()
        it = super().__iter__()
        handout = None
        if self.num_workers > 0 and isinstance(self.dataset, Grouped):
            handout = Handout(it, self.num_workers,
                              functools.partial(BlockLoader.publish_final_states, it))
        # no reference cycle: a fork must not inherit an old iterator as garbage
        self.handout = handout
        return _TimedIterator(it, self, handout)

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state`; a loader whose workers send groups keeps the grouping the state was
        saved with."""
        if isinstance(self.dataset, Grouped):
            sizes = [saved_group(d)
                     for d in find_dicts(state, lambda d: saved_group(d) is not None)]
            # data states without a group size: one batch a message
            if sizes or reader_states(state):
                self.dataset.group = max(sizes, default=1)
        super().load_state_dict(state)

    def state_dict(self) -> dict:
        state = super().state_dict()
        handout = self.handout
        return state if handout is None else self._handed_out(state, *handout.where())

    def _handed_out(self, state: dict, positions: dict, turn: int | None) -> dict:
        """torchdata's state puts each worker after the last group it sent; a worker stands after
        its last batch handed out (lmstream.stream.batches.Handout), and the next batch is `turn`'s:
        a resumed loader asks it first."""
        state = copy.deepcopy(state)
        snap = state["_snapshot"]
        for worker, position in positions.items():
            snap["_worker_snapshots"][f"worker_{worker}"]["dataset_state"] = position
        if turn is not None:
            snap["_last_yielded_worker_id"] = (turn - 1) % self.num_workers
        return state

    @staticmethod
    def publish_final_states(it) -> None:
        """At the end of the data, make the workers' last states (sent with their end-of-data
        signal) part of state_dict(). torchdata refreshes its snapshot only when it yields a batch,
        so the state of a worker that ends after the last batch (always, with one worker) was left
        out: its epoch's end, its dropped remainder."""
        snap, workers = getattr(it, "_snapshot", None), getattr(it, "_worker_snapshots", None)
        if not snap or not workers or it._num_yielded != snap[it._SNAPSHOT_STEP]:
            # in-process, or a snapshot that is not of the last batch: nothing to refresh safely
            return
        it._update_snapshot(snap[it._SNAPSHOT_STEP], snap[it._LAST_YIELDED_WORKER_ID],
                            it._num_workers, snap[it._MAIN_SNAPSHOT], workers)

    def __len__(self) -> int:
        """Batches per epoch of a sized stream (max_train_samples): each worker's samples in
        batches."""
        epoch_samples = getattr(self.stream, "epoch_samples", None)
        sizes = epoch_samples(self.num_workers) if epoch_samples is not None else None
        if sizes is None:
            raise TypeError("a stream without max_train_samples has no length")
        return sum(-(-n // self.micro_batch) for n in sizes)

    def set_epoch(self, epoch: int) -> None:
        """A fresh stream starts at `epoch` (the Trainer calls this before each epoch); one with a
        position (resumed, or continued from the last iterator) goes on from it. A sized stream ends
        with each epoch."""
        if hasattr(self.stream, "start_epoch"):
            self.stream.start_epoch = epoch


def init_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: signals are the main process's; the node's cores are shared
    between workers."""
    ignore_signals_in_worker(worker_id)
    info = torch.utils.data.get_worker_info()
    backends.limit_threads(backends.reader_threads(info.num_workers))


def build_loader(dataset, batch_size: int, num_workers: int = 0, **kwargs) -> BlockLoader:
    """A loader over `dataset` whose state_dict holds every worker's data position.

    With workers and no collate_fn of the caller's, a resumable stream's batches are made in the
    workers and sent in groups (lmstream.stream.batches.Grouped: `group` batches a message, default
    about GROUP_TOKENS tokens)."""
    if batch_size < 1:
        raise ConfigError(f"per_device_train_batch_size={batch_size} must be at least 1.")
    group = kwargs.pop("group", None)
    if isinstance(dataset, LogicalStream):   # every step the same blocks on any topology
        return LogicalLoader(dataset, batch_size, num_workers,
                             prefetch_factor=kwargs.get("prefetch_factor") or PREFETCH_FACTOR,
                             worker_init_fn=kwargs.get("worker_init_fn", init_worker))
    if hasattr(dataset, "set_batches"):   # a mixture's schedule counts steps in batches
        dataset.set_batches(batch_size)
    if num_workers == 0:
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
        if "collate_fn" not in kwargs and Grouped.suits(dataset):
            return BlockLoader(Arrays(dataset), batch_size=batch_size, num_workers=0,
                               collate_fn=collate_tensors, **kwargs)
        kwargs.setdefault("collate_fn", collate_tensors)
        return BlockLoader(dataset, batch_size=batch_size, num_workers=0, **kwargs)
    kwargs.setdefault("prefetch_factor", PREFETCH_FACTOR)
    kwargs.setdefault("worker_init_fn", init_worker)
    kill_workers_at_exit()
    if "collate_fn" in kwargs or not Grouped.suits(dataset):
        kwargs.setdefault("collate_fn", collate_arrays)
        return BlockLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
    group = group or group_size(batch_size, getattr(dataset, "block_size", None))
    return BlockLoader(Grouped(dataset, batch_size, group), batch_size=None,
                       num_workers=num_workers, collate_fn=whole, micro_batch=batch_size, **kwargs)
