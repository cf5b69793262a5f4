"""Training: HF Trainer fed by the streaming pipeline, with the data position in every checkpoint.

    trainer = build_trainer(model, tokenizer, training_args, train_blocks, eval_blocks)
    trainer.train(resume_from_checkpoint=...)

Each rank builds its own loader over its own part of the stream (no batch dispatching from rank 0,
no reading everything and keeping every n-th). At every save each rank writes its loader state to
`checkpoint-N/lmstream_data/rank-R.json`; on resume it is loaded and the Trainer's batch skipping
(re-reading and re-tokenizing all consumed data) is turned off.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import torch
from transformers import Trainer, default_data_collator

from .config import ConfigError
from .pipeline import StreamingBlocks, build_loader, merge_stats, stream_epoch

log = logging.getLogger("lmstream")
DATA_STATE_DIR = "lmstream_data"
COMPLETE = "lmstream_complete.json"   # written last: a checkpoint without it was cut short (killed mid-save)


def is_complete(checkpoint: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint, COMPLETE))


def is_cut_short(checkpoint: str) -> bool:
    """An lmstream checkpoint whose save did not finish (no marker, while lmstream wrote it or its siblings)."""
    if is_complete(checkpoint):
        return False
    parent = os.path.dirname(os.path.abspath(checkpoint))
    siblings = [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith("checkpoint-")]
    return os.path.isdir(os.path.join(checkpoint, DATA_STATE_DIR)) or any(is_complete(p) for p in siblings)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N of output_dir whose save finished; None if there is none.

    Folders from other scripts (no lmstream marker in any checkpoint) are taken as complete.
    """
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith("checkpoint-") and name[11:].isdigit() and os.path.isdir(path):
            found.append((int(name[11:]), path))
    found.sort()
    if not any(is_complete(p) for _, p in found):
        return found[-1][1] if found else None
    done = [p for _, p in found if is_complete(p)]
    return done[-1]


def source_shares(stats: dict) -> dict:
    """mix/<source>: each mixture source's share of the tokens this rank has trained on so far."""
    per = {k[len("tokens/"):]: v for k, v in stats.items() if k.startswith("tokens/")}
    total = sum(per.values())
    return {f"mix/{name}": round(v / total, 4) for name, v in per.items()} if total else {}


def is_stream(ds) -> bool:
    """A rank-local resumable stream (StreamingBlocks or a mixture of them), not a map-style dataset."""
    from .mixture import MixtureBlocks
    return isinstance(ds, (StreamingBlocks, MixtureBlocks))


def data_state_path(checkpoint: str, rank: int) -> str:
    return os.path.join(checkpoint, DATA_STATE_DIR, f"rank-{rank}.json")


def read_data_states(checkpoint: str) -> list[dict] | None:
    """The loader state of every rank that saved `checkpoint`, by rank; None if it holds none."""
    folder = os.path.join(checkpoint, DATA_STATE_DIR)
    if not os.path.isdir(folder):
        return None
    ranks = sorted(int(f[5:-5]) for f in os.listdir(folder)
                   if f.startswith("rank-") and f.endswith(".json") and f[5:-5].isdigit())
    if ranks != list(range(len(ranks))) or not ranks:
        raise ConfigError(f"Checkpoint '{checkpoint}' has data positions of ranks {ranks}, not 0..N-1 (a file is "
                          "missing): resume from a complete checkpoint.")
    from .elastic import reader_states
    from .pipeline import position_problem
    states = []
    for r in ranks:
        path = data_state_path(checkpoint, r)
        try:
            with open(path) as f:
                states.append(json.load(f))
        except (OSError, ValueError) as err:
            raise ConfigError(f"Checkpoint data position '{path}' is unreadable ({type(err).__name__}: {err}): resume "
                              "from an earlier checkpoint.") from None
        readers = reader_states(states[-1])
        problems = [p for p in map(position_problem, readers) if p] or ([] if readers else ["no reader state in it"])
        if problems:
            raise ConfigError(f"Checkpoint data position '{path}' is corrupt ({problems[0]}): resume from an earlier "
                              "checkpoint.")
    return states


def saved_shape(states: list[dict]) -> tuple[int, int]:
    """(processes, DataLoader workers per process) of the run that saved these loader states."""
    from .elastic import reader_states
    readers = reader_states(states)
    workers = {st["workers"] for st in readers} or {1}
    return len(states), max(workers)


def _atomic_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StreamingTrainer(Trainer):
    """A Trainer whose training data is a rank-local StreamingBlocks stream with resumable state."""

    def __init__(self, *args, data_states: list[dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_states = data_states   # every rank's loader state in the checkpoint being resumed
        self.loader = None
        self._last_log = None            # (time, tokens, wait) at the previous log

    # -- data -----------------------------------------------------------------------------------
    def get_train_dataloader(self):
        if not is_stream(self.train_dataset):
            return super().get_train_dataloader()
        a = self.args
        self.loader = build_loader(self.train_dataset, self._train_batch_size, a.dataloader_num_workers,
                                   pin_memory=a.dataloader_pin_memory and torch.cuda.is_available(),
                                   prefetch_factor=a.dataloader_prefetch_factor or 4,
                                   persistent_workers=a.dataloader_persistent_workers)
        if self.data_states is not None:
            (world, workers), now = saved_shape(self.data_states), (a.world_size, max(1, a.dataloader_num_workers))
            if (world, workers) == now:
                self.loader.load_state_dict(self.data_states[a.process_index])
            else:
                log.warning("Elastic resume: the data position was saved by %d process(es) x %d worker(s), this run "
                            "has %d x %d; every document of the current epoch not yet trained on is dealt to the new "
                            "readers (none twice, none skipped; the order differs from an uninterrupted run).",
                            world, workers, *now)
                self.train_dataset.resume_elastic(self.data_states, a.dataloader_num_workers)
        return self.loader

    def _run_epoch(self, *args, **kwargs):
        # Batches are not skipped (the loader resumed at its saved position), so the Trainer would not
        # restore the RNG state (dropout): restore it after the first fetch, as the Trainer's own skip
        # path does, since creating the loader's iterator draws from the global RNG.
        if (self.data_states is not None and kwargs.get("resume_from_checkpoint")
                and kwargs.get("epoch") == kwargs.get("epochs_trained")):
            self._rng_checkpoint = kwargs["resume_from_checkpoint"]
        return super()._run_epoch(*args, **kwargs)

    def get_batch_samples(self, *args, **kwargs):
        batches = super().get_batch_samples(*args, **kwargs)
        if getattr(self, "_rng_checkpoint", None):
            self._load_rng_state(self._rng_checkpoint)
            self._rng_checkpoint = None
        return batches

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        marker = os.path.join(folder, COMPLETE)
        if self.args.should_save and os.path.exists(marker):
            os.remove(marker)   # rewriting this step's checkpoint: incomplete until the end
        super()._save_checkpoint(model, trial)
        if self.loader is not None:
            _atomic_json(data_state_path(folder, self.args.process_index), self.loader.state_dict())
            plan = getattr(self.train_dataset, "plan", None)
            if self.args.should_save and plan is not None:   # what the data position refers to, pinned
                from . import planfile
                planfile.save(plan, os.path.join(folder, DATA_STATE_DIR),
                              cache_dir=os.path.join(self._get_output_dir(trial=trial), ".lmstream"))
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()   # every rank's files are on disk before the checkpoint counts
        if self.args.should_save:
            _atomic_json(marker, {"step": self.state.global_step, "world_size": self.args.world_size})

    # -- logging ----------------------------------------------------------------------------------
    def data_stats(self) -> dict:
        """Pipeline counters of this rank (documents, tokens, blocks, dropped, ...)."""
        return merge_stats(self.loader.state_dict()) if self.loader is not None else {}

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self.loader is not None and "loss" in logs:
            state = self.loader.state_dict()   # once: it gathers every worker's position
            stats = merge_stats(state)
            now, tokens = time.perf_counter(), stats.get("tokens", 0) * self.args.world_size
            if self._last_log is not None:
                t, tok, wait = self._last_log
                logs["tokens_per_second"] = round((tokens - tok) / max(now - t, 1e-9), 1)
                logs["data_wait_fraction"] = round((self.loader.wait_seconds - wait) / max(now - t, 1e-9), 5)
            logs["tokens_seen"] = tokens
            logs["data_epoch"] = stream_epoch(state)
            logs.update(source_shares(stats))
            self._last_log = (now, tokens, self.loader.wait_seconds)
        super().log(logs, start_time)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Token-weighted loss and perplexity over this rank's evaluation blocks, summed over ranks.

        Ranks may hold different numbers of blocks: one all_reduce at the end, so no rank waits on
        a collective another never reaches.
        """
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if data is None:
            raise ConfigError("do_eval needs evaluation data: the dataset has no test split and "
                              "dataset_holdout_fraction is 0; set one of them.")
        model, t0 = self.model, time.perf_counter()
        was_training = model.training
        model.eval()
        loader = torch.utils.data.DataLoader(data, batch_size=self.args.per_device_eval_batch_size,
                                             collate_fn=default_data_collator)
        sums = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(self.args.device) for k, v in batch.items()}
                n = (batch["labels"][:, 1:] != -100).sum()
                sums += torch.stack([model(**batch).loss.double() * n, n.double()])
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        model.train(was_training)
        loss = (sums[0] / sums[1].clamp(min=1)).item()
        metrics = {f"{metric_key_prefix}_loss": loss, f"{metric_key_prefix}_perplexity": math.exp(min(loss, 50)),
                   f"{metric_key_prefix}_tokens": int(sums[1].item()),
                   f"{metric_key_prefix}_runtime": round(time.perf_counter() - t0, 3)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
