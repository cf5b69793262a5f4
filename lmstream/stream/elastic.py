"""Elastic resume: a checkpoint written by W ranks x K workers continues on W' ranks x K' workers.

    # new slot -> start
    starts = redistribute(old_reader_states, stream_of, plan, n_slots=W' * K', regular_cap)

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

from dataclasses import replace

from ..corpus.documents import DocumentStream
from ..errors import ConfigError
from ..corpus.plan import Piece, WindowRest, split_item
from .state import Phase, ReaderState, share, sum_counters


# -- items as JSON ------------------------------------------------------------------------------
def encode_items(items: list, plan) -> list:
    """Items as JSON lists: a Piece by its number in the plan, a WindowRest with the items it
    re-reads."""
    index = {(p.shard, p.row_group): i for i, p in enumerate(plan.pieces)}

    def enc(it):
        if isinstance(it, Piece):
            return ["p", index[(it.shard, it.row_group)], it.stride, it.offset, it.first_row]
        return ["w", [enc(x) for x in it.pieces], it.start_row,
                None if it.key is None else list(it.key), it.doc, it.token, it.stride, it.offset,
                it.first_row]
    return [enc(it) for it in items]


def decode_items(encoded: list, plan) -> list:
    def dec(e):
        if e[0] == "p":
            p = plan.pieces[e[1]]
            return Piece(p.shard, p.row_group, p.num_rows, e[2], e[3], e[4])
        return WindowRest(tuple(dec(x) for x in e[1]), e[2], None if e[3] is None else tuple(e[3]),
                          e[4], e[5], e[6], e[7], e[8])
    return [dec(e) for e in encoded]


# -- old readers ----------------------------------------------------------------------------------
def _items_of(stream: DocumentStream, state: ReaderState, epoch: int, plan) -> list:
    """What old reader `state` reads in `epoch` (its current epoch, a pending phase, or a regular
    epoch)."""
    owed = state.phase.for_epoch(state.epoch, epoch)
    return decode_items(owed[0], plan) if owed else stream.slot_pieces(epoch)


def _with_first_row(item, row: int):
    return replace(item, first_row=max(item.first_row, row))


def leftover(stream: DocumentStream, state: ReaderState, plan) -> list:
    """The items of old reader `state`'s current epoch that it has not trained on."""
    items = _items_of(stream, state, state.epoch, plan)
    (pi, r), (npi, nr) = state.start, state.next
    if state.doc == 0 and state.token == 0:   # its window is untouched: read again from its start
        return ([_with_first_row(items[pi], r)] if pi < len(items) else []) + items[pi + 1:]
    rest = [WindowRest(tuple(items[pi:npi + 1]), r, state.key, state.doc, state.token)]
    if npi < len(items):
        rest.append(_with_first_row(items[npi], nr))
    return rest + items[npi + 1:]


def _phases(old: list[ReaderState], streams: list, plan, n_slots: int, regular_cap) -> list:
    """(epoch, items, cap or None) for the epochs the old readers were in: what is left of each."""
    lo, hi = min(st.epoch for st in old), max(st.epoch for st in old)
    phases = []
    for epoch in range(lo, hi + 1):
        items, cap = [], 0
        for st, stream in zip(old, streams):
            if st.epoch > epoch:
                continue
            owed = st.phase.for_epoch(st.epoch, epoch)
            c = owed[1] if owed else regular_cap(st)
            if st.epoch == epoch:
                items += leftover(stream, st, plan)
                cap = None if c is None or cap is None else cap + max(0, c - st.samples_in_epoch)
            else:
                items += _items_of(stream, st, epoch, plan)
                cap = None if c is None or cap is None else cap + c
        if 0 < len(items) < n_slots:
            items = [q for it in items for q in split_item(it, -(-n_slots // len(items)))]
        phases.append((epoch, items, cap))
    return phases


def redistribute(old: list[ReaderState], stream_of, plan, n_slots: int,
                 regular_cap) -> dict[int, tuple]:
    """(epoch, Phase, counters) of the new readers 0..n_slots-1 from the old readers' states.

    stream_of(slot, n_slots) -> DocumentStream of an old reader; regular_cap(state) -> its sample
    cap in a regular epoch (None: uncapped). The caller makes them reader states with the new
    readers' identities.
    """
    n_old = old[0].who.n_slots
    if (sorted(st.who.slot for st in old) != list(range(n_old))
            or any(st.who.n_slots != n_old for st in old)):
        raise ConfigError(f"The checkpoint's data states do not cover its {n_old} readers exactly "
                          "once (a rank's file is missing or from another run): resume from a "
                          "complete checkpoint.")
    phases = _phases(old, [stream_of(st.who.slot, n_old) for st in old], plan, n_slots, regular_cap)
    gen = max(st.phase.gen for st in old) + 1
    totals = sum_counters(st.stats for st in old)
    starts = {}
    for slot in range(n_slots):
        mine = [(e, encode_items(items[slot::n_slots], plan),
                 None if cap is None else share(cap, n_slots, slot))
                for e, items, cap in phases]
        stats = {k: (v / n_slots if isinstance(v, float) else share(v, n_slots, slot)) for k,
                 v in totals.items()}
        (epoch, items, cap), pending = mine[0], tuple(mine[1:])
        starts[slot] = (epoch, Phase(items, cap, pending, gen), stats)
    return starts
