"""Elastic resume: a checkpoint written by W ranks x K workers continues on W' ranks x K' workers.

    states = reader_states(loader_states_of_every_rank)          # one per old reader (slot)
    starts = redistribute(states, stream, n_slots=W' * K')      # new slot -> its initial state

Every reader's state is a position in its own list of *items* for its epoch (Parquet row groups,
whole files, or the rest of another reader's window). Turned into "what is left", per old reader:

  * the rest of its current shuffle window: a WindowRest, which re-reads that window (same pieces,
    same permutation key) and keeps the documents from the saved one on, the first without the
    tokens already trained on (no carried tokens are lost: the position is the next token);
  * the rest of the item where the window ended (first_row), then its remaining items whole.

An old reader in an earlier epoch than the others also owes those later epochs in full. The items
of each epoch ("phase") are dealt round-robin to the new readers (split by row stride when there are
fewer items than readers), who read them, shuffled in new windows, before starting the next epoch
with the new topology. Within an epoch no document is trained on twice and none is skipped; the
order differs from an uninterrupted run. Same topology: the exact path, not this one.
"""
from __future__ import annotations

import json
from dataclasses import replace

from .config import ConfigError
from .documents import DocumentStream, Piece, WindowRest, split_item


# -- items as JSON ------------------------------------------------------------------------------
def encode_items(items: list, plan) -> str:
    index = {(p.shard, p.row_group): i for i, p in enumerate(plan.pieces)}

    def enc(it):
        if isinstance(it, Piece):
            return ["p", index[(it.shard, it.row_group)], it.stride, it.offset, it.first_row]
        return ["w", [enc(x) for x in it.pieces], it.start_row, None if it.key is None else list(it.key),
                it.doc, it.token, it.stride, it.offset, it.first_row]
    return json.dumps([enc(it) for it in items], separators=(",", ":"))


def decode_items(text: str, plan) -> list:
    def dec(e):
        if e[0] == "p":
            p = plan.pieces[e[1]]
            return Piece(p.shard, p.row_group, p.num_rows, e[2], e[3], e[4])
        return WindowRest(tuple(dec(x) for x in e[1]), e[2], None if e[3] is None else tuple(e[3]), e[4], e[5],
                          e[6], e[7], e[8])
    return [dec(e) for e in json.loads(text)]


# -- old readers ----------------------------------------------------------------------------------
def find_dicts(obj, match) -> list[dict]:
    """Every dict for which match(d) is true in a nest of dicts and lists (a match is not searched inside)."""
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


def share(total: int, parts: int, i: int) -> int:
    """Part i of `total` split into `parts` as evenly as integers allow (the first ones get the remainder)."""
    return total // parts + (i < total % parts)


def epoch_start(epoch: int, items: str | None = None, cap: int | None = None, pending: str | None = None,
                gen: int = 0) -> dict:
    """A reader's position at the start of `epoch`; items/cap/pending/gen: the phase an elastic resume
    owes it (items JSON and sample cap of this epoch, later epochs owed, elastic resumes so far)."""
    return {"epoch": epoch, "window": 0, "start": [0, 0], "next": [0, 0], "key": None, "doc": 0, "token": 0,
            "samples_in_epoch": 0, "items": items, "cap": cap, "pending": pending, "gen": gen}


def owed_phase(state: dict, epoch: int) -> tuple[str, int | None] | None:
    """(items JSON, cap) that reader `state` owes in `epoch` after an elastic resume; None: a regular epoch."""
    if epoch == state["epoch"]:
        return (state["items"], state.get("cap")) if state.get("items") is not None else None
    for e, text, cap in json.loads(state.get("pending") or "[]"):
        if e == epoch:
            return text, cap
    return None


def _items_of(stream: DocumentStream, state: dict, epoch: int, plan) -> list:
    """What old reader `state` reads in `epoch` (its current epoch, a pending phase, or a regular epoch)."""
    owed = owed_phase(state, epoch)
    return decode_items(owed[0], plan) if owed else stream.slot_pieces(epoch)


def _with_first_row(item, row: int):
    return replace(item, first_row=max(item.first_row, row))


def leftover(stream: DocumentStream, state: dict, plan) -> list:
    """The items of old reader `state`'s current epoch that it has not trained on."""
    items = _items_of(stream, state, state["epoch"], plan)
    (pi, r), (npi, nr) = state["start"], state.get("next") or state["start"]
    if state["doc"] == 0 and state["token"] == 0:   # its window is untouched: read again from its start
        return ([_with_first_row(items[pi], r)] if pi < len(items) else []) + items[pi + 1:]
    rest = [WindowRest(tuple(items[pi:npi + 1]), r, None if state.get("key") is None else tuple(state["key"]),
                       state["doc"], state["token"])]
    if npi < len(items):
        rest.append(_with_first_row(items[npi], nr))
    return rest + items[npi + 1:]


def redistribute(old: list[dict], stream_of, plan, n_slots: int, regular_cap) -> dict[int, dict]:
    """Initial states of the new readers 0..n_slots-1 from the old readers' states.

    stream_of(slot, n_slots) -> DocumentStream of an old reader; regular_cap(state) -> its sample cap in a
    regular epoch (None: uncapped). The returned states hold the position, phases and counters; the caller
    adds the reader's identity (version, settings, rank, world_size, workers, slot, n_slots).
    """
    n_old = old[0]["n_slots"]
    if sorted(st["slot"] for st in old) != list(range(n_old)) or any(st["n_slots"] != n_old for st in old):
        raise ConfigError(f"The checkpoint's data states do not cover its {n_old} readers exactly once "
                          "(a rank's file is missing or from another run): resume from a complete checkpoint.")
    streams = [stream_of(st["slot"], n_old) for st in old]
    lo, hi = min(st["epoch"] for st in old), max(st["epoch"] for st in old)
    phases = []   # (epoch, items, cap or None) for epochs lo..hi
    for epoch in range(lo, hi + 1):
        items, cap = [], 0
        for st, stream in zip(old, streams):
            if st["epoch"] > epoch:
                continue
            owed = owed_phase(st, epoch)
            c = owed[1] if owed else regular_cap(st)
            if st["epoch"] == epoch:
                items += leftover(stream, st, plan)
                cap = None if c is None or cap is None else cap + max(0, c - st["samples_in_epoch"])
            else:
                items += _items_of(stream, st, epoch, plan)
                cap = None if c is None or cap is None else cap + c
        if 0 < len(items) < n_slots:
            items = [q for it in items for q in split_item(it, -(-n_slots // len(items)))]
        phases.append((epoch, items, cap))
    gen = max(st.get("gen", 0) for st in old) + 1
    totals: dict = {}
    for st in old:
        for k, v in st["stats"].items():
            totals[k] = totals.get(k, 0) + v
    starts = {}
    for slot in range(n_slots):
        mine = [(e, encode_items(items[slot::n_slots], plan), None if cap is None else share(cap, n_slots, slot))
                for e, items, cap in phases]
        epoch, items, cap = mine[0]
        stats = {k: (v / n_slots if isinstance(v, float) else share(v, n_slots, slot)) for k, v in totals.items()}
        pending = json.dumps([list(m) for m in mine[1:]]) if len(mine) > 1 else None
        starts[slot] = {**epoch_start(epoch, items, cap, pending, gen), "stats": stats}
    return starts
