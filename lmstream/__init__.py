"""lmstream: train causal language models on datasets too large to download, by streaming them.

    import lmstream
    args = lmstream.DataArguments(dataset_name="HuggingFaceFW/fineweb", dataset_config_name="CC-MAIN-2024-10")
    blocks = lmstream.build_pipeline(args, tokenizer, seed=0)
"""
from .config import ConfigError, DataArguments
from .pipeline import StreamingBlocks, build_loader, build_pipeline, merge_stats, resolve_block_size
from .sources import Shard, resolve_shards
from .tokenize import build_encoder

__all__ = ["ConfigError", "DataArguments", "Shard", "StreamingBlocks", "build_encoder", "build_loader",
           "build_pipeline", "merge_stats", "resolve_block_size", "resolve_shards"]
