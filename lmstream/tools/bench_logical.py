"""Logical readers against one reader per process and worker, side by side on one corpus: tokens/s
in one process and with workers, the first batch of a new run, and the first batch after a resume
(docs/resume.md has the figures).

    python -m lmstream.tools.bench_logical DATASET [--config C] [--readers 8 64] [--workers 0 2]
        [--blocks 1500] [--rounds 3] [--json OUT]

Each round runs every variant once, in turn (this machine is noisy: ratios within a round are what
counts); each variant builds its pipeline and loader afresh, with a fresh tokenizer backend.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from ..config import DataArguments
from ..stream.loader import build_loader
from ..stream.pipeline import build_pipeline
from ..tokens.tokenize import forget_backends
from .bench_pipeline import repeated


def _loader(args, tokenizer, readers: int, batch: int, workers: int, state=None):
    forget_backends()
    ds = build_pipeline(dataclasses.replace(args, dataset_logical_readers=readers), tokenizer)
    loader = build_loader(ds, batch, workers)
    if state is not None:
        loader.load_state_dict(state)
    return loader


def measure(args, tokenizer, readers: int, batch: int, workers: int, blocks: int) -> dict:
    """tokens/s over the second half of `blocks` (sustained) and over the first half (after the
    first batch: every reader starts there), seconds to the first batch of a new run and of a run
    resumed after `blocks` blocks."""
    t0 = time.perf_counter()
    loader = _loader(args, tokenizer, readers, batch, workers)
    it = iter(loader)
    n = next(it)["input_ids"].numel()
    t1 = time.perf_counter()
    half = blocks * args.dataset_block_size // 2
    while n < half:
        n += next(it)["input_ids"].numel()
    th, nh = time.perf_counter(), n
    while n < 2 * half:
        n += next(it)["input_ids"].numel()
    t2 = time.perf_counter()
    state = loader.state_dict()
    del it
    t3 = time.perf_counter()
    next(iter(_loader(args, tokenizer, readers, batch, workers, state)))
    return {"tokens_per_s": (n - nh) / (t2 - th),
            "first_half_tokens_per_s": (nh - batch * args.dataset_block_size) / (th - t1),
            "first_batch_s": t1 - t0, "resume_first_batch_s": time.perf_counter() - t3}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lmstream.tools.bench_logical")
    p.add_argument("dataset")
    p.add_argument("--config", default=None)
    p.add_argument("--tokenizer", default="openai-community/gpt2")
    p.add_argument("--readers", type=int, nargs="+", default=[8])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--blocks", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--passes", type=int, default=1, help="the dataset's files listed this many times over")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    args = repeated(DataArguments(dataset_name=a.dataset, dataset_config_name=a.config,
                                  dataset_block_size=a.block_size), a.passes)
    variants = [(r, w) for w in a.workers for r in [0, *a.readers]]
    runs: dict = {v: [] for v in variants}
    for _ in range(a.rounds):
        for r, w in variants:
            runs[(r, w)].append(measure(args, tokenizer, r, a.batch, w, a.blocks))
    out = []
    for (r, w), got in runs.items():
        med = {k: statistics.median(x[k] for x in got) for k in got[0]}
        base = statistics.median(x["tokens_per_s"] for x in runs[(0, w)])
        out.append({"logical_readers": r, "workers": w, **{k: round(v, 3) for k, v in med.items()},
                    "tokens_per_s_vs_per_process": round(med["tokens_per_s"] / base, 3)})
        print(f"readers {r or 'per-process':>11} workers {w}: {med['tokens_per_s']:>12,.0f} tok/s "
              f"({out[-1]['tokens_per_s_vs_per_process']:.3f}x; first half "
              f"{med['first_half_tokens_per_s']:,.0f}), first batch "
              f"{med['first_batch_s']:.2f} s, after a resume {med['resume_first_batch_s']:.2f} s")
    report = {"dataset": a.dataset, "passes": a.passes, "blocks": a.blocks, "batch": a.batch,
              "block_size": a.block_size, "rounds": a.rounds, "results": out}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
