"""lmstream: train causal language models on datasets too large to download, by streaming them.

    import lmstream
    args = lmstream.DataArguments(dataset_name="HuggingFaceFW/fineweb", dataset_config_name="CC-MAIN-2024-10")
    blocks = lmstream.build_pipeline(args, tokenizer, seed=0)
"""
from .config import ConfigError, DataArguments, ModelArguments, RunArguments
from .job import data_arguments, generate_sample, job_from_parameters, notebook_parameters, run_job
from .models import SAMPLE_DATASET, TINY_MODEL, load_model_and_tokenizer
from .pipeline import StreamingBlocks, build_loader, build_pipeline, merge_stats, plan_dataset, resolve_block_size
from .sources import Shard, resolve_shards
from .tokenize import build_encoder


def train(model_args, data_args, run_args, training_args) -> dict:
    """Train as the argument dataclasses say (see lmstream.train); returns the metrics."""
    from .train import train as _train
    return _train(model_args, data_args, run_args, training_args)


__all__ = ["ConfigError", "DataArguments", "ModelArguments", "RunArguments", "SAMPLE_DATASET", "Shard",
           "StreamingBlocks", "TINY_MODEL", "build_encoder", "build_loader", "build_pipeline", "data_arguments",
           "generate_sample", "job_from_parameters", "load_model_and_tokenizer", "merge_stats",
           "notebook_parameters", "plan_dataset", "resolve_block_size", "resolve_shards", "run_job", "train"]
