"""What notebooks 01 and 04 measure about resuming: the same epoch straight through and stopped and
resumed (what was lost, repeated or reordered), the seconds to the next batch after a resume (the
Trainer's skip against a saved position) and their growth per batch, and an elastic resume's token
accounting.

    resume_accounting(straight, before + after, "lmstream")   # one row: never read, read twice, ...
    cost = resume_cost_table(args, tokenizer, 8, 2, (25, 250, 1000), reference_up_to=250)
    resume_slopes(cost)                                        # milliseconds per batch skipped
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import time

from ..corpus.documents import iter_documents
from ..corpus.sources import plan_dataset
from ..stream.loader import build_loader
from ..stream.pipeline import build_pipeline
from ..stream.state import merge_stats


def block_bytes(stream, n: int | None = None) -> list[bytes]:
    """The token ids of a stream's next `n` blocks (all, if None), each as bytes: comparable and
    countable."""
    return [b["input_ids"].numpy().tobytes() for b in itertools.islice(stream, n)]


def resume_accounting(straight: list, resumed: list, name: str) -> "pd.DataFrame":
    """One epoch read straight through against the same epoch stopped and resumed (the items read
    before the stop, then the resumed stream's): what was lost, repeated, or reordered."""
    import pandas as pd
    seen, wanted = collections.Counter(resumed), collections.Counter(straight)
    return pd.DataFrame([{
        "items in the epoch": len(straight), "items read, stopped and resumed": len(resumed),
        "never read": sum((wanted - seen).values()), "read twice": sum((seen - wanted).values()),
        "same order as straight through": resumed == straight}], index=[name])


def state_after(args, tokenizer, batch: int, workers: int, k: int) -> dict:
    """The loader state of a fresh stream after k batches (as a checkpoint at that step would hold
    it)."""
    loader = build_loader(build_pipeline(args, tokenizer), batch, workers)
    it = iter(loader)
    for _ in range(k):
        next(it)
    state = loader.state_dict()
    del it
    return state


def first_batch_after(args, tokenizer, batch: int, workers: int, k: int, how: str) -> float:
    """Seconds from a fresh loader to the first batch after k consumed batches: lmstream's state
    ("exact"), the same state on one worker fewer or one more ("elastic"), or the Trainer's skip
    ("skip")."""
    from accelerate import skip_first_batches
    state = state_after(args, tokenizer, batch, workers, k)
    t0 = time.perf_counter()
    if how == "elastic":
        ds = build_pipeline(args, tokenizer)
        other = workers - 1 if workers > 1 else 2
        ds.resume_elastic([state], other)
        next(iter(build_loader(ds, batch, other)))
        return time.perf_counter() - t0
    fresh = build_loader(build_pipeline(args, tokenizer), batch, workers)
    if how == "exact":
        fresh.load_state_dict(state)
        next(iter(fresh))
    else:
        next(iter(skip_first_batches(fresh, k)))
    return time.perf_counter() - t0


def reference_skip(args, tokenizer, batch: int, workers: int, k: int) -> float:
    """Seconds to the first batch after skipping k batches of the reference script's pipeline, as
    the Trainer resumes it (accelerate's skip_first_batches: every skipped batch is read, tokenized
    and grouped)."""
    from accelerate import skip_first_batches
    from .reference import reference_loader
    files = [s.url for s in plan_dataset(args).shards]
    t0 = time.perf_counter()
    loader = reference_loader(files, args.dataset_text_field, tokenizer, args.dataset_block_size,
                              batch, workers)
    next(iter(skip_first_batches(loader, k)))
    return time.perf_counter() - t0


def resume_cost_table(args, tokenizer, batch: int, workers: int, points=(10, 100, 400),
                      reference_up_to: int | None = None) -> "pd.DataFrame":
    """Seconds to the next batch when resuming after k batches, for each k in `points`: the
    Trainer's default skip (read and tokenize the k batches again, then throw them away) through the
    reference script's pipeline and through lmstream's, against lmstream's saved position."""
    import pandas as pd
    rows = []
    for k in points:
        # the reference's skip is timed up to `reference_up_to` batches (it re-reads them all)
        far = reference_up_to is not None and k > reference_up_to
        ref = float("nan") if far else reference_skip(args, tokenizer, batch, workers, k)
        skip = first_batch_after(args, tokenizer, batch, workers, k, "skip")
        exact = first_batch_after(args, tokenizer, batch, workers, k, "exact")
        rows.append({"resume after (batches)": k,
                     "tokens already trained on": k * batch * args.dataset_block_size,
                     "Trainer skip, reference pipeline (s)": round(ref, 2),
                     "Trainer skip, lmstream pipeline (s)": round(skip, 2),
                     "lmstream position (s)": round(exact, 2),
                     "reference skip / position": round(ref / exact, 1)})
    return pd.DataFrame(rows).set_index("resume after (batches)")


def elastic_accounting(args, tokenizer, batch: int, stop_after: int,
                       workers: int = 2) -> "pd.DataFrame":
    """Token accounting of an elastic resume: one epoch read uninterrupted by `workers` DataLoader
    workers, against the same epoch stopped after `stop_after` batches and finished by a single
    reader (in-process), and both against the tokenizer's count of every document of the epoch (EOS
    included)."""
    import pandas as pd
    from ..tokens.tokenize import build_encoder
    args = dataclasses.replace(args, dataset_cycle=False)
    texts = list(iter_documents(plan_dataset(args), args, shuffle=False))
    every = int(build_encoder(tokenizer).encode(texts)[1].sum())
    whole = build_loader(build_pipeline(args, tokenizer), batch, workers)
    for _ in whole:
        pass
    saved = state_after(args, tokenizer, batch, workers, stop_after)
    rest = build_pipeline(args, tokenizer)
    rest.resume_elastic([saved], 0)   # 0: the rest of the epoch read in this process, by one reader
    for _ in rest:
        pass
    w, before, after = merge_stats(whole.state_dict()), merge_stats(saved), rest.stats
    rows = [("all documents, tokenized", None, None, every),
            (f"uninterrupted ({workers} workers)", w["tokens"], w["tokens_dropped"],
             w["tokens"] + w["tokens_dropped"]),
            (f"first {stop_after} batches ({workers} workers)", before["tokens"], None, None),
            ("the rest (1 reader, elastic)", after["tokens"] - before["tokens"],
             after["tokens_dropped"], None),
            ("first + rest", after["tokens"], after["tokens_dropped"],
             after["tokens"] + after["tokens_dropped"])]
    return pd.DataFrame([{"run": r, "tokens trained on": t, "dropped at the epoch's end": d,
                          "tokens in all": a}
                         for r, t, d, a in rows]).set_index("run").astype("Int64")


def resume_slopes(cost) -> "pd.Series":
    """Milliseconds each further batch already trained on adds to a resume, per way of resuming in
    a resume_cost_table: between its first and last measured points."""
    import pandas as pd
    out = {}
    for col in (c for c in cost.columns if c.endswith("(s)")):
        measured = cost[col].dropna()
        k0, k1 = measured.index[0], measured.index[-1]
        out[col[:-4]] = 1000 * (measured.iloc[-1] - measured.iloc[0]) / (k1 - k0)
    return pd.Series(out, name="ms per batch already trained on").round(2)
