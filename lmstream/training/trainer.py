"""Training: HF Trainer fed by the streaming pipeline, with the data position in every checkpoint.

    trainer = build_trainer(model, tokenizer, training_args, train_blocks, eval_blocks)
    trainer.train(resume_from_checkpoint=...)

Each rank builds its own loader over its own part of the stream (no batch dispatching from rank 0,
no reading everything and keeping every n-th). At every save each rank writes its loader state to
`checkpoint-N/lmstream_data/rank-R.json`; on resume it is loaded and the Trainer's batch skipping
(re-reading and re-tokenizing all consumed data) is turned off.
"""
from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import torch
from transformers import Trainer, default_data_collator

from .checkpoints import COMPLETE, DATA_STATE_DIR, atomic_json, data_state_path, saved_shape
from ..errors import ConfigError
from ..stream.loader import PREFETCH_FACTOR, build_loader
from ..stream.logical import LogicalStream, logical_readers_of
from ..stream.mixture import MixtureBlocks
from ..stream.serving import LogicalLoader
from ..stream.blocks import StreamingBlocks
from . import lineage
from .models import as_configured
from ..corpus.planfile import save as save_plan
from ..stream.state import merge_stats, stream_epoch
from ..tokens.packing import document_positions

log = logging.getLogger("lmstream")


def source_shares(stats: dict) -> dict:
    """mix/<source>: each mixture source's share of the tokens this rank has trained on so far."""
    per = {k[len("tokens/"):]: v for k, v in stats.items() if k.startswith("tokens/")}
    total = sum(per.values())
    return {f"mix/{name}": round(v / total, 4) for name, v in per.items()} if total else {}


def is_stream(ds) -> bool:
    """A rank-local resumable stream (StreamingBlocks or a mixture of them), not a map-style
    dataset."""
    return isinstance(ds, (StreamingBlocks, MixtureBlocks, LogicalStream))


class BlockCollator:
    """The Trainer's default collation, with labels = input_ids for blocks stored without them
    (packed blocks saved by lmstream.tools.prepare or materialized for `dataset_streaming false`);
    given the EOS id (dataset_document_attention isolated), packed blocks get position_ids that
    restart at each document, as a stream's blocks carry them."""

    def __init__(self, eos: int | None = None):
        self.eos = eos

    def __call__(self, features: list[dict]) -> dict:
        batch = default_data_collator([{k: v for k, v in f.items() if k != "provenance"}
                                       for f in features])
        if "labels" not in batch and "input_ids" in batch:
            batch["labels"] = batch["input_ids"].to(torch.int64, copy=True)
        if self.eos is not None and "position_ids" not in batch and "attention_mask" not in batch:
            batch["position_ids"] = torch.from_numpy(
                document_positions(batch["input_ids"].numpy(), self.eos).astype(np.int64))
        return batch


collate_blocks = BlockCollator()


def block_collator(data_args, tokenizer) -> BlockCollator:
    """The collation of map-style blocks and of evaluation for this run's arguments."""
    isolated = data_args.dataset_document_attention == "isolated"
    return BlockCollator(tokenizer.eos_token_id) if isolated else collate_blocks


def place_loader(loader, dataset, data_states: list[dict] | None, rank: int, world_size: int,
                 num_workers: int) -> None:
    """Put a fresh loader of `dataset` where a checkpoint's data states stood: the exact position
    with the same number of processes and workers, else an elastic resume."""
    if data_states is None:
        return
    if isinstance(loader, LogicalLoader):   # any topology that divides the readers
        loader.place(data_states)
        return
    (world, workers), now = saved_shape(data_states), (world_size, max(1, num_workers))
    if (world, workers) == now and logical_readers_of(data_states) == 0:
        loader.load_state_dict(data_states[rank])
        return
    log.warning("Elastic resume: the data position was saved by %d process(es) x %d worker(s), "
                "this run has %d x %d; every document of the current epoch not yet trained on is "
                "dealt to the new readers (none twice, none skipped; the order differs from an "
                "uninterrupted run).", world, workers, *now)
    dataset.resume_elastic(data_states, num_workers)


class StreamingTrainer(Trainer):
    """A Trainer whose training data is a rank-local StreamingBlocks stream with resumable state.

    The one adapter to transformers' privates (tests/test_structure.py allows them here only):
    transformers has no public hook for a loader's state in checkpoints nor for restoring the RNG
    without skipping batches, so this class overrides `_save_checkpoint` and `_run_epoch` and calls
    `_load_rng_state`, `_get_output_dir` and reads `_train_batch_size`, as the Trainer's own code
    does."""

    def __init__(self, *args, data_states: list[dict] | None = None,
                 lineage: list[dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_states = data_states   # every rank's loader state in the checkpoint being resumed
        self.lineage = lineage or []     # lmstream.training.lineage: this run's segment last
        self.loader = None
        # the provenance of each micro-batch of the step being taken (per sample)
        self.step_provenance: list = []
        self._lineage_written = False
        self._last_log = None            # (time, tokens, wait) at the previous log

    # -- data -----------------------------------------------------------------------------------
    def get_train_dataloader(self):
        if not is_stream(self.train_dataset):
            return super().get_train_dataloader()
        a = self.args
        self.loader = build_loader(self.train_dataset, self._train_batch_size,
                                   a.dataloader_num_workers,
                                   pin_memory=a.dataloader_pin_memory and torch.cuda.is_available(),
                                   prefetch_factor=a.dataloader_prefetch_factor or PREFETCH_FACTOR,
                                   persistent_workers=a.dataloader_persistent_workers)
        place_loader(self.loader, self.train_dataset, self.data_states, a.process_index,
                     a.world_size, a.dataloader_num_workers)
        return self.loader

    def _run_epoch(self, *args, **kwargs):
        # Batches are not skipped (the loader resumed at its saved position), so the Trainer would
        # not restore the RNG state (dropout): restore it after the first fetch, as the Trainer's
        # own skip path does, since creating the loader's iterator draws from the global RNG.
        if (self.data_states is not None and kwargs.get("resume_from_checkpoint")
                and kwargs.get("epoch") == kwargs.get("epochs_trained")):
            self._rng_checkpoint = kwargs["resume_from_checkpoint"]
        return super()._run_epoch(*args, **kwargs)

    def get_batch_samples(self, epoch_iterator, *args, **kwargs):
        if self.loader is not None:
            self._skip_steps(epoch_iterator)
            self.loader.taken.clear()
        batches = super().get_batch_samples(epoch_iterator, *args, **kwargs)
        if self.loader is not None:
            self.step_provenance = list(self.loader.taken)
            # the data was accepted
            if self.lineage and self.args.should_save and not self._lineage_written:
                lineage.write_run(self.args.output_dir, self.lineage)
                self._lineage_written = True
        if getattr(self, "_rng_checkpoint", None):
            self._load_rng_state(self._rng_checkpoint)
            self._rng_checkpoint = None
        return batches

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self._get_output_dir(trial=trial),
                              f"checkpoint-{self.state.global_step}")
        marker = os.path.join(folder, COMPLETE)
        if self.args.should_save and os.path.exists(marker):
            os.remove(marker)   # rewriting this step's checkpoint: incomplete until the end
        with as_configured(self.model):
            super()._save_checkpoint(model, trial)
        if self.loader is not None:
            atomic_json(data_state_path(folder, self.args.process_index), self.loader.state_dict())
            plan = getattr(self.train_dataset, "plan", None)
            # what the data position refers to, pinned
            if self.args.should_save and plan is not None:
                save_plan(plan, os.path.join(folder, DATA_STATE_DIR),
                          cache_dir=os.path.join(self._get_output_dir(trial=trial), ".lmstream"))
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            # every rank's files are on disk before the checkpoint counts
            torch.distributed.barrier()
        if self.args.should_save:
            if self.lineage:
                lineage.write_checkpoint(folder, self.lineage)
            atomic_json(marker, {"step": self.state.global_step,
                                 "world_size": self.args.world_size})

    def _skip_steps(self, batches) -> None:
        """--dataset_skip_steps: before step A is taken, drop the micro-batches steps A..B would
        have consumed, counted (blocks, distinct documents, tokens) into this run's lineage
        segment."""
        seg, step = (self.lineage[-1] if self.lineage else {}), self.state.global_step + 1
        for lo, hi in seg.get("skip_steps", []):
            if lo != step or any(s["steps"] == [lo, hi] for s in seg["skipped"]):
                continue
            blocks = tokens = 0
            docs = set()
            for _ in range((hi - lo + 1) * self.args.gradient_accumulation_steps):
                batch = next(batches, None)
                if batch is None:
                    break
                blocks += len(batch["input_ids"])
                mask = batch.get("attention_mask")
                tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
                docs.update(tuple(r[:4]) for p in self.loader.provenance or [] if p is not None
                            for r in p.tolist())
            # the run's totals, every rank's
            if self.args.world_size > 1 and torch.distributed.is_initialized():
                counts = torch.tensor([blocks, len(docs), tokens], dtype=torch.int64,
                                      device=self.args.device)
                torch.distributed.all_reduce(counts)
                blocks, n_docs, tokens = counts.tolist()
            else:
                n_docs = len(docs)
            seg["skipped"].append({"steps": [lo, hi], "blocks": blocks, "documents": n_docs,
                                   "tokens": tokens})
            log.warning("dataset_skip_steps: skipped the data of steps %d-%d (%d blocks, %d "
                        "documents, %d tokens over all ranks); step %d trains on what step %d "
                        "did.", lo, hi, blocks, n_docs,
                        tokens, lo, hi + 1)

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
                waited = self.loader.wait_seconds - wait
                logs["data_wait_fraction"] = round(waited / max(now - t, 1e-9), 5)
            logs["tokens_seen"] = tokens
            logs["data_epoch"] = stream_epoch(state)
            logs.update({k: stats[k] for k in ("docs_listed_skipped", "tokens_listed_skipped")
                         if stats.get(k)})
            if any(s.get("skipped") for s in self.lineage):
                logs.update(lineage.skipped_totals(self.lineage))
            logs.update(source_shares(stats))
            self._last_log = (now, tokens, self.loader.wait_seconds)
        super().log(logs, start_time)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None,
                 metric_key_prefix: str = "eval") -> dict:
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
                                             collate_fn=self.data_collator
                                             if isinstance(self.data_collator, BlockCollator)
                                             else collate_blocks)
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
        metrics = {f"{metric_key_prefix}_loss": loss,
                   f"{metric_key_prefix}_perplexity": math.exp(min(loss, 50)),
                   f"{metric_key_prefix}_tokens": int(sums[1].item()),
                   f"{metric_key_prefix}_runtime": round(time.perf_counter() - t0, 3)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics)
        return metrics
