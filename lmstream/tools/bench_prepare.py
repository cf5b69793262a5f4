"""The prepare benchmark: `python -m lmstream.prepare` on all cores against the same held to one
core, and against fastokens alone on one thread and in a process per core (see lmstream.tools.bench
for the command and the targets).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .bench_pipeline import fastokens_rate
from ..config import DataArguments
from ..tokens.tokenize import forget_backends


def _prepare_once(args: DataArguments, tokenizer_path: str, block: int, out: str) -> dict:
    """`python -m lmstream.prepare` once, with a fresh tokenizer backend (a process's backend is
    kept for its later runs, and its cache would remember the corpus: fastokens alone and lmstream's
    other runs start cold too)."""
    import shutil
    forget_backends()
    from ..arguments import parse_args
    from .prepare import prepare
    folder = os.path.join(out, "prepared")
    shutil.rmtree(folder, ignore_errors=True)
    argv = ["--dataset_name", args.dataset_name, "--tokenizer_name", tokenizer_path,
            "--dataset_block_size", str(block), "--tokenized_dataset_save_dir", folder,
            "--output_dir", os.path.join(out, "unused")]
    if args.dataset_config_name:
        argv += ["--dataset_config_name", args.dataset_config_name]
    model_args, data_args, _, training_args = parse_args(argv)
    done = prepare(model_args, data_args, training_args)
    shutil.rmtree(folder, ignore_errors=True)
    return done


def _prepare_on_one_core(args: DataArguments, tokenizer_path: str, block: int, out: str) -> dict:
    """_prepare_once in a fresh process held to one core (so: one process, one fastokens thread),
    the faster of two runs (a fresh process's first touch of its memory is slow here, and slower for
    two processes at once)."""
    code = ("import json, os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\nfrom "
            "lmstream.config import DataArguments; from lmstream.tools.bench_prepare import "
            "_prepare_once\na = DataArguments(**json.loads(sys.argv[1]))\nruns = [_prepare_once(a, "
            "sys.argv[2], int(sys.argv[3]), sys.argv[4]) for _ in range(2)]\n"
            "print(json.dumps(max(runs, key=lambda d: d['tokens_per_second'])))\n")
    data = json.dumps({"dataset_name": args.dataset_name,
                       "dataset_config_name": args.dataset_config_name})
    env = {k: v for k, v in os.environ.items() if k not in ("FASTOKENS_BPE_THREADS",
                                                            "LMSTREAM_TOKENIZER_THREADS")}
    import tempfile
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        done = subprocess.run([sys.executable, "-c", code, data, tokenizer_path, str(block),
                               scratch],
                              capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_prepare(args: DataArguments, tokenizer_path: str, block: int, out: str,
                  repeats: int = 3) -> dict:
    """`python -m lmstream.prepare` on all cores (its work, start-up apart) against cores x
    fastokens' one-thread rate, against cores x prepare held to one core (how it scales), and
    against fastokens alone in as many processes at once (the bound for any pipeline of processes,
    below cores x one thread on a machine whose cores slow each other down). Each is the best of
    `repeats`, all four taken in turn (this machine's speed drifts)."""
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("bench prepare holds a process to one core: Linux only.")
    runs: dict = {"prepare": [], "one_core": [], "single": [], "processes": []}
    for _ in range(repeats):
        done = _prepare_once(args, tokenizer_path, block, out)
        n = done["processes"]
        runs["prepare"].append(done)
        runs["one_core"].append(_prepare_on_one_core(args, tokenizer_path, block,
                                                     out)["tokens_per_second"])
        # the second round warm, as above
        runs["single"].append(fastokens_rate(args, tokenizer_path, 1, 2))
        runs["processes"].append(fastokens_rate(args, tokenizer_path, 1, 2, processes=n))
    best = max(runs["prepare"], key=lambda d: d["tokens_per_second"])
    rate, single, bound = best["tokens_per_second"], max(runs["single"]), max(runs["processes"])
    one = max(runs["one_core"])
    return {"prepare_tok_s": rate, "prepare_startup_seconds": best["startup_seconds"],
            "processes": n, "prepare_one_core_tok_s": one, "single_core_tok_s": single,
            "all_cores_tok_s": bound, "prepare_vs_cores_x_single": rate / (n * single),
            "prepare_scaling": rate / (n * one), "machine_scaling": bound / (n * single),
            "prepare_vs_all_cores": rate / bound}
