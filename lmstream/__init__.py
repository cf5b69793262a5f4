"""lmstream: train causal language models on datasets too large to download, by streaming them.

    import lmstream
    args = lmstream.DataArguments(dataset_name="HuggingFaceFW/fineweb", dataset_config_name="CC-MAIN-2024-10")
    blocks = lmstream.build_pipeline(args, tokenizer, seed=0)

Names are imported on first use, so that `import lmstream.cli` (the console entry, its --help) does not
import torch or transformers.
"""
import importlib

from .config import DataArguments, ModelArguments, RunArguments
from .errors import ConfigError

_WHERE = {
    "data_arguments": "job", "generate_sample": "job", "job_from_parameters": "job", "notebook_parameters": "job",
    "run_job": "job", "SAMPLE_DATASET": "models", "TINY_MODEL": "models", "load_model_and_tokenizer": "models",
    "StreamingBlocks": "pipeline", "build_loader": "loader", "build_pipeline": "data", "merge_stats": "state",
    "plan_dataset": "pipeline", "resolve_block_size": "pipeline", "Shard": "shards", "resolve_shards": "sources",
    "build_encoder": "tokenize", "Run": "run", "start_run": "job", "read_metrics": "run", "BlockPacker": "packing",
    "last_complete_checkpoint": "checkpoints", "reader_states": "state", "StopAfterStep": "stopping",
    "parse_args": "arguments", "inspect_step": "inspect", "find_document": "inspect",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'lmstream' has no attribute {name!r}")


def train(model_args, data_args, run_args, training_args, callbacks: list | None = None) -> dict:
    """Train as the argument dataclasses say (see lmstream.run); returns the metrics. `callbacks`: extra
    TrainerCallbacks."""
    from .run import train as _train
    return _train(model_args, data_args, run_args, training_args, callbacks)


__all__ = ["ConfigError", "DataArguments", "ModelArguments", "RunArguments", "train", *sorted(_WHERE)]
