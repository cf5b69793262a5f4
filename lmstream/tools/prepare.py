"""Pre-tokenize: run the pipeline once and save its blocks, for runs that train from disk.

    python -m lmstream.prepare --dataset_name DATA --config_name MODEL_OR_CONFIG \\
        --tokenized_dataset_save_dir blocks/ [--dataset_block_size 1024 --dataset_num_proc 8]
    python -m lmstream.train ... --tokenized_dataset_load_dir blocks/
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from transformers import AutoConfig, AutoTokenizer

from ..errors import ConfigError
from ..stream.materialize import check_save_dir, materialize, save_blocks
from ..arguments import parse_args

log = logging.getLogger("lmstream")


def prepare(model_args, data_args, training_args) -> int:
    """Tokenize and pack one epoch into `tokenized_dataset_save_dir` with all cores
    (dataset_num_proc processes,
    default: one per core); return blocks, tokens, seconds, processes and tokens/s."""
    if not data_args.tokenized_dataset_save_dir:
        raise ConfigError("Pass --tokenized_dataset_save_dir FOLDER: where the blocks are written.")
    source = model_args.tokenizer_name or model_args.model_name_or_path or model_args.config_name
    if source is None:
        raise ConfigError("Pass model_name_or_path, config_name or "
                          "tokenizer_name: the tokenizer to use.")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config_source = model_args.model_name_or_path or model_args.config_name
    positions = None
    if config_source:
        config = AutoConfig.from_pretrained(config_source)
        positions = (getattr(config, "max_position_embeddings", None)
                     or getattr(config, "n_positions", None))
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    processes = data_args.dataset_num_proc or len(os.sched_getaffinity(0))
    timings: dict = {}
    target = data_args.tokenized_dataset_save_dir
    check_save_dir(target)   # before the work, not after it
    # inside it: nothing written elsewhere
    staging = tempfile.mkdtemp(prefix=".lmstream-staging-", dir=_made(target))
    try:
        ds = materialize(data_args, tokenizer, seed, positions, processes, timings, folder=staging)
        save_blocks(ds, target, staged=staging)
        tokens, seconds = _tokens(ds), timings["work"]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared %d blocks, %d tokens in %.1f s after %.1f s of start-up: %.0f "
             "tokens/s with %d processes",
             len(ds), tokens, seconds, timings["startup"], tokens / max(seconds, 1e-9), processes)
    return {"blocks": len(ds), "tokens": tokens, "seconds": seconds,
            "startup_seconds": timings["startup"], "processes": processes,
            "tokens_per_second": tokens / max(seconds, 1e-9)}


def _made(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    return folder


def _tokens(ds) -> int:
    """Tokens in the blocks: attention-masked ones when padded, else every position."""
    if "attention_mask" in ds.column_names:
        return int(sum(sum(m) for m in ds.with_format(None)["attention_mask"]))
    return len(ds) * (len(ds[0]["input_ids"]) if len(ds) else 0)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO)
    try:
        model_args, data_args, _, training_args = parse_args(argv)
        done = prepare(model_args, data_args, training_args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{done['blocks']} blocks ({done['tokens']:,} tokens) written to "
          f"{data_args.tokenized_dataset_save_dir} in {done['seconds']:.1f} s: "
          f"{done['tokens_per_second']:,.0f} tokens/s with {done['processes']} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
