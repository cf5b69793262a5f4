"""The loader: torchdata's StatefulDataLoader over a stream, with every worker's data position in its state_dict,
batches passed from workers as NumPy arrays, and the consumer's waits timed (data starvation).

    loader = build_loader(blocks, batch_size=8, num_workers=8)
    state = loader.state_dict()          # every worker's reader state (lmstream.state)
"""
from __future__ import annotations

import collections
import functools
import re
import time
import warnings

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from . import backends
from .errors import ConfigError
from .longtext import warm_up
from .provenance import BatchProvenance
from .reader import PROVENANCE   # a sample's segments: not a tensor, kept beside the batch
from .stopping import ignore_signals_in_worker, kill_workers_at_exit

# torchdata's StatefulDataLoader calls a deprecated torch API on every iterator: not the user's concern
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
PREFETCH_FACTOR = 4   # batches in flight per worker, unless dataloader_prefetch_factor says otherwise


class ArrayBatch:
    """A batch as NumPy arrays on its way from a worker: pickled by value through the worker's queue.

    torch would move tensors through shared memory, one file-descriptor hand-over (a socket connection)
    per tensor, which costs the consuming process about twice as much per batch as unpickling the arrays.
    Token ids travel as int32 (half the bytes of int64) and labels equal to input_ids (packed blocks) are not
    sent at all: the consumer makes them, a quarter of the bytes through the pipe. The loader's pin-memory thread
    calls `pin_memory` (off the training thread); otherwise the iterator turns it into tensors.
    """

    def __init__(self, arrays: dict, labels_are_inputs: bool = False, packed: tuple | None = None):
        self.arrays, self.labels_are_inputs = arrays, labels_are_inputs
        self.packed = packed   # the samples' provenance, BatchProvenance.pack's (rows, starts): plain, cheap to send

    @property
    def provenance(self):
        """Each sample's segments (lmstream.provenance), or None."""
        return BatchProvenance(*self.packed) if self.packed is not None else None

    def tensors(self) -> dict:
        out = {k: torch.from_numpy(v.astype(np.int64)) for k, v in self.arrays.items()}
        if self.labels_are_inputs:
            out["labels"] = out["input_ids"].clone()
        return out

    def pin_memory(self, device=None) -> "PinnedBatch":
        return PinnedBatch({k: t.pin_memory() for k, t in self.tensors().items()}, self.provenance)


class PinnedBatch(dict):
    """A batch's tensors (pinned by the loader's pin-memory thread, or collated in process), with its provenance
    beside them: a dict to everything else (the Trainer, accelerate's skip_first_batches)."""

    def __init__(self, tensors=(), provenance: list | None = None):
        super().__init__(tensors)
        self.provenance = provenance


def collate_tensors(samples: list[dict]) -> PinnedBatch:
    """In process (no workers): the samples' tensors stacked, their provenance beside them."""
    return PinnedBatch({k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != PROVENANCE},
                       [s.get(PROVENANCE) for s in samples])


def collate_arrays(samples: list[dict]) -> ArrayBatch:
    """Stack the samples' tensors into int32 arrays (in the worker); labels only when they differ from input_ids.
    The samples' provenance travels beside them as one array and offsets (BatchProvenance.pack)."""
    if "labels" not in samples[0] and isinstance(samples[0].get("input_ids"), np.ndarray):   # raw packed blocks
        return ArrayBatch({"input_ids": np.stack([s["input_ids"] for s in samples])}, True,
                          BatchProvenance.pack([s.get(PROVENANCE) for s in samples]))
    arrays = {k: np.stack([s[k].numpy() for s in samples]).astype(np.int32) for k in samples[0] if k != PROVENANCE}
    same = "labels" in arrays and "input_ids" in arrays and np.array_equal(arrays["labels"], arrays["input_ids"])
    if same:
        del arrays["labels"]
    return ArrayBatch(arrays, same, BatchProvenance.pack([s.get(PROVENANCE) for s in samples]))


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
    """torchdata's StatefulDataLoader (per-worker data state) that also times the consumer's waits.

    The one adapter to torchdata's privates: a new iterator's workers must start where the last iterator's stood,
    and torchdata has no public hook for it, so `__iter__` reads `_iterator` and `_initial_iter_for_state_dict`;
    and the workers' final states must reach state_dict() (`publish_final_states`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.wait_seconds = 0.0   # time the consumer spent blocked on next(): data starvation
        self.provenance = None    # the last batch's: per sample, its segments (lmstream.packing)
        self.taken = collections.deque(maxlen=1024)   # the provenance of the batches taken since it was cleared

    def __iter__(self):
        done = getattr(self, "_iterator", None)
        if (done is not None and not self._initial_iter_for_state_dict and self.num_workers > 0
                and not self.persistent_workers and hasattr(self.dataset, "carry_over")):
            # a new iterator has new worker processes: hand them where the last ones stood (the last batch
            # yielded) with their counters, as a re-iterated in-process stream continues
            self.dataset.carry_over(done.state_dict())
        if self.num_workers > 0:
            warm_up()   # before the workers fork: they inherit what the first read imports
        return _TimedIterator(super().__iter__(), self)

    def publish_final_states(self, it) -> None:
        """At the end of the data, make the workers' last states (sent with their end-of-data signal) part of
        state_dict(). torchdata refreshes its snapshot only when it yields a batch, so the state of a worker that
        ends after the last batch (always, with one worker) was left out: its epoch's end, its dropped remainder."""
        snap, workers = getattr(it, "_snapshot", None), getattr(it, "_worker_snapshots", None)
        if not snap or not workers or it._num_yielded != snap[it._SNAPSHOT_STEP]:
            return   # in-process, or a snapshot that is not of the last batch: nothing to refresh safely
        it._update_snapshot(snap[it._SNAPSHOT_STEP], snap[it._LAST_YIELDED_WORKER_ID], it._num_workers,
                            snap[it._MAIN_SNAPSHOT], workers)

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


def init_worker(worker_id: int, raw: bool = False) -> None:
    """DataLoader worker_init_fn: signals are the main process's; the node's cores are shared between workers.
    `raw`: the loader collates with collate_arrays, so its streams may yield packed blocks as bare int32 arrays."""
    ignore_signals_in_worker(worker_id)
    info = torch.utils.data.get_worker_info()
    backends.limit_threads(backends.tokenizer_threads(info.num_workers))
    if raw:
        for stream in getattr(info.dataset, "streams", None) or [info.dataset]:
            if hasattr(stream, "reader"):
                stream.reader.raw = True


def build_loader(dataset, batch_size: int, num_workers: int = 0, **kwargs) -> BlockLoader:
    """A loader over `dataset` whose state_dict holds every worker's data position."""
    if batch_size < 1:
        raise ConfigError(f"per_device_train_batch_size={batch_size} must be at least 1.")
    kwargs.setdefault("collate_fn", collate_arrays if num_workers > 0 else collate_tensors)
    if num_workers > 0:
        kwargs.setdefault("prefetch_factor", PREFETCH_FACTOR)
        kwargs.setdefault("worker_init_fn", functools.partial(init_worker, raw=kwargs["collate_fn"] is collate_arrays))
        kill_workers_at_exit()
    else:
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
    return BlockLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
