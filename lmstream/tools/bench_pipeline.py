"""The pipeline benchmark: each tokenizer backend alone on texts in memory (the bounds), lmstream in
one process on each backend, lmstream's loader with workers, and the Hugging Face examples' pipeline
(map + group_texts), side by side on the same corpus (see lmstream.tools.bench for the command and
the targets).
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from ..tokens import backends
from ..config import DataArguments
from ..stream.pipeline import build_pipeline
from .reference import reference_loader
from ..stream.loader import build_loader
from ..corpus.sources import plan_dataset
from ..tokens.tokenize import build_encoder, forget_backends


def corpus_texts(args: DataArguments) -> list[str]:
    from ..corpus.documents import iter_documents
    return list(iter_documents(plan_dataset(args), args, shuffle=False))


def repeated(args: DataArguments, passes: int) -> DataArguments:
    """The dataset's shards listed `passes` times over: a longer run with the same content."""
    if passes <= 1:
        return args
    shards = ",".join(s.url for s in plan_dataset(args).shards)
    return dataclasses.replace(args, dataset_name=",".join([shards] * passes),
                               dataset_config_name=None)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _lmstream_epoch(args, tokenizer, batch: int, workers: int) -> tuple[int, float, float]:
    """(tokens, seconds, start-up seconds) of one epoch of a freshly built pipeline: the start-up
    (plan, tokenizer backend and its self-check) is timed apart, the epoch from the loader's first
    request to its last batch."""
    # a fresh tokenizer backend, as each backend alone gets: its cache would remember the texts
    forget_backends()
    t0 = time.perf_counter()
    ds = build_pipeline(dataclasses.replace(args, dataset_cycle=False), tokenizer)
    t1 = time.perf_counter()
    n = sum(int(b["input_ids"].numel()) for b in build_loader(ds, batch, workers))
    return n, time.perf_counter() - t1, t1 - t0


def _epoch_rate(args, tokenizer, batch: int, workers: int, repeats: int) -> tuple[float, float]:
    """(best tokens/s over `repeats` fresh pipelines, their least start-up seconds)."""
    runs = [_lmstream_epoch(args, tokenizer, batch, workers) for _ in range(repeats)]
    return max(n / t for n, t, _ in runs), min(s for _, _, s in runs)


def _provenance_cost(args, tokenizer, repeats: int) -> tuple[float, float, float]:
    """(tokens per CPU second with provenance, without, the median of the paired cost ratios): one
    process's stream over the corpus listed 4 times, CPU time (this machine's wall-clock noise is
    larger than the effect), each pair run back to back."""
    import numpy as np
    from ..tokens.packing import BlockPacker
    many = dataclasses.replace(repeated(args, 4), dataset_cycle=False)
    plan = plan_dataset(many)

    def cpu(on: bool) -> tuple[int, float]:
        BlockPacker.track_provenance = on
        ds = build_pipeline(many, tokenizer, plan=plan)
        t0 = time.process_time()
        n = sum(int(b["input_ids"].numel()) for b in ds)
        return n, time.process_time() - t0
    try:
        cpu(True)   # warm: imports, the tokenizer's first calls
        pairs = [(cpu(True), cpu(False)) for _ in range(max(15, repeats))]
    finally:
        BlockPacker.track_provenance = True
    cost = float(np.median([a[1] / b[1] - 1 for a, b in pairs]))
    return max(n / t for (n, t), _ in pairs), max(n / t for _, (n, t) in pairs), cost


def reference_pipeline(args: DataArguments, tokenizer, block: int, batch: int, workers: int) -> int:
    """Tokens of one epoch through the reference script's pipeline (lmstream.tools.reference)."""
    files = [s.url for s in plan_dataset(args).shards]
    loader = reference_loader(files, args.dataset_text_field, tokenizer, block, batch, workers)
    return sum(int(b["input_ids"].numel()) for b in loader)


def _best_of(fn, repeats: int) -> tuple[object, float]:
    """fn's result and its fastest time over `repeats` runs (the machine's noise only ever slows a
    run)."""
    runs = [_timed(fn) for _ in range(repeats)]
    return runs[0][0], min(t for _, t in runs)


def _backends_alone(texts: list[str], tokenizer, repeats: int) -> dict:
    """Tokens/s of each backend alone on texts in memory (the bounds): HF (batches of 256), tiktoken
    (one thread, one call per text, as the pipeline calls it) and fastokens (one flat call on all
    the cores: this process's fastokens threads, fixed at its first call, are the cores; lmstream's
    own runs are in a fresh process)."""
    out = {}
    batches = [texts[i:i + 256] for i in range(0, len(texts), 256)]
    n, hf_s = _best_of(lambda: sum(len(x) for b in batches
                                   for x in tokenizer(b, verbose=False)["input_ids"]), repeats)
    out["hf"] = n / hf_s
    tk = backends.tiktoken_backend(tokenizer)
    if tk is not None:
        n, t = _best_of(lambda: sum(len(tk.encode(x, allowed_special="all")) for x in texts),
                        repeats)
        out["tiktoken"] = n / t
    if "FASTOKENS_BPE_THREADS" not in os.environ:
        backends.limit_threads(backends.tokenizer_threads())
    fast = backends.fastokens_backend(tokenizer)
    # a fresh tokenizer per run (built untimed): its segment cache would remember the texts
    if fast is not None:
        rates = []
        for _ in range(repeats):
            tok = type(fast).from_json_str(backends.tokenizer_json(tokenizer))
            n, t = _timed(lambda: len(tok.encode_batch_flat(texts, add_special_tokens=True)[0])
                          // 4)
            rates.append(n / t)
        out["fastokens"] = max(rates)
    return out


def in_process_measures(args: DataArguments, tokenizer_path: str, batch: int, repeats: int,
                        names: list, workers: int, passes: int) -> dict:
    """lmstream in one process, measured in a fresh process with lmstream's own fastokens threads
    (this one's are all the cores, for the bounds; a process's are fixed at its first call):
    {"rates": {backend: (best tokens/s, least start-up seconds)}, "provenance": _provenance_cost,
    "sustained": _sustained with `workers`, `passes`}."""
    code = "import sys; from lmstream.tools.bench_pipeline import _in_process_child; _in_process_child(*sys.argv[1:])"
    env = {k: v for k, v in os.environ.items() if k != "FASTOKENS_BPE_THREADS"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(dataclasses.asdict(args)),
                          tokenizer_path, str(batch), str(repeats), ",".join(names), str(workers),
                          str(passes)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _in_process_child(args_json: str, tokenizer_path: str, batch: str, repeats: str, names: str,
                      workers: str, passes: str) -> None:
    from transformers import AutoTokenizer
    args = DataArguments(**json.loads(args_json))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    # its runs: as many as fastokens alone gets (3 x repeats, best taken)
    chosen = build_encoder(tokenizer).backend
    rates = {n: _epoch_rate(dataclasses.replace(args, dataset_tokenizer_backend=n), tokenizer,
                            int(batch), 0,
                            int(repeats) * (3 if n == chosen else 1)) for n in names.split(",")}
    default = dataclasses.replace(args, dataset_tokenizer_backend=chosen)
    print(json.dumps({"rates": rates,
                      "provenance": _provenance_cost(default, tokenizer, int(repeats)),
                      "sustained": _sustained(default, tokenizer, int(batch), int(workers),
                                              int(repeats), int(passes))}))


def _sustained(args, tokenizer, batch: int, workers: int, repeats: int, passes: int) -> dict:
    """The rate a training job receives tokens at, once started: one long epoch (the corpus `passes`
    times over) in one process and with `workers` workers, in turn, in 2 x `repeats` rounds
    (start-up measured apart). The ratio is the median of the rounds' own ratios: this machine's
    speed drifts over minutes, and a best of each taken in different minutes would compare a fast
    minute with a slow one."""
    many = repeated(args, passes)
    runs = {0: [], workers: []}
    for _ in range(2 * repeats):
        for w in runs:
            n, seconds, _ = _lmstream_epoch(many, tokenizer, batch, w)
            runs[w].append(n / seconds)
    ratios = [b / a for a, b in zip(runs[0], runs[workers])]
    return {"passes": passes, "in_process_tok_s": max(runs[0]), "workers_tok_s": max(runs[workers]),
            "ratio": statistics.median(ratios), "ratios": ratios}


SUSTAINED_TOKENS = 100_000_000   # the sustained rates' epoch: about 2 s of lmstream on 2 cores


def bench_pipeline(args, tokenizer, block: int, batch: int, workers: int, repeats: int = 3,
                   passes: int | None = None) -> dict:
    """`passes`: the corpus's passes in the sustained rates' epoch (default: SUSTAINED_TOKENS'
    worth)."""
    texts = corpus_texts(args)
    corpus_tokens = sum(len(x) + 1 for x in tokenizer(texts, verbose=False)["input_ids"])
    passes = passes or max(1, -(-SUSTAINED_TOKENS // corpus_tokens))
    alone = _backends_alone(texts, tokenizer, repeats)
    args = dataclasses.replace(args, dataset_block_size=block)
    # fastokens alone also in fresh processes, as lmstream's runs are, before and after them: the
    # bound is the best
    path, threads = tokenizer.name_or_path, backends.tokenizer_threads()
    before = fastokens_rate(args, path, threads, repeats) if "fastokens" in alone else None
    fresh = in_process_measures(args, path, batch, repeats, list(alone), workers, passes)
    if before is not None:
        alone["fastokens"] = max(alone["fastokens"], before,
                                 fastokens_rate(args, path, threads, repeats))
    per_backend = {k: rate for k, (rate, _) in fresh["rates"].items()}
    startup = {k: seconds for k, (_, seconds) in fresh["rates"].items()}
    default = build_encoder(tokenizer).backend
    with_prov, without, prov_cost = fresh["provenance"]
    lm_rate, _ = _epoch_rate(args, tokenizer, batch, workers, repeats)
    lm_tokens, lm_s, _ = _lmstream_epoch(args, tokenizer, batch, workers)
    sustained = fresh["sustained"]
    ref_tokens, ref_s = _timed(lambda: reference_pipeline(args, tokenizer, block, batch, workers))
    fastest = max(alone.values())
    r = {"corpus_tokens": corpus_tokens, "documents": len(texts), "backend": default,
         **{f"{k}_alone_tok_s": v for k, v in alone.items()},
         **{f"lmstream_{k}_tok_s": v for k, v in per_backend.items()},
         "hf_tokenizer_tok_s": alone["hf"], "tiktoken_tok_s": alone.get("tiktoken"),
         "fastest_alone_tok_s": fastest, "lmstream_in_process_tok_s": per_backend[default],
         "workers": workers, **{f"startup_{k}_seconds": v for k, v in startup.items()},
         "lmstream_tok_s": lm_rate, "lmstream_kept": lm_tokens / corpus_tokens,
         "reference_tok_s": ref_tokens / ref_s, "reference_kept": ref_tokens / corpus_tokens,
         "reference_corpus_tok_s": corpus_tokens / ref_s,
         "lmstream_corpus_tok_s": corpus_tokens / lm_s, "sustained_passes": passes,
         "sustained_in_process_tok_s": sustained["in_process_tok_s"],
         "sustained_workers_tok_s": sustained["workers_tok_s"],
         "sustained_ratios": sustained["ratios"], "in_process_with_provenance_cpu_tok_s": with_prov,
         "in_process_without_provenance_cpu_tok_s": without, "provenance_cost": prov_cost}
    return _with_ratios(r, fastest, sustained["ratio"])


def _with_ratios(r: dict, fastest: float, sustained_ratio: float) -> dict:
    r["ratio_vs_hf_bound"] = r["lmstream_tok_s"] / r["hf_tokenizer_tok_s"]
    # tokens delivered to training
    r["ratio_vs_reference"] = r["lmstream_tok_s"] / r["reference_tok_s"]
    # corpus processed
    r["ratio_vs_reference_corpus"] = r["lmstream_corpus_tok_s"] / r["reference_corpus_tok_s"]
    r["in_process_vs_fastest"] = r["lmstream_in_process_tok_s"] / fastest
    # once started: the median of the rounds' paired ratios
    r["workers_vs_in_process"] = sustained_ratio
    r["workers_vs_in_process_best"] = r["sustained_workers_tok_s"] / r["sustained_in_process_tok_s"]
    # start-up included
    r["workers_vs_in_process_one_pass"] = r["lmstream_tok_s"] / r["lmstream_in_process_tok_s"]
    return r


def fastokens_rate(args: DataArguments, tokenizer_path: str, threads: int, repeats: int = 1,
                   processes: int = 1) -> float:
    """fastokens alone on `threads` threads (FASTOKENS_BPE_THREADS) in each of `processes` fresh
    processes at once, texts in memory: tokens/s of all of them together (their tokens over the
    slowest one's time), the best of `repeats` rounds, each by a fresh tokenizer (built untimed: its
    segment cache would remember the texts)."""
    code = ("import json, sys, time; from transformers import AutoTokenizer\nfrom lmstream.config "
            "import DataArguments; from lmstream.tokens import backends\nfrom "
            "lmstream.tools.bench_pipeline import corpus_texts\na = "
            "DataArguments(**json.loads(sys.argv[1])); texts = corpus_texts(a)\nhf = "
            "AutoTokenizer.from_pretrained(sys.argv[2]); fast = backends.fastokens_backend(hf)\n"
            "for _ in range(int(sys.argv[3])):\n    tok = "
            "type(fast).from_json_str(backends.tokenizer_json(hf))\n    print('ready', "
            "flush=True); sys.stdin.readline(); t0 = time.perf_counter()\n    n = "
            "len(tok.encode_batch_flat(texts, add_special_tokens=True)[0]) // 4\n    print(n, "
            "time.perf_counter() - t0, flush=True)\n")
    data = json.dumps({"dataset_name": args.dataset_name,
                       "dataset_config_name": args.dataset_config_name})
    env = {**os.environ, "FASTOKENS_BPE_THREADS": str(threads),
           "LMSTREAM_TOKENIZER_THREADS": str(threads)}
    children = [subprocess.Popen([sys.executable, "-c", code, data, tokenizer_path, str(repeats)],
                                 env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                for _ in range(processes)]
    rates = []
    try:
        for _ in range(repeats):
            for c in children:   # all loaded and ready: then all start together
                assert c.stdout.readline().strip() == "ready"
            for c in children:
                c.stdin.write("go\n")
                c.stdin.flush()
            done = [c.stdout.readline().split() for c in children]
            rates.append(sum(int(n) for n, _ in done) / max(float(t) for _, t in done))
    finally:
        for c in children:
            c.stdin.close()
            c.wait()
    return max(rates)
