"""A run's training and evaluation data: streamed, materialized, or loaded from pre-tokenized
blocks.

    train_data, eval_data = build_datasets(data_args, run_args, tokenizer, seed, rank, world,
                                           positions, do_eval=False)

`dataset_streaming true` returns StreamingBlocks (rank-local, resumable). `false` materializes one
epoch of the very same blocks into a map-style `datasets.Dataset` (the Trainer then shuffles and
shards it with its sampler). `tokenized_dataset_save_dir` saves those blocks with `save_to_disk`;
`tokenized_dataset_load_dir` trains from them.
"""
from __future__ import annotations

import dataclasses
import os

from ..config import DataArguments, RunArguments
from ..corpus.planfile import shared_plan
from ..corpus.sources import plan_dataset
from ..errors import ConfigError
from ..stream.materialize import (check_save_dir, load_blocks, materialize, save_blocks,
                                  scratch_folder)
from ..stream.pipeline import build_pipeline


def build_datasets(args: DataArguments, run: RunArguments, tokenizer, seed: int, rank: int,
                   world_size: int, max_positions: int | None, do_eval: bool, plan=None,
                   output_dir: str | None = None, auto_readers: bool = False):
    """(train, eval) datasets for this rank; eval is None unless requested. Blocks made before
    training (dataset_streaming false) are kept in output_dir/.lmstream while the process runs.

    `plan`: the training data's plan when already known (a resume: the checkpoint's). Otherwise rank
    0 plans and sends the plan to the other ranks: startup requests do not grow with the number of
    processes. `auto_readers`: a new run, whose logical readers (dataset_logical_readers None) the
    pipeline chooses."""
    if args.tokenized_dataset_load_dir:
        train = load_blocks(args.tokenized_dataset_load_dir,
                            args.dataset_block_size).with_format("torch")
        if run.max_train_samples:
            train = train.select(range(min(run.max_train_samples, len(train))))
        eval_ds = None
        if do_eval:
            eval_ds = _eval_pipeline(args, run, tokenizer, seed, rank, world_size, max_positions,
                                     None)
        return train, eval_ds
    if args.tokenized_dataset_save_dir and args.dataset_streaming:
        raise ConfigError("tokenized_dataset_save_dir saves the data as blocks, which a streamed "
                          "run never holds: pass --dataset_streaming false to save them and then "
                          "train on them, or run `python -m lmstream.prepare` to only save them.")
    if not args.dataset_streaming:
        if args.dataset_mixture:
            raise ConfigError("dataset_mixture needs dataset_streaming true (or pre-tokenize "
                              "each source separately).")
        if args.tokenized_dataset_save_dir:
            check_save_dir(args.tokenized_dataset_save_dir)
        blocks = materialize(args, tokenizer, seed, max_positions, folder=scratch_folder(
            os.path.join(output_dir, ".lmstream") if output_dir else None, f"rank{rank}-"))
        # as the reference script does: save the blocks, then train on them
        if args.tokenized_dataset_save_dir:
            save_blocks(blocks, args.tokenized_dataset_save_dir)
        train = blocks.with_format("torch")
        if run.max_train_samples:
            train = train.select(range(min(run.max_train_samples, len(train))))
        plan = None
    else:
        if plan is None and not args.dataset_mixture:
            plan = shared_plan(lambda: plan_dataset(args))
        train = build_pipeline(args, tokenizer, seed=seed, rank=rank, world_size=world_size,
                               max_positions=max_positions, max_samples=run.max_train_samples,
                               plan=plan, auto_readers=auto_readers)
    eval_ds = None
    if do_eval:
        eval_ds = _eval_pipeline(args, run, tokenizer, seed, rank, world_size, max_positions,
                                 plan)
    return train, eval_ds


def _eval_pipeline(args, run, tokenizer, seed, rank, world_size, max_positions, plan):
    eval_args = dataclasses.replace(args, dataset_group_text=args.dataset_group_text_validation)
    return build_pipeline(eval_args, tokenizer, seed=seed, rank=rank, world_size=world_size,
                          split="eval", max_positions=max_positions,
                          max_samples=run.max_eval_samples, plan=plan)
