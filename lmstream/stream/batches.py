"""What travels from a DataLoader worker to the training process: batches as NumPy arrays, sent in
groups.

    loader = StatefulDataLoader(Grouped(stream, batch_size=8, group=32), batch_size=None,
                                num_workers=2, ...)
    # BatchGroup: up to 32 consecutive batches of one worker
    for group in loader:
        for batch, state in zip(group.batches, group.states): ...

A message between processes costs about a quarter of a millisecond on a small machine, as much as
packing a batch of 8 x 1024 tokens: a worker therefore sends its batches in groups of about
GROUP_TOKENS tokens, each batch with the worker's stream state after it. `Handout` gives the batches
out one per worker in turn (the order of one batch a message, whatever the group size), and a
checkpoint taken inside a group records every worker's exact position
(lmstream.stream.loader.BlockLoader.state_dict). How samples become a batch:
lmstream.stream.collate.
"""
from __future__ import annotations

import collections

import torch

from .collate import arrays, collate_arrays

GROUP_TOKENS = 1 << 18   # tokens per message from a worker (0.5 MB of uint16 ids, 1 MB of int32)
MAX_GROUP = 32           # batches per message at most (each carries its stream state, about 2.5 KB)
GROUP_KEY = "group_pos"  # in a worker's saved state: batches of its current group already made
# and batches per group: a resumed run keeps the grouping (the order) it started with
SIZE_KEY = "group_size"


def group_size(batch_size: int, block_size: int | None) -> int:
    """Batches per message for batches of `batch_size` samples of `block_size` tokens."""
    return max(1, min(MAX_GROUP, GROUP_TOKENS // max(1, batch_size * (block_size or 1024))))


class BatchGroup:
    """Consecutive batches of one worker in one message, each with that worker's stream state after
    it, and the state before the first."""

    def __init__(self, worker: int, batches: list, states: list, start: dict):
        self.worker, self.batches, self.states, self.start = worker, batches, states, start

    def pin_memory(self, device=None) -> "BatchGroup":
        # the loader's pin-memory thread: every batch
        return BatchGroup(self.worker, [b.pin_memory(device) for b in self.batches], self.states,
                          self.start)


class Handout:
    """The batches of the groups a loader's workers send, handed out one batch per worker in turn:
    the order of a loader whose workers each send one batch at a time (torchdata's round robin, a
    worker whose stream ended left out), whatever the group size.

    torchdata yields the groups in that same round robin, so a worker it passes over has ended.
    `where()` gives each worker's position after its last batch handed out, and the worker whose
    batch is next: what a checkpoint must hold (the groups pulled ahead are not trained on yet)."""

    def __init__(self, groups, workers: int, on_end=None):
        # on_end(): called once every stream ended
        self.groups, self.n, self.on_end = groups, workers, on_end
        self.queues = {w: collections.deque()
                       for w in range(workers)}   # per worker: [group, batches handed]
        self.handed: dict = {}   # worker -> its stream state after its last batch handed out
        self.ended: set = set()
        self.turn = None         # the worker whose batch is next (None: before the first group)
        self.pulled = None       # the worker of the last group pulled
        self.exhausted = False   # every worker's stream ended

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.turn is None:
                if not self._pull():
                    raise StopIteration
                continue
            w, q = self.turn, self.queues[self.turn]
            while q and q[0][1] == len(q[0][0].batches):
                q.popleft()
            if q:
                q[0][1] += 1
                group, k = q[0][0], q[0][1] - 1
                self.handed[w] = group.states[k]
                self.turn = self._after(w)
                return group.batches[k]
            if w in self.ended or not self._pull():
                self.ended.add(w)
                self.turn = self._after(w)
                if self.turn is None:
                    raise StopIteration

    def _pull(self) -> bool:
        """One group from torchdata into its worker's queue; False once every worker's stream has
        ended."""
        if self.exhausted:
            return False
        try:
            group = next(self.groups)
        except StopIteration:
            self.exhausted = True
            self.ended.update(range(self.n))
            if self.on_end is not None:
                self.on_end()
            return False
        v = group.worker
        if self.pulled is not None:   # the workers torchdata passed over have ended
            w = (self.pulled + 1) % self.n
            while w != v:
                self.ended.add(w)
                w = (w + 1) % self.n
        self.pulled = v
        self.queues[v].append([group, 0])
        if self.turn is None:
            self.turn = v
        return True

    def _after(self, w: int) -> int | None:
        """The next worker in turn after w that may still give a batch (None: none)."""
        for d in range(1, self.n + 1):
            v = (w + d) % self.n
            if v not in self.ended or self._pending(v):
                return v
        return None

    def _pending(self, w: int) -> list:
        """Worker w's groups pulled from torchdata with batches not yet handed out."""
        return [g for g, k in self.queues[w] if k < len(g.batches)]

    def where(self) -> tuple[dict, int | None]:
        """({worker: its position} for the workers whose state in torchdata's snapshot is past what
        was handed out, the worker whose batch is next). A worker's group states are made with each
        batch: torchdata's, made after a worker sent its group, is past the batches not handed out
        yet, and may be past the end of its stream."""
        out = {}
        for w in range(self.n):
            pending = self._pending(w)
            if w in self.ended and not pending:
                # torchdata holds its final state (the epoch's end, the dropped remainder)
                continue
            if w in self.handed:
                out[w] = self.handed[w]
            elif pending:
                out[w] = pending[0].start
        return out, self.turn


class Grouped(torch.utils.data.IterableDataset):
    """A stream's samples as BatchGroups of up to `group` batches of `batch_size` (collate_arrays,
    in the worker).

    A group ends where the worker's count of batches reaches a multiple of `group`, a count its
    saved state keeps (GROUP_KEY): a run resumed inside a group first finishes that group, so the
    batches come in the order of the uninterrupted run. An iterator's first messages are parts of
    groups, of 1, 2, 4, ... batches: the first batch comes as soon as it is made, and a loader read
    for a few batches only (inspect, a notebook) has its workers make few more. Everything else
    (state, epochs, sizes) is the stream's."""

    def __init__(self, stream, batch_size: int, group: int):
        self.stream, self.batch_size, self.group = stream, batch_size, group
        self.pos = 0   # batches of the current group made: restored by load_state_dict

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        yield from self._groups(worker)

    def _groups(self, worker: int):
        batches, states, samples, start = [], [], [], self.state_dict()
        # an iterator's first messages hold 1, 2, 4, ... batches: its first batch comes without a
        # group's wait
        limit = 1
        id_type = getattr(self.stream, "id_type", None)
        for sample in arrays(self.stream):
            samples.append(sample)
            if len(samples) == self.batch_size:
                batches.append(collate_arrays(samples, id_type))
                samples = []
                self.pos = (self.pos + 1) % self.group
                states.append(self.state_dict())
                if self.pos == 0 or len(batches) == limit:
                    yield BatchGroup(worker, batches, states, start)
                    batches, states, start = [], [], states[-1]
                    limit = min(2 * limit, self.group)
        self.pos = 0   # the stream ended: a new iterator starts a new group
        if samples:   # the last batch may be short, as a DataLoader's without drop_last
            batches.append(collate_arrays(samples, id_type))
            states.append(self.state_dict())
        if batches:
            states[-1][GROUP_KEY] = 0
            yield BatchGroup(worker, batches, states, start)

    def state_dict(self) -> dict:
        return {**self.stream.state_dict(), GROUP_KEY: self.pos, SIZE_KEY: self.group}

    @staticmethod
    def suits(dataset) -> bool:
        """Only a resumable stream is grouped (its position is what each batch carries)."""
        return (isinstance(dataset, torch.utils.data.IterableDataset)
                and hasattr(dataset, "state_dict"))

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        # saved before groups existed: one batch a message, as then
        self.group = saved_group(state) or 1
        self.pos = state.pop(GROUP_KEY, 0) % self.group
        state.pop(SIZE_KEY, None)
        self.stream.load_state_dict(state)

    def __len__(self) -> int:   # a sized stream's samples (the Trainer counts examples with it)
        return len(self.stream)


def whole(item):
    """The collate_fn of a loader whose workers send whole messages (Grouped's BatchGroups, a
    logical loader's chunks): the item as it came."""
    return item


def saved_group(state: dict) -> int | None:
    """The batches per group a worker's saved state was made with (None: saved before groups
    existed)."""
    return state.get(SIZE_KEY)
