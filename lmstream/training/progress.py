"""What a person watching the terminal sees: a start banner, one progress line per logging step, a
resume line and an end summary (rank 0 only, on stdout, flushed; in the notebook job papermill
streams them out).

    step   50/2500 [#.........................]   2% | loss 6.2130 | lr 6.00e-04 | 121.4k tok/s | data wait 0.3% | ETA 0:41:07
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ..stream.logical import KEY as LOGICAL, global_blocks, serving_workers


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def say(text: str) -> None:
    print(f"lmstream: {text}", flush=True)


class TerminalProgress(TrainerCallback):
    """One line per logging step (step, bar, loss, learning rate, tokens/s, data wait, ETA) on rank
    0."""

    def __init__(self, width: int = 26):
        self.width = width
        self.t0 = None
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0, self.first_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or self.t0 is None:
            return
        if "loss" in logs:
            tqdm.write(self.line(state.global_step, state.max_steps, logs,
                                 time.perf_counter() - self.t0))
        if "eval_loss" in logs:
            tqdm.write(f"eval  step {state.global_step} | loss {logs['eval_loss']:.4f} | "
                       f"perplexity {logs.get('eval_perplexity', float('nan')):,.2f} | "
                       f"{logs.get('eval_tokens', 0):,} tokens")
        sys.stdout.flush()   # a log file or a pipe sees each line as it is printed

    def line(self, step: int, total: int, logs: dict, elapsed: float) -> str:
        frac = step / total if total > 0 else 0.0
        done = int(self.width * frac)
        bar = "#" * done + "." * (self.width - done)
        rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
        eta = (total - step) / rate if rate > 0 else 0.0
        parts = [f"step {step:>{len(str(total))}}/{total} [{bar}] {frac:4.0%}",
                 f"loss {logs['loss']:.4f}"]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        if "tokens_per_second" in logs:
            parts.append(f"{_count(logs['tokens_per_second'])} tok/s")
        if "data_wait_fraction" in logs:
            parts.append(f"data wait {logs['data_wait_fraction']:.1%}")
        parts.append(f"ETA {_duration(eta)}")
        return " | ".join(parts)


class BarOnly(ProgressCallback):
    """The Trainer's progress bar without its raw log dicts (TerminalProgress prints the logs)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class TiedWeightsFilter(logging.Filter):
    """Drops the Trainer's "missing keys" warning on resume when the keys are only weights tied to
    others (GPT-2's lm_head is its embedding matrix: it is not saved twice, and nothing is
    missing)."""

    def __init__(self, model):
        super().__init__()
        seen, self.tied = set(), set()
        for name, p in model.named_parameters(remove_duplicate=False):
            (self.tied.add(name) if id(p) in seen else seen.add(id(p)))

    def filter(self, record) -> bool:
        msg = record.getMessage()
        if not msg.startswith("There were missing keys in the checkpoint model loaded"):
            return True
        return not set(re.findall(r"'([^']+)'", msg)) <= self.tied


def banner(model, data_args, training_args, plan, block_size: int | None, checkpoint: str | None,
           tokenizer_backend: str | None = None) -> list[str]:
    """The lines printed before training: model, data source and commit, tokenizer backend,
    topology, steps and tokens."""
    params = sum(p.numel() for p in model.parameters())
    source = data_args.dataset_name or "a dataset_mixture"
    if data_args.dataset_config_name:
        source += f" ({data_args.dataset_config_name})"
    if plan is not None and plan.shards:
        names = [s.name for s in plan.shards if s.name and "@" in s.name]
        if names:
            source += f", commit {names[0].split('@', 1)[1].split('/', 1)[0][:12]}"
        source += f", {len(plan.shards)} file(s), {len(plan.pieces)} row group(s)"
    if tokenizer_backend:
        source += f", tokenized by {tokenizer_backend}"
    a = training_args
    workers = max(1, a.dataloader_num_workers)
    per_step = (a.per_device_train_batch_size * a.world_size * a.gradient_accumulation_steps
                * (block_size or 0))
    lines = [f"model {type(model).__name__}, {params / 1e6:,.2f} M parameters",
             f"data  {source}",
             run_line(a, data_args.dataset_logical_readers)]
    if a.max_steps > 0 and block_size:
        lines.append(f"plan  {a.max_steps:,} steps x {per_step:,} tokens = "
                     f"{_count(a.max_steps * per_step)} tokens, checkpoint every {a.save_steps} "
                     f"steps, into {a.output_dir}")
    if plan is not None and any(s.name and "@" in s.name for s in plan.shards):
        lines.append(hub_line(plan, a.world_size * workers if not data_args.dataset_logical_readers
                              else data_args.dataset_logical_readers))
    if checkpoint:
        lines.append(f"from  {checkpoint}")
    return lines


def run_line(a, logical: int | None) -> str:
    """The topology: processes and readers (logical ones served by workers), and the device."""
    where = "" if a.dataloader_num_workers else " (in-process)"
    if not logical:
        return (f"run   {a.world_size} process(es) x {max(1, a.dataloader_num_workers)} reader(s) "
                f"each{where}, device {a.device.type}")
    workers = serving_workers(logical, a.world_size, a.dataloader_num_workers)
    return (f"run   {a.world_size} process(es) x {max(1, workers)} worker(s){where} serving "
            f"{logical} logical readers (each step the same blocks on any topology), device "
            f"{a.device.type}")


def hub_line(plan, readers: int) -> str:
    """The Hub request budget of a run (lmstream.corpus.signed): the run's processes share their
    resolutions, so each file is resolved about once per signed-URL lifetime (about an hour), however
    many readers read it."""
    groups = sum(1 for p in plan.pieces if getattr(p, "row_group", -1) >= 0) or len(plan.pieces)
    return (f"hub   {readers} reader(s) share each file's signed URL (~1 h): about "
            f"{len(plan.shards):,} resolve/ requests an hour at most for {groups:,} row groups, "
            "paced by the Hub's RateLimit headers")


def resume_line(checkpoint: str, states: list[dict]) -> str:
    """Where the stream resumes: rank 0's first reader's epoch, window, document and token."""
    from ..stream.state import reader_states
    readers = reader_states(states[:1])
    name = os.path.basename(os.path.normpath(checkpoint))
    if not readers:
        return f"resumed from {name}"
    head = states[0].get(LOGICAL)
    if head:
        return (f"resumed from {name}: global block {global_blocks(head):,} of {head['readers']} logical "
                f"readers ({head['global_batch']} a step), each at its own position")
    st = readers[0]
    done = st.get("stats", {})
    return (f"resumed from {name}: data epoch {st['epoch']}, window {st['window']}, document "
            f"{st['doc']}, token {st['token']} (rank 0, reader 0; {done.get('docs', 0):,} "
            f"documents and {done.get('tokens', 0):,} tokens trained on by it so far)")


def summary(metrics: dict, output_dir: str, wall: float) -> list[str]:
    """The lines printed after training: final loss, tokens seen, wall time, where the results
    are."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    checkpoints = sorted((d for d in names if d.startswith("checkpoint-") and d[11:].isdigit()),
                         key=lambda d: int(d[11:]))
    lines = [f"done  {metrics.get('global_step', '?')} steps in {_duration(wall)} | final loss "
             f"{metrics.get('final_loss', float('nan')):.4f} | "
             f"{_count(metrics.get('tokens_seen', 0))} tokens seen"]
    if "eval_loss" in metrics:
        lines.append(f"eval  loss {metrics['eval_loss']:.4f}, perplexity "
                     f"{metrics.get('eval_perplexity', float('nan')):,.2f}")
    saved = f"saved model and metrics in {output_dir}"
    if checkpoints:
        saved += f"; checkpoints {', '.join(checkpoints)}"
    lines.append(saved)
    return lines


def run_banner(run) -> list[str]:
    """The banner of a lmstream.training.run.Run about to train: model, data, topology, plan, and
    where a resume starts."""
    ds = run.train_dataset
    block = getattr(ds, "block_size", None) or run.data_args.dataset_block_size
    streams = getattr(ds, "streams", None) or [ds]   # a mixture's sources share the tokenizer
    backend = getattr(getattr(streams[0], "encoder", None), "backend", None)
    lines = banner(run.model, run.data_args, run.training_args, getattr(ds, "plan", None), block,
                   run.checkpoint, backend)
    if run.data_states:
        lines.append(resume_line(run.checkpoint, run.data_states))
    return lines


def final_numbers(metrics: dict, state) -> dict:
    """The summary's numbers: the metrics, the last step, the last training loss and the tokens
    seen, from the Trainer's `state`."""
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    seen = [h["tokens_seen"] for h in state.log_history if "tokens_seen" in h]
    return {**metrics, "global_step": state.global_step,
            "final_loss": losses[-1] if losses else float("nan"),
            "tokens_seen": seen[-1] if seen else 0}
