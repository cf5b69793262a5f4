"""Samples become batches: in a worker as NumPy arrays (`ArrayBatch`, pickled by value, ids as
uint16 where the vocabulary fits), in one process as tensors (`collate_tensors`); either way the
samples' provenance travels beside the batch (`PinnedBatch.provenance`).

    batch = collate_arrays(samples, id_type=np.uint16)   # in a DataLoader worker
    tensors = batch.pin_memory()                          # in the training process: a PinnedBatch
"""
from __future__ import annotations

import numpy as np
import torch

from ..tokens.provenance import BatchProvenance
from .reader import PROVENANCE   # a sample's segments: not a tensor, kept beside the batch

POSITIONS = "position_ids"      # dataset_document_attention isolated (packed blocks' raw samples)


class ArrayBatch:
    """A batch as NumPy arrays on its way from a worker: pickled by value through the worker's
    queue.

    torch would move tensors through shared memory, a file-descriptor hand-over per tensor: twice
    the consumer's cost of unpickling arrays. Ids travel as uint16 where the vocabulary fits
    (collate_arrays), else int32; labels equal to input_ids (packed blocks) are not sent. The
    pin-memory thread calls `pin_memory`, else `tensors`."""

    def __init__(self, arrays: dict, labels_are_inputs: bool = False, packed: tuple | None = None):
        self.arrays, self.labels_are_inputs = arrays, labels_are_inputs
        # the samples' provenance, BatchProvenance.pack's (rows, starts): plain, cheap to send
        self.packed = packed

    @property
    def provenance(self):
        """Each sample's segments (lmstream.tokens.provenance), or None."""
        return BatchProvenance(*self.packed) if self.packed is not None else None

    def tensors(self) -> dict:
        out = {k: torch.from_numpy(v.astype(np.int64)) for k, v in self.arrays.items()}
        if self.labels_are_inputs:
            out["labels"] = out["input_ids"].clone()
        return out

    def pin_memory(self, device=None) -> "PinnedBatch":
        return PinnedBatch({k: t.pin_memory() for k, t in self.tensors().items()}, self.provenance)


class PinnedBatch(dict):
    """A batch's tensors (pinned by the loader's pin-memory thread, or collated in process), with
    its provenance beside them: a dict to everything else (the Trainer, accelerate's
    skip_first_batches)."""

    def __init__(self, tensors=(), provenance: list | None = None):
        super().__init__(tensors)
        self.provenance = provenance


def arrays(stream):
    """The stream's samples with packed blocks as bare int32 arrays (a stream with `iterate`), else
    as they are."""
    return stream.iterate(raw=True) if hasattr(stream, "iterate") else iter(stream)


class Arrays(torch.utils.data.IterableDataset):
    """A stream whose packed blocks come as bare int32 arrays (for collate_tensors in one process:
    one conversion to int64 per batch, not per block); its state, length and epochs are the
    stream's."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        return arrays(self.stream)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.stream)


def raw_blocks(samples: list[dict]) -> bool:
    """Packed blocks as bare int32 arrays (Reader.samples(raw=True)): no labels, input_ids a NumPy
    array (and position_ids, when documents are isolated)."""
    return "labels" not in samples[0] and isinstance(samples[0].get("input_ids"), np.ndarray)


def collate_tensors(samples: list[dict]) -> PinnedBatch:
    """In process (no workers): the samples' tensors stacked (packed int32 blocks as one int64
    tensor, labels a copy of it), their provenance beside them."""
    provenance = [s.get(PROVENANCE) for s in samples]
    if raw_blocks(samples):
        ids = np.empty((len(samples), len(samples[0]["input_ids"])), dtype=np.int64)
        # one converting copy per block (stack then astype would be two)
        for row, s in zip(ids, samples):
            row[:] = s["input_ids"]
        ids = torch.from_numpy(ids)
        batch = {"input_ids": ids, "labels": ids.clone()}
        if POSITIONS in samples[0]:
            batch[POSITIONS] = torch.from_numpy(np.stack([s[POSITIONS] for s in samples])
                                                .astype(np.int64))
        return PinnedBatch(batch, provenance)
    return PinnedBatch({k: torch.stack([s[k] for s in samples]) for k in samples[0]
                        if k != PROVENANCE}, provenance)


def collate_arrays(samples: list[dict], id_type=None) -> ArrayBatch:
    """Stack the samples' tensors into int32 arrays (in the worker); labels only when they differ
    from input_ids. Packed blocks go straight into `id_type` (the stream's,
    lmstream.tokens.tokenize.id_type), else `narrow`. The samples' provenance travels beside them as
    one array and offsets (BatchProvenance.pack)."""
    if raw_blocks(samples):
        ids = [s["input_ids"] for s in samples]
        ids = np.array(ids, dtype=id_type) if id_type is not None else narrow(np.stack(ids))
        arrays = {"input_ids": ids}
        if POSITIONS in samples[0]:
            arrays[POSITIONS] = narrow(np.stack([s[POSITIONS] for s in samples]))
        return ArrayBatch(arrays, True,
                          BatchProvenance.pack([s.get(PROVENANCE) for s in samples]))
    arrays = {k: np.stack([s[k].numpy() for s in samples]).astype(np.int32) for k in samples[0]
              if k != PROVENANCE}
    same = ("labels" in arrays and "input_ids" in arrays
            and np.array_equal(arrays["labels"], arrays["input_ids"]))
    if same:
        del arrays["labels"]
    return ArrayBatch(arrays, same, BatchProvenance.pack([s.get(PROVENANCE) for s in samples]))


def narrow(ids: np.ndarray) -> np.ndarray:
    """Token ids as uint16 when all fit (a stream of unknown vocabulary): half the bytes through the
    pipe."""
    return ids.astype(np.uint16) if ids.size and 0 <= ids.min() and ids.max() < 1 << 16 else ids
