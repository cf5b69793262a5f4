"""The stream wing's front door: the blocks of one rank, from one source or a mixture.

    blocks = build_pipeline(data_args, tokenizer, seed=0)      # rank and world from RANK/WORLD_SIZE
    loader = build_loader(blocks, batch_size=8, num_workers=2)  # lmstream.stream.loader

A run's train and evaluation data (streamed, materialized or loaded) is lmstream.training.data's.
"""
from __future__ import annotations

from ..config import DataArguments
from ..errors import ConfigError
from ..mixspec import parse_mixture
from .blocks import build_stream, rank_and_world
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
    if split == "train" and (readers or (auto_readers and readers is None)) and cycles(
            args, max_samples, readers):
        rank, world_size = rank_and_world(rank, world_size)
        template = _build(args, tokenizer, seed, 0, 1, split, max_positions, None, plan, encoder)
        pieces = min(len(s.plan.pieces) for s in getattr(template, "streams", [template]))
        return LogicalStream(template, readers or default_readers(pieces, world_size), rank,
                             world_size)
    return _build(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples,
                  plan, encoder)


def cycles(args: DataArguments, max_samples: int | None, readers: int | None) -> bool:
    """Whether the training stream cycles its epochs, which logical readers need: asked for
    (`readers`), they are refused in one sentence where it does not; by default the stream keeps one
    reader per process and worker there."""
    if max_samples is not None or not args.dataset_cycle:
        if readers:
            raise ConfigError("dataset_logical_readers serves a training stream that cycles its "
                              "epochs: drop --max_train_samples and --dataset_cycle false, or pass "
                              "--dataset_logical_readers 0.")
        return False
    if args.dataset_mixture and any(src["on_exhausted"] != "cycle"
                                    for src in parse_mixture(args.dataset_mixture)):
        if readers:
            raise ConfigError("dataset_logical_readers needs every dataset_mixture source to "
                              "cycle (on_exhausted: cycle): change the source, or pass "
                              "--dataset_logical_readers 0.")
        return False
    return True


def _build(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples, plan,
           encoder):
    if args.dataset_mixture:
        return build_mixture(args, tokenizer, seed, rank, world_size, split, max_positions,
                             max_samples)
    return build_stream(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples,
                        plan, encoder)
