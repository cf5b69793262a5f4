"""The stream wing's front door: the blocks of one rank, from one source or a mixture.

    blocks = build_pipeline(data_args, tokenizer, seed=0)      # rank and world from RANK/WORLD_SIZE
    loader = build_loader(blocks, batch_size=8, num_workers=2)  # lmstream.stream.loader

A run's train and evaluation data (streamed, materialized or loaded) is lmstream.training.data's.
"""
from __future__ import annotations

import os

from ..config import DataArguments
from ..errors import ConfigError
from .blocks import build_stream
from .logical import LogicalStream, default_readers
from .mixture import build_mixture


def build_pipeline(args: DataArguments, tokenizer, seed: int = 0, rank: int | None = None,
                   world_size: int | None = None, split: str = "train",
                   max_positions: int | None = None, max_samples: int | None = None, plan=None,
                   encoder=None, auto_readers: bool = False):
    """The blocks of `rank` of `world_size` (default: RANK/WORLD_SIZE env): a MixtureBlocks for
    dataset_mixture, else one source's StreamingBlocks (see lmstream.stream.blocks.build_stream for
    the arguments). With dataset_logical_readers N > 0 the training blocks are a LogicalStream
    (lmstream.stream.logical): the same blocks every optimizer step, on any topology.
    `auto_readers` (the training job's new runs): with dataset_logical_readers None, logical readers
    as many as `default_readers` gives, where the stream cycles."""
    readers = args.dataset_logical_readers
    if split == "train" and (readers or (auto_readers and readers is None)):
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        cycles = max_samples is None and args.dataset_cycle
        if readers and not cycles:
            raise ConfigError("dataset_logical_readers serves a training stream that cycles its "
                              "epochs: drop --max_train_samples and --dataset_cycle false, or pass "
                              "--dataset_logical_readers 0.")
        template = _build(args, tokenizer, seed, 0, 1, split, max_positions, max_samples, plan,
                          encoder) if cycles else None
        if template is not None and not getattr(template, "cycles", True):
            if readers:
                raise ConfigError("dataset_logical_readers needs every dataset_mixture source to "
                                  "cycle (on_exhausted: cycle): change the source, or pass "
                                  "--dataset_logical_readers 0.")
            template = None
        if template is not None:
            readers = readers or default_readers(min(len(s.plan.pieces) for s in
                                                     getattr(template, "streams", [template])),
                                                 world_size)
            return LogicalStream(template, readers, rank, world_size)
    return _build(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples,
                  plan, encoder)


def _build(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples, plan,
           encoder):
    if args.dataset_mixture:
        return build_mixture(args, tokenizer, seed, rank, world_size, split, max_positions,
                             max_samples)
    return build_stream(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples,
                        plan, encoder)
