"""The reader state: where one reader (a rank, or one of its DataLoader workers) stands in its
stream, as a typed record, and its JSON form in checkpoints.

    state = ReaderState(who=identity, epoch=0)         # a reader at the start of epoch 0
    saved = state.to_json(); ReaderState.from_json(saved) == state

Three parts. *Who*: `Identity` (the data settings it was made with, rank, processes, workers, slot,
slots). *Where*: epoch; shuffle window number, its start and the next window's start as (piece, row)
in the reader's list of pieces; the window's permutation key; document within the window and token
within that document (the next one not yet trained on); samples so far in this epoch. *What is
owed*: after an elastic resume, the items of this epoch and of later ones that another topology left
(`Phase`); plus counters. A position names the window that produced the last sample, so a resume
re-reads one window (at most one row group more) and re-tokenizes from the document on.

JSON format 3 (this one) writes phases as lists; format 2 (lmstream before the typed state) wrote
them as JSON strings inside the JSON and is read as well (tests/test_state_format.py resumes such
checkpoints).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypedDict

from ..errors import ConfigError

STATE_VERSION = 3
READABLE_VERSIONS = (2, 3)
COUNTERS = ("docs", "bytes", "tokens", "blocks", "tokens_dropped", "tokens_truncated",
            "tokenize_seconds")
POSITION_INTS = ("epoch", "window", "doc", "token", "samples_in_epoch", "slot", "n_slots",
                 "workers", "rank", "world_size")


class Counters(TypedDict, total=False):
    """A reader's counters: saved in its state, summed over readers (`merge_stats`) into the run's
    `data_*` metrics. The first seven (COUNTERS) are in every state; the others once counted."""
    docs: int
    bytes: int
    tokens: int
    blocks: int
    tokens_dropped: int          # an epoch's final partial block
    tokens_truncated: int        # cut off a padded sample (dataset_group_text false)
    tokenize_seconds: float
    rows_read: int
    docs_empty: int
    docs_null: int
    docs_heldout: int
    docs_invalid_utf8: int
    docs_listed_skipped: int     # --dataset_skip_documents
    tokens_listed_skipped: int
    shards_skipped: int          # --dataset_skip_bad_shards
    retries: int
    hub_resolves: int            # resolve/ requests of row-group reads (lmstream.corpus.signed)
    hub_bytes: int               # bytes of Hub files read
    cache_hits: int              # byte ranges read from --dataset_cache_dir instead
    cache_bytes: int
    read_seconds: float
    read_wait_seconds: float


class Sample(NamedTuple):
    """What a reader's loop yields for one block: the sample (input_ids, labels, provenance) and the
    position after it: the ref of the document its next token comes from, that token's offset, and
    the documents and bytes the block completed."""
    sample: dict
    next_ref: tuple
    next_offset: int
    docs_done: int
    bytes_done: int


@dataclass(frozen=True)
class Identity:
    # the data settings (shards, content and tokenizer fingerprints, block size, seed, ...)
    settings: dict
    rank: int
    world_size: int
    workers: int         # DataLoader workers per rank (1 without workers)
    slot: int            # rank * workers + worker
    n_slots: int         # world_size * workers


@dataclass(frozen=True)
class Phase:
    """What an elastic resume dealt a reader: `items` (encoded, see lmstream.stream.elastic) of this
    epoch with their sample `cap`, the later epochs owed as (epoch, items, cap), and `gen`, the
    number of elastic resumes so far."""
    items: list | None = None
    cap: int | None = None
    pending: tuple = ()
    gen: int = 0

    @property
    def owed(self) -> bool:
        return self.items is not None

    def next(self, epoch: int) -> tuple[int, Phase]:
        """(epoch, phase) after `epoch`: the next phase owed, else the following regular epoch."""
        if self.pending:
            (e, items, cap), rest = self.pending[0], self.pending[1:]
            return e, Phase(items, cap, tuple(rest), self.gen)
        return epoch + 1, Phase(gen=self.gen)

    def for_epoch(self, current: int, epoch: int) -> tuple[list, int | None] | None:
        """(items, cap) owed in `epoch` by a reader now in epoch `current`; None: a regular
        epoch."""
        if epoch == current:
            return (self.items, self.cap) if self.owed else None
        return next(((items, cap) for e, items, cap in self.pending if e == epoch), None)


@dataclass(frozen=True)
class ReaderState:
    who: Identity
    epoch: int = 0
    window: int = 0
    start: tuple = (0, 0)
    next: tuple = (0, 0)
    key: tuple | None = None
    doc: int = 0
    token: int = 0
    samples_in_epoch: int = 0
    phase: Phase = field(default_factory=Phase)
    stats: Counters = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def at_epoch(self, epoch: int, phase: Phase | None = None,
                 stats: dict | None = None) -> ReaderState:
        """This reader at the start of `epoch` (with `phase`; counters kept unless given)."""
        return ReaderState(who=self.who, epoch=epoch, phase=phase or Phase(gen=self.phase.gen),
                           stats=dict(self.stats if stats is None else stats))

    def advanced(self, at_least: int = 0) -> ReaderState:
        """At the start of the next epoch (or phase owed); a regular epoch at least `at_least`."""
        epoch, phase = self.phase.next(self.epoch)
        return self.at_epoch(epoch if phase.owed else max(epoch, at_least), phase)

    @property
    def started(self) -> bool:
        return self.stats["blocks"] + self.stats["docs"] > 0

    def to_json(self) -> dict:
        w, p = self.who, self.phase
        return {"version": STATE_VERSION, "settings": w.settings, "rank": w.rank,
                "world_size": w.world_size, "workers": w.workers, "slot": w.slot,
                "n_slots": w.n_slots, "epoch": self.epoch, "window": self.window,
                "start": list(self.start), "next": list(self.next),
                "key": None if self.key is None else list(self.key), "doc": self.doc,
                "token": self.token, "samples_in_epoch": self.samples_in_epoch, "items": p.items,
                "cap": p.cap, "pending": [list(x) for x in p.pending] or None, "gen": p.gen,
                "stats": dict(self.stats)}

    @classmethod
    def from_json(cls, d: dict) -> ReaderState:
        """A saved reader state (format 2 or 3); see `position_problem` for checking one first."""
        def loads(v):   # format 2 held phases as JSON text
            return json.loads(v) if isinstance(v, str) else v
        who = Identity(d["settings"], d["rank"], d["world_size"], d["workers"], d["slot"],
                       d["n_slots"])
        pending = tuple((e, loads(items), cap) for e, items, cap in loads(d.get("pending")) or ())
        phase = Phase(loads(d.get("items")), d.get("cap"), pending, d.get("gen", 0))
        return cls(who, d["epoch"], d["window"], tuple(d["start"]), tuple(d["next"]),
                   None if d.get("key") is None else tuple(d["key"]), d["doc"], d["token"],
                   d["samples_in_epoch"], phase, dict(d["stats"]))

    def moved(self, **position) -> ReaderState:
        return replace(self, **position)


def position_problem(state) -> str | None:
    """What is wrong with a saved reader state's shape and ranges (None: nothing)."""
    if not (isinstance(state, dict) and isinstance(state.get("settings"), dict)
            and isinstance(state.get("stats"), dict)):
        return "not a reader state (settings or counters missing)"
    if state.get("version") not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        return f"format {state.get('version')!r}, this lmstream reads {readable}"
    for k in POSITION_INTS:
        v = state.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"{k}={v!r}, not a count"
    for k in ("start", "next"):
        v = state.get(k)
        if not (isinstance(v, list) and len(v) == 2
                and all(isinstance(x, int) and x >= 0 for x in v)):
            return f"{k}={v!r}, not a (piece, row) position"
    if state["slot"] >= state["n_slots"] or state["n_slots"] % max(1, state["world_size"]):
        return f"reader {state['slot']} of {state['n_slots']} for {state['world_size']} process(es)"
    return None


# -- states inside loader states ----------------------------------------------------------------
def find_dicts(obj, match) -> list[dict]:
    """Every dict for which match(d) is true in a nest of dicts and lists (a match is not searched
    inside)."""
    found: list[dict] = []

    def walk(o):
        if isinstance(o, dict):
            if match(o):
                found.append(o)
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
    walk(obj)
    return found


def reader_states(obj) -> list[dict]:
    """Every reader (slot) state inside loader states (any nesting), in slot order."""
    found = find_dicts(obj, lambda d: "slot" in d and "n_slots" in d and "settings" in d)
    return sorted(found, key=lambda st: st["slot"])


def sum_counters(counters) -> dict:
    """Counter dicts added up, key by key."""
    total: dict = {}
    for c in counters:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def merge_stats(loader_state) -> dict:
    """Sum the counters of every stream (reader, or mixture of readers) found in a loader state."""
    return sum_counters(st["stats"] for st in find_dicts(
        loader_state, lambda d: d.get("version") in READABLE_VERSIONS and "settings" in d
                                                         and "stats" in d))


def stream_epoch(loader_state) -> int:
    """The epoch the slowest reader (worker, or mixture source) of a loader state is in."""
    epochs = [st["epoch"] for st in reader_states(loader_state)]
    return min(epochs) if epochs else 0


def share(total: int, parts: int, i: int) -> int:
    """Part i of `total` split into `parts` as evenly as integers allow (the first ones get the
    remainder)."""
    return total // parts + (i < total % parts)


def check_start(start, pieces: list) -> None:
    """A saved window start must lie within the reader's pieces (else the rest of the epoch would be
    skipped)."""
    p, row = start
    rows = getattr(pieces[p], "num_rows", None) if p < len(pieces) else None
    if p > len(pieces) or (p == len(pieces) and row > 0) or (rows is not None and row > rows):
        raise ConfigError(f"The data position is corrupt: window start (piece {p}, row {row}) lies "
                          f"outside the reader's {len(pieces)} pieces: resume from another "
                          "checkpoint.")


def check_settings(settings: dict, state: dict) -> None:
    """Refuse a saved reader state of another format version or other data settings than
    `settings` (a stream's)."""
    if state.get("version") not in READABLE_VERSIONS:
        raise ConfigError(f"The data state has version {state.get('version')}, this lmstream "
                          f"reads {' and '.join(map(str, READABLE_VERSIONS))}.")
    # "data" and "tokenizer" (content fingerprints) are absent from states saved by earlier
    # lmstream versions
    diff = [k for k in settings if state["settings"].get(k) != settings[k]
            and not (k in ("data", "tokenizer") and k not in state["settings"])]
    if diff == ["tokenizer"]:
        raise ConfigError("The data position was saved with another tokenizer (same vocabulary "
                          "size and EOS, other ids: fingerprint "
                          f"{state['settings']['tokenizer']} then, "
                          f"{settings['tokenizer']} now): resume with the tokenizer the "
                          "run was trained with (tokenizer_name / the checkpoint's tokenizer "
                          "files), or start a new run.")
    if diff == ["data"]:
        raise ConfigError("The data changed since this data position was saved (same files, "
                          f"other content: fingerprint {state['settings']['data']} then, "
                          f"{settings['data']} now): resume on the data it was trained "
                          "on, or pass --dataset_accept_changed_data true to start the epoch "
                          "again on the new data.")
    if diff:
        saved = {k: state["settings"].get(k) for k in diff}
        now = {k: settings[k] for k in diff}
        raise ConfigError(f"The data state was saved with other data settings ({saved} then, "
                          f"{now} now): resume with the same dataset arguments, seed and "
                          "tokenizer, or start a new run.")
