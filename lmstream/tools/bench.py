"""Side-by-side benchmarks, each in one run, reported as ratios (this machine is noisy).

    python -m lmstream.bench pipeline --dataset DIR --config NAME --tokenizer PATH
    python -m lmstream.bench resume   --dataset DIR --config NAME --tokenizer PATH
    python -m lmstream.bench train    --dataset DIR --config NAME --tokenizer PATH
    python -m lmstream.bench all --quick          # the bundled sample, tiny sizes (what CI runs)

The README's figures use the corpus `python bench/make_corpus.py corpus/` builds (Python's
documentation from Debian's python3.11-doc, config python-3.11-docs): `--dataset corpus --config
python-3.11-docs`. Each ratio is printed against its target; a --quick run says that its figures are
not comparable.

Each prints a table and writes a JSON and a PNG chart into --out (default bench-results/).
"""
from __future__ import annotations

import argparse
import importlib.util
import dataclasses
import json
import os
import time

import numpy as np

from ..config import DataArguments
from ..training.models import SAMPLE_CONFIG, SAMPLE_DATASET, TINY_MODEL
from ..stream.pipeline import build_pipeline
from ..stream.loader import build_loader
from .bench_pipeline import bench_pipeline, repeated
from .bench_prepare import bench_prepare
from .resuming import first_batch_after


def bench_resume(args, tokenizer, block: int, batch: int, workers: int, early: int, late: int,
                 repeats: int = 3) -> dict:
    args = dataclasses.replace(args, dataset_block_size=block)
    r = {}
    for name, k in (("early", early), ("late", late)):   # median of 3: worker start-up is noisy
        for kind, how in (("lmstream", "exact"), ("lmstream_elastic", "elastic"),
                          ("trainer_skip", "skip")):
            seconds = [first_batch_after(args, tokenizer, batch, workers, k, how)
                       for _ in range(repeats)]
            r[f"{kind}_{name}_s"] = float(np.median(seconds))
    r.update(early_batches=early, late_batches=late,
             lmstream_late_over_early=r["lmstream_late_s"] / r["lmstream_early_s"],
             elastic_late_over_early=r["lmstream_elastic_late_s"] / r["lmstream_elastic_early_s"],
             skip_over_lmstream_late=r["trainer_skip_late_s"] / r["lmstream_late_s"],
             skip_over_lmstream_early=r["trainer_skip_early_s"] / r["lmstream_early_s"])
    return r


def bench_train(args, model_dir: str, block: int, batch: int, workers: int, steps: int,
                out: str) -> dict:
    import resource
    import shutil

    import psutil
    from transformers import TrainerCallback
    from ..arguments import parse_args
    from ..training.run import train
    rss = []

    class Rss(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            rss.append(psutil.Process().memory_info().rss)
    folder = os.path.join(out, "train-run")
    shutil.rmtree(folder, ignore_errors=True)
    argv = ["--do_train", "--dataset_name", args.dataset_name, "--config_name", model_dir,
            "--output_dir", folder, "--max_steps", str(steps), "--per_device_train_batch_size",
            str(batch), "--dataset_block_size", str(block), "--dataloader_num_workers",
            str(workers), "--logging_steps", str(max(1, steps // 10)), "--save_steps",
            str(steps * 10), "--use_cpu", "true", "--disable_tqdm", "true", "--report_to", "none"]
    if args.dataset_config_name:
        argv += ["--dataset_config_name", args.dataset_config_name]
    train(*parse_args(argv), callbacks=[Rss()])
    with open(os.path.join(folder, "trainer_state.json")) as f:
        hist = [h for h in json.load(f)["log_history"] if "data_wait_fraction" in h]
    early = rss[len(rss) // 10] if rss else 0
    return {"steps": steps,
            "tokens_per_second": float(np.median([h["tokens_per_second"] for h in hist])),
            "data_wait_fraction": float(np.mean([h["data_wait_fraction"] for h in hist])),
            "rss_early_MB": early / 1e6, "rss_end_MB": rss[-1] / 1e6 if rss else 0,
            "rss_end_over_early": rss[-1] / early if early else None,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


def _chart(results: dict, path: str) -> None:
    from .plots import bars
    p = results.get("pipeline")
    if p:
        names = [b for b in ("hf", "tiktoken", "fastokens") if f"{b}_alone_tok_s" in p]
        sustained = {}
        if "sustained_ratios" in p:
            sustained = {f"lmstream, {p['workers']} workers, sustained": p["sustained_workers_tok_s"],
                         "lmstream, 1 process, sustained": p["sustained_in_process_tok_s"]}
        bars({"reference": p["reference_tok_s"],
              f"lmstream, {p['workers']} workers, one pass": p["lmstream_tok_s"], **sustained,
              **{f"lmstream {b}, 1 process": p[f"lmstream_{b}_tok_s"] for b in names},
              **{f"{b} alone": p[f"{b}_alone_tok_s"] for b in names}},
             "pipeline throughput (tokens/s)", "tokens/s", path)
    r = results.get("resume")
    if r:
        bars({"lmstream early": r["lmstream_early_s"], "lmstream late": r["lmstream_late_s"],
              "elastic early": r["lmstream_elastic_early_s"],
              "elastic late": r["lmstream_elastic_late_s"],
              "Trainer skip early": r["trainer_skip_early_s"],
              "Trainer skip late": r["trainer_skip_late_s"]},
             "time to first batch after resume (s)", "seconds", path.replace(".png", "-resume.png"),
             fmt="{:.2f}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["pipeline", "prepare", "resume", "train", "all"])
    ap.add_argument("--dataset", default=SAMPLE_DATASET)
    ap.add_argument("--config", default=None)
    ap.add_argument("--tokenizer", default=TINY_MODEL)
    ap.add_argument("--model", default=TINY_MODEL,
                    help="config folder of the model trained by `train`")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--early", type=int, default=5)
    ap.add_argument("--late", type=int, default=300)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--train-block", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=None,
                    help="the dataset this many times over: prepare's input (default 1), and the "
                         "epoch of the pipeline's sustained rates (default: 100 M tokens' worth)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes on the bundled sample (a smoke run)")
    ap.add_argument("--out", default="bench-results")
    return ap


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    if a.quick:
        a.block, a.batch, a.early, a.late, a.steps, a.train_block = 128, 4, 2, 20, 6, 64
    from transformers import AutoTokenizer
    config = a.config or (SAMPLE_CONFIG if a.dataset == SAMPLE_DATASET else None)
    args = DataArguments(dataset_name=a.dataset, dataset_config_name=config)
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    os.makedirs(a.out, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "settings": vars(a)}
    if a.what in ("pipeline", "all"):
        results["pipeline"] = bench_pipeline(args, tokenizer, a.block, a.batch, a.workers,
                                             1 if a.quick else 3, 2 if a.quick else a.repeat)
    if a.what in ("prepare", "all") and importlib.util.find_spec("fastokens"):
        results["prepare"] = bench_prepare(repeated(args, a.repeat or 1), a.tokenizer, a.block,
                                           a.out, 1 if a.quick else 3)
    if a.what in ("resume", "all"):
        results["resume"] = bench_resume(args, tokenizer, a.block, a.batch, a.workers, a.early,
                                         a.late, 1 if a.quick else 7)
    if a.what in ("train", "all"):
        results["train"] = bench_train(args, a.model, a.train_block, max(1, a.batch // 2),
                                       a.workers, a.steps, a.out)
    if a.what == "all":
        results["help_seconds"] = bench_help()
    with open(os.path.join(a.out, f"{a.what}.json"), "w") as f:
        json.dump(results, f, indent=2)
    _chart(results, os.path.join(a.out, f"{a.what}.png"))
    for line in report(results, a.quick):
        print(line)
    return 0


# (section, what, numerator key, denominator key or None, target as (">=" | "<=", value), or None)
TARGETS = [
    ("pipeline", "lmstream / HF tokenizer bound (texts in memory)", "lmstream_tok_s",
     "hf_tokenizer_tok_s", (">=", 5.0)),
    ("pipeline", "lmstream in one process / fastest tokenizer alone", "in_process_vs_fastest", None,
     (">=", 0.5)),
    ("pipeline", "loader with workers / in one process, sustained", "workers_vs_in_process", None,
     (">=", 0.8)),
    ("pipeline", "loader with workers / in one process, one pass", "workers_vs_in_process_one_pass",
     None, None),
    ("pipeline", "lmstream / reference pipeline (corpus tokens/s)", "lmstream_corpus_tok_s",
     "reference_corpus_tok_s", (">=", 3.0)),
    ("pipeline", "fastokens / HF tokenizer (fast path)", "fastokens_alone_tok_s",
     "hf_tokenizer_tok_s", (">=", 10.0)),
    ("pipeline", "tokens that reach training, lmstream", "lmstream_kept", None, (">=", 0.99)),
    ("pipeline", "provenance's cost, one process (CPU time, paired median)", "provenance_cost",
     None, ("<=", 0.02)),
    ("prepare", "prepare, all cores / (cores x one-thread fastokens)", "prepare_vs_cores_x_single",
     None, (">=", 0.7)),
    ("prepare", "prepare, all cores / (cores x prepare on one core)", "prepare_scaling", None,
     (">=", 0.7)),
    ("prepare", "fastokens alone, a process a core / (cores x one thread)", "machine_scaling", None,
     None),
    ("prepare", "prepare / fastokens alone, a process a core (the bound)", "prepare_vs_all_cores",
     None, None),
    ("resume", "time to first batch after resume, late / early", "lmstream_late_over_early", None,
     ("<=", 1.2)),
    ("resume", "Trainer's skip / lmstream, late", "skip_over_lmstream_late", None, (">=", 1.0)),
    ("train", "data wait, fraction of step time", "data_wait_fraction", None, ("<=", 0.02)),
    ("train", "resident memory, end / early", "rss_end_over_early", None, ("<=", 1.1)),
]


def report(results: dict, quick: bool) -> list[str]:
    """Each measured ratio against its target, as lines; a quick run says its figures are not the
    README's."""
    lines = []
    if quick:
        lines.append("QUICK RUN (bundled sample, tiny sizes): a smoke test; these figures are not "
                     "comparable with the README's (make them with bench/make_corpus.py's corpus "
                     "and the default sizes).")
    lines.append(f"{'measure':52s} {'value':>10s}   target    ")
    for section, what, num, den, target in TARGETS:
        r = results.get(section) or {}
        if r.get(num) is None or (den and not r.get(den)):
            continue
        value = r[num] / r[den] if den else r[num]
        if target is None:   # a figure to read beside the targets
            lines.append(f"{what:52s} {value:10.3f}   (no target)")
            continue
        op, goal = target
        ok = value >= goal if op == ">=" else value <= goal
        lines.append(f"{what:52s} {value:10.3f}   {op} {goal:<6g} {'met' if ok else 'MISSED'}")
    if "help_seconds" in results:
        lines.append(f"{'lmstream-train --help, seconds':52s} {results['help_seconds']:10.3f}   <= "
                     f"2      {'met' if results['help_seconds'] <= 2 else 'MISSED'}")
    lines.append("raw figures: " + ", ".join(f"{s}.{k}={v:,.3f}" if isinstance(v, float)
                                             else f"{s}.{k}={v}"
                                             for s in ("pipeline", "prepare", "resume", "train")
                                             for k, v in (results.get(s) or {}).items()))
    return lines


def bench_help(runs: int = 3) -> float:
    """Wall seconds of `lmstream-train --help` in a fresh interpreter (best of `runs`)."""
    import subprocess
    import sys
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lmstream.cli", "--help"], capture_output=True,
                       check=True)
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    raise SystemExit(main())
