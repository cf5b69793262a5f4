"""lmstream: train causal language models on datasets too large to download, by streaming them.

    import lmstream
    args = lmstream.DataArguments(dataset_name="HuggingFaceFW/fineweb", dataset_config_name="CC-MAIN-2024-10")
    blocks = lmstream.build_pipeline(args, tokenizer, seed=0)

Names are imported on first use, so that `import lmstream.cli` (the console entry, its --help) does
not import torch or transformers.
"""
import importlib

from .config import DataArguments, ModelArguments, RunArguments
from .errors import ConfigError

_WHERE = {
    "data_arguments": "training.job", "generate_sample": "training.job", "job_from_parameters": "training.job",
    "notebook_parameters": "training.job", "run_job": "training.job", "start_run": "training.job",
    "SAMPLE_DATASET": "training.models", "SAMPLE_CONFIG": "training.models", "TINY_MODEL": "training.models",
    "load_model_and_tokenizer": "training.models",
    "StreamingBlocks": "stream.blocks", "plan_dataset": "stream.blocks", "resolve_block_size": "stream.blocks",
    "build_loader": "stream.loader", "build_pipeline": "stream.pipeline", "merge_stats": "stream.state",
    "reader_states": "stream.state", "Shard": "corpus.shards", "resolve_shards": "corpus.sources",
    "build_encoder": "tokens.tokenize", "BlockPacker": "tokens.packing", "Run": "training.run",
    "read_metrics": "training.run", "last_complete_checkpoint": "training.checkpoints",
    "StopAfterStep": "training.signals", "parse_args": "arguments", "inspect_step": "tools.inspect",
    "find_document": "tools.inspect",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'lmstream' has no attribute {name!r}")


def train(model_args, data_args, run_args, training_args, callbacks: list | None = None) -> dict:
    """Train as the argument dataclasses say (see lmstream.training.run); returns the metrics.
    `callbacks`: extra TrainerCallbacks."""
    from .training.run import train as _train
    return _train(model_args, data_args, run_args, training_args, callbacks)


__all__ = ["ConfigError", "DataArguments", "ModelArguments", "RunArguments", "train", *sorted(_WHERE)]
