"""lmstream: train causal language models on datasets too large to download, by streaming them.

    import lmstream
    args = lmstream.DataArguments(dataset_name="HuggingFaceFW/fineweb",
                                  dataset_config_name="CC-MAIN-2024-10")
    blocks = lmstream.build_pipeline(args, tokenizer, seed=0)

Names are imported on first use, so that `import lmstream.cli` (the console entry, its --help) does
not import torch or transformers.
"""
import importlib

from .config import DataArguments, ModelArguments, RunArguments
from .errors import ConfigError

# each module (inside lmstream) and the public names it holds
_NAMES = {
    "arguments": ["parse_args"],
    "corpus.shards": ["Shard"],
    "corpus.sources": ["plan_dataset", "resolve_shards"],
    "tokens.tokenize": ["build_encoder"],
    "tokens.packing": ["BlockPacker", "resolve_block_size"],
    "stream.state": ["merge_stats", "reader_states"],
    "stream.blocks": ["StreamingBlocks"],
    "stream.loader": ["build_loader"],
    "stream.pipeline": ["build_pipeline"],
    "training.models": ["SAMPLE_CONFIG", "SAMPLE_DATASET", "TINY_MODEL",
                        "load_model_and_tokenizer"],
    "training.checkpoints": ["last_complete_checkpoint"],
    "training.signals": ["StopAfterStep"],
    "training.outputs": ["read_metrics"],
    "training.run": ["Run"],
    "training.job": ["data_arguments", "generate_sample", "job_from_parameters",
                     "notebook_parameters", "run_job", "start_run"],
    "tools.inspect": ["find_document", "inspect_step"],
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}


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
