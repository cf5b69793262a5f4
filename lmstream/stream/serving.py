"""The loader of a LogicalStream (lmstream.stream.logical): DataLoader workers serve whole logical
readers and send their blocks in groups; the training process hands them out in the rank's order,
`batch_size` to a micro-batch, whatever the number of workers.

    loader = build_loader(logical_stream, batch_size=8, num_workers=8)   # a LogicalLoader
    state = loader.state_dict()      # the rank's position and each of its readers' states

Worker v of V makes the rank's blocks i = v, v + V, ... (lmstream.stream.logical.LogicalStream
.blocks); the training process takes block i from worker i % V. A checkpoint between two
micro-batches holds, for each logical reader, its state after its last block handed out: blocks made
ahead are made again after a resume, none is skipped.
"""
from __future__ import annotations

import collections
import logging
import time

import numpy as np
import torch

from ..errors import ConfigError
from .batches import GROUP_TOKENS, whole
from .collate import PROVENANCE, PinnedBatch, collate_arrays, collate_tensors
from .logical import LogicalStream, as_json, serving_workers
from .workers import before_fork, kill_workers_at_exit, own_message

log = logging.getLogger("lmstream")


class Chunk:
    """Consecutive blocks of one worker (its rank indices first, first + V, ...): the blocks as one
    ArrayBatch, and per block its logical reader and that reader's state after it."""

    def __init__(self, worker: int, indices: list, readers: list, states: list, batch):
        self.worker, self.indices, self.readers, self.states = worker, indices, readers, states
        self.batch = batch

    def items(self):
        """(index, reader, state, arrays of the block, its provenance) of each block."""
        arrays, prov = self.batch.arrays, self.batch.provenance
        for j, (i, r, st) in enumerate(zip(self.indices, self.readers, self.states)):
            yield i, r, st, {k: v[j] for k, v in arrays.items()}, (None if prov is None
                                                                   else prov[j])


class Served(torch.utils.data.IterableDataset):
    """What a DataLoader worker runs: its logical readers' blocks, in Chunks of 1, 2, 4, ... up to
    `group` blocks (the first block comes at once)."""

    def __init__(self, stream: LogicalStream, workers: int, group: int):
        self.stream, self.workers, self.group = stream, workers, group

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rows, limit = [], 1
        for i, r, sample, state in self.stream.blocks(worker, self.workers):
            rows.append((i, r, sample, state))
            if len(rows) == limit:
                yield self._chunk(worker, rows)
                rows, limit = [], min(2 * limit, self.group)
        if rows:
            yield self._chunk(worker, rows)

    def _chunk(self, worker: int, rows: list) -> Chunk:
        batch = collate_arrays([s for _, _, s, _ in rows], self.stream.id_type)
        return Chunk(worker, [i for i, *_ in rows], [r for _, r, _, _ in rows],
                     [st for *_, st in rows], batch)


def rows_batch(rows: list) -> PinnedBatch:
    """Blocks from worker chunks as one micro-batch of int64 tensors, their provenance beside; a
    block sent without labels (collate_arrays leaves out labels equal to the ids) gets its ids."""
    keys = {k for r in rows for k in r[3]} | {"labels"}
    arrays = {k: torch.from_numpy(np.stack([r[3].get(k, r[3]["input_ids"]) for r in rows])
                                  .astype(np.int64)) for k in sorted(keys)}
    return PinnedBatch(arrays, [r[4] for r in rows])


class LogicalLoader:
    """A rank's micro-batches from its logical readers, in the order that makes every optimizer
    step the same set of blocks on any topology (lmstream.stream.logical); the loader interface the
    Trainer and lmstream's tools use (state_dict, load_state_dict, provenance, wait_seconds)."""

    def __init__(self, stream: LogicalStream, batch_size: int, num_workers: int = 0,
                 prefetch_factor: int | None = None, worker_init_fn=None, **_):
        self.stream, self.batch_size = stream, batch_size
        stream.set_batches(batch_size)
        self.num_workers = serving_workers(stream.readers, stream.world_size, num_workers)
        if self.num_workers < num_workers:
            log.warning("dataloader_num_workers=%d serves the %d logical readers of this process "
                        "unevenly: %d worker(s) serve them (a worker holds whole readers; the "
                        "blocks are the same).", num_workers,
                        stream.readers // stream.world_size, self.num_workers)
        self.prefetch_factor, self.worker_init_fn = prefetch_factor, worker_init_fn
        self.handed, self.states = stream.handed, {}
        self.wait_seconds, self.provenance = 0.0, None
        self.taken = collections.deque(maxlen=1024)
        # blocks per message: about GROUP_TOKENS tokens (each block's position is a ReaderState,
        # pickled small: the settings it refers to go once per message)
        self.group = max(1, GROUP_TOKENS // max(1, stream.block_size))

    def __len__(self) -> int:
        raise TypeError("a stream of logical readers has no length")

    def set_epoch(self, epoch: int) -> None:
        """Logical readers cycle their epochs on their own: nothing to do."""

    # -- positions ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.stream.state(self.handed, self.states)

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly at this rank's saved `state`, with the processes that saved it (every
        rank's states, on any topology: `place`)."""
        self.stream.place_rank(state)
        self.handed, self.states = self.stream.handed, {}

    def place(self, rank_states: list[dict]) -> None:
        """Continue from every rank's saved state (any topology that divides the readers)."""
        self.stream.place(rank_states)
        self.handed, self.states = self.stream.handed, {}

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self):
        # a new iterator goes on from the last block handed out
        self.stream.starts.update({r: as_json(st) for r, st in self.states.items()})
        self.stream.handed = self.handed
        return self._batches()

    def _source(self):
        """(index, reader, state, arrays, provenance) of this rank's blocks in order."""
        if self.num_workers == 0:
            for i, r, sample, state in self.stream.blocks(0, 1):
                yield i, r, state, sample, sample.get(PROVENANCE)
            return
        before_fork()
        kill_workers_at_exit()
        loader = torch.utils.data.DataLoader(
            Served(self.stream, self.num_workers, self.group), batch_size=None,
            num_workers=self.num_workers, collate_fn=whole, worker_init_fn=self.worker_init_fn,
            prefetch_factor=self.prefetch_factor)
        chunks = iter(loader)
        queues = [collections.deque() for _ in range(self.num_workers)]
        i = self.handed
        while True:
            q = queues[i % self.num_workers]
            while not q:
                try:
                    chunk = next(chunks, None)
                except ConfigError as err:   # a worker's, as its own sentence
                    raise own_message(err) from None
                if chunk is None:
                    return
                queues[chunk.worker].extend(chunk.items())
            yield q.popleft()
            i += 1

    def _batches(self):
        source, rows = self._source(), []
        in_process = self.num_workers == 0
        while True:
            t0 = time.perf_counter()
            try:
                while len(rows) < self.batch_size:
                    row = next(source, None)
                    if row is None:
                        break
                    rows.append(row)
            finally:
                self.wait_seconds += time.perf_counter() - t0
            if not rows:
                return
            batch = (collate_tensors([r[3] for r in rows]) if in_process
                     else rows_batch(rows))
            for _, r, st, _, _ in rows:
                self.states[r] = st
            self.handed += len(rows)
            self.provenance = batch.provenance
            self.taken.append(self.provenance)
            yield dict(batch)
            if len(rows) < self.batch_size:
                return
            rows = []
