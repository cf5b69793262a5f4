"""A run's lineage: which topology and data settings fed which steps, across resumes, and which
steps were skipped.

    output_dir/lmstream_lineage.json               the current run's lineage, written at its first step
    checkpoint-N/lmstream_data/lineage.json        the lineage that led to checkpoint N (with what it skipped)

A lineage is a list of segments, oldest first. A segment is one start of the job: the step it
started from (the checkpoint it resumed, 0 when fresh), its processes, DataLoader workers, batch
size, gradient accumulation, the data seed and arguments, and the step ranges it was told to skip
(--dataset_skip_steps) with what they held. Steps from_step+1 up to the next segment's from_step
were fed by that segment. `lmstream.tools.inspect` reads it to replay the data of any step with the
topology that was in force then.
"""
from __future__ import annotations

import dataclasses
import json
import os

from .checkpoints import DATA_STATE_DIR, atomic_json, trained_steps
from ..config import parse_step_ranges
from ..corpus.docids import read_id_list
from ..errors import ConfigError
from ..paths import atomic_write

RUN_LINEAGE = "lmstream_lineage.json"
# every document listed by dataset_skip_documents in this lineage
SKIP_LIST = "lmstream_skip_documents.txt"
CHECKPOINT_LINEAGE = "lineage.json"


def segment(from_step: int, world_size: int, workers: int, batch_size: int, grad_accum: int,
            seed: int, max_positions: int | None, data_args, max_samples: int | None,
            tokenizer: str, skip_steps: list | None = None) -> dict:
    return {"from_step": from_step, "world_size": world_size, "workers": workers,
            "batch_size": batch_size, "grad_accum": grad_accum, "seed": seed,
            "max_positions": max_positions, "data_args": dataclasses.asdict(data_args),
            "max_samples": max_samples, "tokenizer": tokenizer,
            "skip_steps": [list(r) for r in skip_steps or []], "skipped": []}


def for_run(checkpoint: str | None, model_args, data_args, run_args, training_args, world: int,
            seed: int, max_positions: int | None) -> list[dict]:
    """A run's lineage: the checkpoint's, with this start appended (its skips checked against the
    checkpoint)."""
    a, m = training_args, model_args
    old = read(checkpoint) if checkpoint else []
    from_step = trained_steps(checkpoint) if checkpoint else 0
    skips = pending_skips(old, parse_step_ranges(data_args.dataset_skip_steps), from_step)
    new = segment(from_step, world, a.dataloader_num_workers, a.per_device_train_batch_size,
                  a.gradient_accumulation_steps, seed, max_positions, data_args,
                  run_args.max_train_samples,
                  m.tokenizer_name or m.model_name_or_path or m.config_name, skips)
    if data_args.dataset_skip_documents:
        new["skip_documents"] = sorted(read_id_list(data_args.dataset_skip_documents))
    return extend(old, new)


def with_listed_documents(checkpoint: str | None, data_args, output_dir: str):
    """The data arguments with dataset_skip_documents naming every document listed so far: the file
    given now and the lists of the lineage being resumed (a list keeps applying on later resumes),
    merged into output_dir/lmstream_skip_documents.txt. Unchanged when nothing is listed."""
    if not data_args.dataset_streaming:
        return data_args
    listed = {d for seg in (read(checkpoint) if checkpoint else [])
              for d in seg.get("skip_documents", [])}
    if data_args.dataset_skip_documents:
        listed |= read_id_list(data_args.dataset_skip_documents)
    if not listed:
        return data_args
    path = os.path.join(output_dir, SKIP_LIST)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write(path, "".join(f"{d}\n" for d in sorted(listed)).encode())
    return dataclasses.replace(data_args, dataset_skip_documents=path)


def read(path: str) -> list[dict]:
    """The lineage in a file (a checkpoint folder's or the run's), [] when there is none."""
    if os.path.isdir(path):
        path = os.path.join(path, DATA_STATE_DIR, CHECKPOINT_LINEAGE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"The run's lineage '{path}' is unreadable ({err}): it was damaged; "
                          "delete it to train on (lmstream.tools.inspect needs it).") from None
    return data["segments"]


def extend(old: list[dict], new: dict) -> list[dict]:
    """The lineage of a run that starts `new` from the checkpoint whose lineage is `old` (later
    branches dropped)."""
    return [s for s in old if s["from_step"] < new["from_step"]] + [new]


def pending_skips(old: list[dict], ranges: list[list[int]], from_step: int) -> list[list[int]]:
    """The ranges still to skip when resuming at `from_step`: those after it. A range an earlier
    segment of the lineage already skipped is done (the flag may be given again on later resumes);
    one that begins at or before the checkpoint and was not skipped cannot be, and is refused."""
    done = {tuple(s["steps"]) for seg in old for s in seg.get("skipped", [])}
    out = []
    for lo, hi in ranges:
        if (lo, hi) in done:
            continue
        if lo <= from_step:
            raise ConfigError(f"dataset_skip_steps {lo}-{hi}: the run resumes at step {from_step}, "
                              f"after step {lo}: resume from a checkpoint before step {lo} "
                              f"(--resume_from_checkpoint OUTPUT_DIR/checkpoint-M with M < {lo}).")
        out.append([lo, hi])
    return out


def write_run(output_dir: str, lineage: list[dict]) -> None:
    atomic_json(os.path.join(output_dir, RUN_LINEAGE), {"segments": lineage})


def write_checkpoint(checkpoint: str, lineage: list[dict]) -> None:
    atomic_json(os.path.join(checkpoint, DATA_STATE_DIR, CHECKPOINT_LINEAGE), {"segments": lineage})


def skipped_totals(lineage: list[dict]) -> dict:
    """Blocks, documents and tokens skipped over the whole lineage (for the run's metrics)."""
    tot = {"skipped_blocks": 0, "skipped_documents": 0, "skipped_tokens": 0}
    for seg in lineage:
        for s in seg.get("skipped", []):
            for k in ("blocks", "documents", "tokens"):
                tot[f"skipped_{k}"] += s[k]
    return tot
