"""Checkpoint folders as lmstream writes and reads them: every rank's data position next to the
Trainer's files, and a marker written last, so that a checkpoint cut short (killed mid-save) is
never resumed from.

    checkpoint-N/lmstream_data/rank-R.json     the loader state of rank R (lmstream.stream.state, inside torchdata's)
    checkpoint-N/lmstream_data/plan.json.gz    the plan the positions refer to (lmstream.corpus.planfile)
    checkpoint-N/lmstream_complete.json        written last
"""
from __future__ import annotations

import json
import os
import re

from ..errors import ConfigError
from ..paths import atomic_write
from ..stream.state import position_problem, reader_states

DATA_STATE_DIR = "lmstream_data"
# written last: a checkpoint without it was cut short (killed mid-save)
COMPLETE = "lmstream_complete.json"
CHECKPOINT_PREFIX = "checkpoint-"
RANK_FILE = re.compile(r"rank-(\d+)\.json")


def checkpoint_step(name: str) -> int | None:
    """N of a folder named checkpoint-N, else None."""
    rest = name[len(CHECKPOINT_PREFIX):]
    return int(rest) if name.startswith(CHECKPOINT_PREFIX) and rest.isdigit() else None


def is_complete(checkpoint: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint, COMPLETE))


def is_cut_short(checkpoint: str) -> bool:
    """An lmstream checkpoint whose save did not finish (no marker, while lmstream wrote it or its
    siblings)."""
    if is_complete(checkpoint):
        return False
    parent = os.path.dirname(os.path.abspath(checkpoint))
    siblings = [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith("checkpoint-")]
    return (os.path.isdir(os.path.join(checkpoint, DATA_STATE_DIR))
            or any(is_complete(p) for p in siblings))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N of output_dir whose save finished; None if there is none.

    Folders from other scripts (no lmstream marker in any checkpoint) are taken as complete.
    """
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if checkpoint_step(name) is not None and os.path.isdir(path):
            found.append((checkpoint_step(name), path))
    found.sort()
    if not any(is_complete(p) for _, p in found):
        return found[-1][1] if found else None
    done = [p for _, p in found if is_complete(p)]
    return done[-1]


def trained_steps(checkpoint: str) -> int:
    """The optimizer steps a checkpoint was saved after (its trainer_state.json, else its folder's
    name)."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint_step(os.path.basename(os.path.normpath(checkpoint))) or 0


def data_state_path(checkpoint: str, rank: int) -> str:
    return os.path.join(checkpoint, DATA_STATE_DIR, f"rank-{rank}.json")


def read_data_states(checkpoint: str) -> list[dict] | None:
    """The loader state of every rank that saved `checkpoint`, by rank; None if it holds none."""
    folder = os.path.join(checkpoint, DATA_STATE_DIR)
    if not os.path.isdir(folder):
        return None
    ranks = sorted(int(m.group(1)) for m in map(RANK_FILE.fullmatch, os.listdir(folder)) if m)
    if ranks != list(range(len(ranks))) or not ranks:
        raise ConfigError(f"Checkpoint '{checkpoint}' has data positions of ranks {ranks}, not "
                          "0..N-1 (a file is missing): resume from a complete checkpoint.")
    states = []
    for r in ranks:
        path = data_state_path(checkpoint, r)
        try:
            with open(path) as f:
                states.append(json.load(f))
        except (OSError, ValueError) as err:
            raise ConfigError(f"Checkpoint data position '{path}' is unreadable "
                              f"({type(err).__name__}: {err}): resume from an earlier "
                              "checkpoint.") from None
        readers = reader_states(states[-1])
        problems = [p for p in map(position_problem, readers) if p]
        if not readers:
            problems = ["no reader state in it"]
        if problems:
            raise ConfigError(f"Checkpoint data position '{path}' is corrupt ({problems[0]}): "
                              "resume from an earlier checkpoint.")
    return states


def saved_shape(states: list[dict]) -> tuple[int, int]:
    """(processes, DataLoader workers per process) of the run that saved these loader states."""
    readers = reader_states(states)
    workers = {st["workers"] for st in readers} or {1}
    return len(states), max(workers)


def atomic_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, json.dumps(obj).encode())
