"""The stream wing's front door: the blocks of one rank, from one source or a mixture.

    blocks = build_pipeline(data_args, tokenizer, seed=0)      # rank and world from RANK/WORLD_SIZE
    loader = build_loader(blocks, batch_size=8, num_workers=2)  # lmstream.stream.loader

A run's train and evaluation data (streamed, materialized or loaded) is lmstream.training.data's.
"""
from __future__ import annotations

from ..config import DataArguments
from .blocks import build_stream
from .mixture import build_mixture


def build_pipeline(args: DataArguments, tokenizer, seed: int = 0, rank: int | None = None,
                   world_size: int | None = None, split: str = "train",
                   max_positions: int | None = None, max_samples: int | None = None, plan=None,
                   encoder=None):
    """The blocks of `rank` of `world_size` (default: RANK/WORLD_SIZE env): a MixtureBlocks for
    dataset_mixture, else one source's StreamingBlocks (see lmstream.stream.blocks.build_stream for
    the arguments)."""
    if args.dataset_mixture:
        return build_mixture(args, tokenizer, seed, rank, world_size, split, max_positions,
                             max_samples)
    return build_stream(args, tokenizer, seed, rank, world_size, split, max_positions, max_samples,
                        plan, encoder)
