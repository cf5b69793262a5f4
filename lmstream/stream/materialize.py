"""Blocks made before training (dataset_streaming false, `python -m lmstream.prepare`): one epoch
of the very blocks a stream would give, written by several processes into Arrow files and read as
a map-style `datasets.Dataset`; saved with `save_to_disk` (tokenized_dataset_save_dir) and loaded
back (tokenized_dataset_load_dir).

    ds = materialize(data_args, tokenizer, seed=0, processes=4)   # Arrow files in a scratch folder
    save_blocks(ds, "blocks/")                                    # refuses a folder in use
    ds = load_blocks("blocks/", block_size=1024)
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from ..tokens import backends
from ..config import DataArguments
from ..errors import ConfigError
from ..corpus.sources import plan_dataset
from ..tokens.packing import resolve_block_size
from ..tokens.tokenize import encoder_for
from .blocks import StreamingBlocks
from .pipeline import build_pipeline
from ..tokens.tokenize import id_type, settle

log = logging.getLogger("lmstream")


ROWS_PER_WRITE = 1024   # blocks per Arrow record batch written by a materializing process
# as saved blocks always were
STORED_TYPES = {"input_ids": "int32", "labels": "int64", "attention_mask": "int8"}


def stored_types(tokenizer, ids=None) -> dict:
    """The saved columns' types: input_ids as uint16 when every id of the tokenizer fits
    (lmstream.tokens.tokenize.id_type; GPT-2's do), half the bytes written and kept on disk;
    datasets' torch and numpy formats read them as int64."""
    # `ids`: the encoder's id_type, when already at hand
    small = (ids or id_type(tokenizer)) == np.uint16
    return {**STORED_TYPES, "input_ids": "uint16"} if small else STORED_TYPES


def _write_slot(args: DataArguments, tokenizer, seed: int, block_size: int, slot: int, n_slots: int,
                path: str, plan=None, encoder=None, types: dict = STORED_TYPES) -> int:
    """One epoch of one reader's blocks written to `path` as an Arrow stream, a record batch at a
    time; returns the number of blocks. Packed blocks are cut from the epoch's ids with one reshape
    per tokenizer batch (the very blocks the stream yields, without a Python object per block);
    padded samples go one by one."""
    import dataclasses

    import pyarrow as pa
    one_epoch = dataclasses.replace(args, dataset_cycle=False, dataset_block_size=block_size)
    ds = build_pipeline(one_epoch, tokenizer, seed=seed, rank=slot, world_size=n_slots, plan=plan,
                        encoder=encoder)
    # a mixture goes sample by sample
    packed = args.dataset_group_text and isinstance(ds, StreamingBlocks)
    if packed:
        chunks = _packed_chunks(ds.reader.epoch_ids(slot, n_slots), block_size)
    else:
        chunks = _sample_chunks(ds)
    writer, count = None, 0
    for cols in chunks:
        batch = _record_batch(cols, types)
        writer = writer or pa.ipc.new_stream(path, batch.schema)
        writer.write_batch(batch)
        count += batch.num_rows
    if writer is not None:
        writer.close()
    return count


def _packed_chunks(id_arrays, block_size: int):
    """{"input_ids"} 2-D arrays of consecutive blocks from a sequence of id arrays, the remainder
    carried into the next array and dropped at the end (as the packer does). Packed blocks are
    stored without labels, which would only repeat input_ids at twice the width: `collate_blocks`
    makes them when batches are formed."""
    import numpy as np
    carry = np.empty(0, dtype=np.int32)
    for ids in id_arrays:
        # the block that spans two arrays alone: the rest of the array is cut without a copy
        if len(carry):
            head = np.concatenate([carry, ids[:block_size - len(carry)]])
            ids = ids[block_size - len(carry):]
            if len(head) < block_size:
                carry = head
                continue
            yield {"input_ids": head.reshape(1, block_size)}
        n = len(ids) // block_size
        if n:
            yield {"input_ids": ids[: n * block_size].reshape(n, block_size)}
        carry = ids[n * block_size:]


def _sample_chunks(ds):
    """Samples of a stream (padded documents), ROWS_PER_WRITE at a time, as 2-D arrays per
    column."""
    import numpy as np
    rows = []
    for sample in ds:
        rows.append({k: v.numpy() for k, v in sample.items() if k != "provenance"})
        if len(rows) == ROWS_PER_WRITE:
            yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
            rows = []
    if rows:
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _record_batch(cols: dict, types: dict):
    """An Arrow record batch of list columns (of `types`) from 2-D arrays: no per-row conversion."""
    import numpy as np
    import pyarrow as pa
    rows, width = next(iter(cols.values())).shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.record_batch({k: pa.ListArray.from_arrays(offsets, pa.array(
        v.astype(types.get(k, "int64"), copy=False).reshape(-1))) for k, v in cols.items()})


def _one_torch_thread() -> None:
    """In a forked process: torch's intra-op pool of the parent is not there (a parallel op would
    wait on it for ever), so torch runs on one thread, as in a DataLoader worker."""
    import torch
    torch.set_num_threads(1)


# materialize's jobs, read by its forked processes (inherited: the tokenizer is not pickled)
_JOBS: list = []
SLOTS_PER_PROCESS = 4   # readers per process when there are several processes


def slots_for(processes: int) -> int:
    """Readers of an epoch materialized by `processes` processes: 4 per process when several, each
    process taking the next reader as it finishes one, so that none idles while another ends a
    larger share (2 processes on 2 cores, 57 M tokens: the first had finished 135-185 ms before the
    second, one reader each). Each reader drops its final partial block, as a stream of that many
    readers does."""
    return processes * SLOTS_PER_PROCESS if processes > 1 else 1


def materialize(args: DataArguments, tokenizer, seed: int, max_positions: int | None = None,
                processes: int | None = None, timings: dict | None = None,
                folder: str | None = None):
    """One epoch of the pipeline's blocks as a map-style datasets.Dataset (memory-mapped Arrow
    files), made by `processes` (default dataset_num_proc, else 1) processes: the blocks of
    slots_for(processes) readers, in order. `folder`: where the Arrow files go, the caller's to
    remove (default: scratch_folder()). `timings` gets "startup" (listing the data, loading and
    checking the tokenizer backend: once, before the processes fork, which inherit them) and "work"
    (the processes' reading, tokenizing, packing and writing)."""
    import datasets
    t0 = time.perf_counter()
    block_size = resolve_block_size(args, tokenizer, max_positions)
    n = max(1, processes or args.dataset_num_proc or 1)
    # for the processes' tokenizers: no oversubscription
    backends.limit_threads(backends.tokenizer_threads(n))
    folder = folder or scratch_folder()
    slots = slots_for(n)
    paths = [os.path.join(folder, f"slot-{i:05d}.arrow") for i in range(slots)]
    plan = None if args.dataset_mixture else plan_dataset(args)
    # chosen and checked once, before the fork: the processes share it
    encoder = encoder_for(args, tokenizer)
    types = stored_types(tokenizer, encoder.id_type)
    _JOBS[:] = [(args, tokenizer, seed, block_size, i, slots, paths[i], plan, encoder, types)
                for i in range(slots)]
    t1 = time.perf_counter()
    if n == 1:
        counts = [_write_slot(*_JOBS[0])]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        settle()   # no tokenizer call under way on another thread when the processes fork
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_one_torch_thread) as pool:
            # one reader at a time to each free process
            counts = list(pool.map(_write_job, range(slots)))
    _JOBS.clear()
    parts = [datasets.Dataset.from_file(p) for p, c in zip(paths, counts) if c]
    if not parts:
        raise ConfigError(f"Dataset '{args.dataset_name}' gave no complete block of {block_size} "
                          "tokens: use more data or a smaller dataset_block_size.")
    if timings is not None:
        timings.update(startup=t1 - t0, work=time.perf_counter() - t1)
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


SCRATCH_PREFIX = ".lmstream-blocks-"


def scratch_folder(where: str | None = None, tag: str = "") -> str:
    """A new folder for materialized blocks, removed when this process exits (its forked workers
    leave it alone): inside `where` (a run's output_dir: nothing written outside it), else in the
    system's temporary folder. The folders `tag` left there by an earlier process of the same
    output_dir (one killed before it could remove them) are removed first: the output_dir's lock
    says no other job uses them."""
    if where:
        os.makedirs(where, exist_ok=True)
        for name in os.listdir(where):
            if name.startswith(SCRATCH_PREFIX + tag):
                shutil.rmtree(os.path.join(where, name), ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=SCRATCH_PREFIX + tag, dir=where)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _write_job(i: int) -> int:
    return _write_slot(*_JOBS[i])


def check_save_dir(folder: str, staged: str | None = None) -> None:
    """Refuse a tokenized_dataset_save_dir that holds anything (but the blocks' own staging folder
    `staged`)."""
    if os.path.isdir(folder) and [n for n in os.listdir(folder)
                                  if os.path.join(folder, n) != staged]:
        raise ConfigError(f"tokenized_dataset_save_dir '{folder}' is not empty: choose a new "
                          "folder (nothing was overwritten).")


def save_blocks(ds, folder: str, staged: str | None = None) -> None:
    """Write materialized blocks to `folder`, refusing to overwrite another dataset."""
    check_save_dir(folder, staged)
    ds.save_to_disk(folder)
    log.info("saved %d blocks to %s", len(ds), folder)


def load_blocks(folder: str, block_size: int | None):
    import datasets
    if not os.path.isdir(folder):
        raise ConfigError(f"tokenized_dataset_load_dir '{folder}' does not exist: run `python -m "
                          f"lmstream.prepare` first.")
    try:
        ds = datasets.load_from_disk(folder)
    except Exception as err:
        raise ConfigError(f"tokenized_dataset_load_dir '{folder}' holds no saved dataset "
                          f"({err}).") from None
    if "input_ids" not in ds.column_names:
        raise ConfigError(f"tokenized_dataset_load_dir '{folder}' has no 'input_ids' column "
                          f"(columns: {ds.column_names}).")
    width = len(ds[0]["input_ids"])
    if block_size is not None and width != block_size:
        raise ConfigError(f"tokenized_dataset_load_dir '{folder}' holds blocks of {width} tokens, "
                          f"but dataset_block_size={block_size}: pass dataset_block_size {width} "
                          "or prepare again.")
    return ds
