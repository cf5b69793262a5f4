"""Argument dataclasses. Field names are the reference script's flags, so a user's command line
works.

    args = DataArguments(dataset_name="HuggingFaceFW/fineweb", dataset_config_name="CC-MAIN-2024-10")
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError
from .mixspec import SOURCE_KEYS, parse_mixture, parse_schedule  # noqa: F401 (their home)
from .paths import PATHS, check_one, check_paths
from .retry import RetryPolicy


def number_fields(cls) -> dict:
    """{field: int or float} of an argument dataclass, from its type hints (Optional[int] is int;
    bool is not a number here). From the hints, not `Field.type`: transformers' HfArgumentParser
    rewrites `Field.type` in place once it has parsed a class."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) is typing.Union:
            kind = next((k for k in typing.get_args(kind) if k is not type(None)), kind)
        if kind in (int, float):
            out[f.name] = kind
    return out


# an int field fits a 64-bit integer (numpy, torch); a float field is seconds or a fraction, and a
# wait beyond about 31 years does not fit the platform's time_t (an OverflowError deep in a socket)
_LARGEST = {int: 2 ** 63 - 1, float: 1e9}


def check_numbers(args) -> None:
    """Every number field of an argument dataclass, from its declared type: an int field holds a
    whole number below 2**63, a float field a finite one up to 1e9, neither negative (None where
    the field allows it).
    A field added later is checked without anyone listing it."""
    for name, kind in number_fields(type(args)).items():
        v = getattr(args, name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                kind is int and not float(v).is_integer()):
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{name}={v!r} must be {what} (see --help).")
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name}={v} must be a finite number, 0 or more (see --help).")
        if v > _LARGEST[kind]:
            raise ConfigError(f"{name}={v} is too large: at most {_LARGEST[kind]:g} (see --help).")
        if kind is int and isinstance(v, float):
            setattr(args, name, int(v))   # 128.0 from a YAML or JSON file is 128


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes token blocks."""

    dataset_name: Optional[str] = field(default=None, metadata={"help": (
        "Hub id (HuggingFaceFW/fineweb), local dataset repository, directory, glob, file, "
        "http(s)://, s3:// or gs:// URL; several separated by commas.")})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": (
        "Config of the dataset (e.g. CC-MAIN-2024-10).")})
    dataset_mixture: Optional[str] = field(default=None, metadata={"help": (
        'Several sources in set proportions, as JSON (a list in YAML): [{"name": ..., "config": '
        '..., "split": ..., "text_field": ..., "weight": 0.7, "on_exhausted": "cycle" | '
        '"stop"}, ...]; replaces dataset_name.')})
    dataset_mixture_schedule: Optional[str] = field(default=None, metadata={"help": (
        'The mixture\'s weights over training, as JSON (a list in YAML): [{"step": 0, "weights": '
        '{"<source name>": 0.9, ...}}, {"step": 2000, "weights": [0.5, 0.5]}, ...]; linear '
        "between points (two points a step apart make a jump), keyed to the optimizer step.")})
    dataset_accept_mixture_change: bool = field(default=False, metadata={"help": (
        "On resume, accept other dataset_mixture weights or another dataset_mixture_schedule "
        "than the checkpoint's (recorded in the lineage). Default: refuse.")})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": (
        "Split to evaluate on, when the dataset has it.")})
    dataset_text_field: str = field(default="text",
                                    metadata={"help": "Column holding the document text."})
    dataset_max_seq_length: Optional[int] = field(default=None, metadata={"help": (
        "Tokens per sample when not grouping (documents longer are truncated, shorter are padded); "
        "defaults to the block size.")})
    dataset_num_proc: Optional[int] = field(default=None, metadata={"help": (
        "Processes for non-streaming preprocessing.")})
    dataset_group_text: bool = field(default=True, metadata={"help": (
        "Concatenate documents (EOS between them) and cut into blocks of dataset_block_size, "
        "carrying the remainder over; false: one padded sample per document.")})
    dataset_group_text_validation: bool = field(default=True,
                                                metadata={"help": "Group the evaluation data too."})
    dataset_block_size: Optional[int] = field(default=None, metadata={"help": (
        "Tokens per block; default min(1024, tokenizer.model_max_length, model positions).")})
    dataset_streaming: bool = field(default=True, metadata={"help": (
        "Stream the data while training instead of materializing it first.")})
    tokenized_dataset_save_dir: Optional[str] = field(default=None, metadata={"help": (
        "Save the tokenized blocks here.")})
    tokenized_dataset_load_dir: Optional[str] = field(default=None, metadata={"help": (
        "Train from blocks saved by tokenized_dataset_save_dir.")})
    # lmstream's own knobs
    dataset_shuffle: bool = field(default=True, metadata={"help": (
        "Permute shards per epoch and documents within a window (from the seed).")})
    dataset_shuffle_buffer: int = field(default=1000, metadata={"help": (
        "Documents per shuffle window (memory: about this many documents).")})
    dataset_holdout_fraction: float = field(default=0.0, metadata={"help": (
        "Fraction of documents (chosen by a hash of their text) held out of training for "
        "evaluation, when the dataset has no evaluation split. 0 disables.")})
    dataset_text_sample_by: str = field(default="document", metadata={"help": (
        "Plain-text files: 'document' (one file), 'paragraph' or 'line' per sample.")})
    dataset_tokenizer_backend: str = field(default="auto", metadata={"help": (
        "Tokenizer backend: auto (the fastest that reproduces the tokenizer id for id: fastokens, "
        "then tiktoken, then the HF tokenizer), or fastokens, tiktoken or hf to insist on one.")})
    dataset_document_attention: str = field(default="shared", metadata={"help": (
        "shared: a packed block's tokens attend to every token before them, other documents' too "
        "(the reference script, GPT-2's own training); isolated: position_ids restart at each "
        "document, so no token attends to another document (eager, sdpa, flash attention).")})
    dataset_tokenize_batch_size: int = field(default=256,
                                             metadata={"help": "Documents per tokenizer call."})
    dataset_cycle: bool = field(default=True, metadata={"help": (
        "Start the next epoch (new shuffle) when the training stream ends.")})
    dataset_logical_readers: Optional[int] = field(default=None, metadata={"help": (
        "Logical readers of the training stream, fixed when a run starts: each optimizer step "
        "trains on the same blocks whatever the processes and workers (a resume on another "
        "topology included). Default: a power of two up to 256 and up to the data's pieces, a "
        "multiple of the processes; 0: one reader per process and worker (lmstream before 0.9).")})
    dataset_max_retries: int = field(default=30, metadata={"help": (
        "Attempts per remote read before giving up (transient faults).")})
    dataset_retry_budget: float = field(default=600.0, metadata={"help": (
        "Seconds one remote read (or Hub call) keeps retrying transient faults: a store outage "
        "shorter than this is ridden out.")})
    dataset_max_retry_wait: float = field(default=120.0, metadata={"help": (
        "Cap in seconds on one wait between retries, a server's Retry-After included.")})
    dataset_retry_backoff: float = field(default=1.0, metadata={"help": (
        "Seconds before the first retry; doubles each retry (with jitter).")})
    dataset_read_timeout: float = field(default=60.0, metadata={"help": (
        "Seconds a remote read may stall before it is retried.")})
    dataset_readahead_bytes: int = field(default=256 << 20, metadata={"help": (
        "Upcoming Parquet row groups fetched in the background per reader, in bytes "
        "(uncompressed); 0 disables.")})
    dataset_cache_dir: Optional[str] = field(default=None, metadata={"help": (
        "A node-local folder keeping the Parquet row groups read from remote files (Hub, HTTP, "
        "S3), keyed by content: a cycled mixture source, evaluation, inspect and a rerun read "
        "them from it the second time. Unset (the default): nothing is kept.")})
    dataset_cache_size: int = field(default=50 << 30, metadata={"help": (
        "Most bytes dataset_cache_dir holds; the least recently used are removed first.")})
    dataset_accept_changed_data: bool = field(default=False, metadata={"help": (
        "On resume, accept data whose content changed since the checkpoint (same names, other "
        "bytes): a warning, and the stream starts the checkpoint's epoch again on the new data. "
        "Default: refuse, naming the file.")})
    dataset_skip_bad_shards: bool = field(default=False, metadata={"help": (
        "Skip (with a warning, counted) shards that cannot be read at all, instead of failing.")})
    dataset_skip_steps: str | None = field(default=None, metadata={"help": (
        "Resuming, drop the blocks that training steps A..B consumed (A-B[,C-D], the step "
        "numbers of the run being resumed) and keep every other block in its place: step A then "
        "trains on what step B+1 did. Recorded in the checkpoints and metrics (skipped_blocks, "
        "skipped_documents, skipped_tokens); see lmstream.inspect.")})
    dataset_skip_documents: str | None = field(default=None, metadata={"help": (
        "A file of document ids or urls (the dataset's `id` / `url` columns), one per line: "
        "those documents are not trained on from now on, wherever they occur; every other block "
        "keeps its place in the order. The list is kept in the checkpoints and applies on later "
        "resumes too; counted as docs_listed_skipped and tokens_listed_skipped.")})

    def __post_init__(self):
        check_numbers(self)
        check_paths(self, PATHS)
        if self.dataset_mixture is not None:
            for i, source in enumerate(parse_mixture(self.dataset_mixture)):
                check_one(f"dataset_mixture source {i}", source.get("name"), "source")
        if self.dataset_mixture_schedule is not None:
            if self.dataset_mixture is None:
                raise ConfigError("dataset_mixture_schedule needs dataset_mixture: give the "
                                  "sources it weighs.")
            parse_schedule(self.dataset_mixture_schedule, parse_mixture(self.dataset_mixture))
        parse_step_ranges(self.dataset_skip_steps)
        if self.dataset_block_size is not None and self.dataset_block_size < 2:
            raise ConfigError(f"dataset_block_size={self.dataset_block_size} is too small: use at "
                              f"least 2 tokens per block.")
        if self.dataset_max_seq_length is not None and self.dataset_max_seq_length < 2:
            raise ConfigError(f"dataset_max_seq_length={self.dataset_max_seq_length} is "
                              f"too small: use at least 2.")
        if self.dataset_shuffle_buffer < 1:
            raise ConfigError(f"dataset_shuffle_buffer={self.dataset_shuffle_buffer} "
                              f"must be at least 1.")
        if not 0.0 <= self.dataset_holdout_fraction < 1.0:
            raise ConfigError(f"dataset_holdout_fraction={self.dataset_holdout_fraction} "
                              f"must be in [0, 1).")
        if self.dataset_text_sample_by not in ("document", "paragraph", "line"):
            raise ConfigError(f"dataset_text_sample_by={self.dataset_text_sample_by!r} must be "
                              f"'document', 'paragraph' or 'line'.")
        if self.dataset_max_retries < 1:
            raise ConfigError(f"dataset_max_retries={self.dataset_max_retries} must be at least 1.")
        if self.dataset_tokenizer_backend not in ("auto", "fastokens", "tiktoken", "hf"):
            raise ConfigError(f"dataset_tokenizer_backend={self.dataset_tokenizer_backend!r} must "
                              "be auto, fastokens, tiktoken or hf.")
        if self.dataset_document_attention not in ("shared", "isolated"):
            raise ConfigError(f"dataset_document_attention={self.dataset_document_attention!r} "
                              "must be shared or isolated.")
        if self.dataset_tokenize_batch_size < 1:
            raise ConfigError(f"dataset_tokenize_batch_size={self.dataset_tokenize_batch_size} "
                              f"must be at least 1.")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.dataset_max_retries, self.dataset_retry_backoff,
                           read_timeout=self.dataset_read_timeout,
                           max_wait=self.dataset_max_retry_wait, budget=self.dataset_retry_budget)


@dataclass
class ModelArguments:
    """Which model and tokenizer to train: pretrained weights, or a config (+ overrides) from
    scratch."""

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": (
        "Pretrained model (hub id or folder with weights), e.g. openai-community/gpt2. "
        "Leave unset to train from scratch from config_name.")})
    config_name: Optional[str] = field(default=None, metadata={"help": (
        "Config (hub id or folder) to build a model from scratch.")})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": (
        "Tokenizer, if not the model's/config's.")})
    config_overrides: Optional[str] = field(default=None, metadata={"help": (
        "Overrides for a from-scratch config, e.g. 'n_layer=2,n_embd=64,n_head=2'.")})
    torch_dtype: Optional[str] = field(default=None, metadata={"help": (
        "Weights dtype: auto, bfloat16, float16, float32.")})
    attn_implementation: Optional[str] = field(default=None, metadata={"help": (
        "Attention kernel: eager, sdpa, flash_attention_2.")})

    def __post_init__(self):
        check_paths(self, PATHS)
        if self.torch_dtype not in (None, "auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"torch_dtype={self.torch_dtype!r} must be auto, "
                              f"bfloat16, float16 or float32.")
        if self.config_overrides and self.model_name_or_path:
            raise ConfigError("config_overrides only applies when training from scratch: drop "
                              "model_name_or_path and pass config_name instead.")


@dataclass
class RunArguments:
    """The reference script's extra arguments, and lmstream's run options."""

    max_train_samples: Optional[int] = field(default=None, metadata={"help": (
        "Blocks per epoch used for training (all ranks).")})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": (
        "Blocks used for evaluation (all ranks).")})
    overwrite_output_dir: bool = field(default=False, metadata={"help": (
        "Allow writing into an output_dir that holds another run.")})

    def __post_init__(self):
        check_numbers(self)
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name}={v} must be at least 1 (or left unset).")


def parse_step_ranges(text: str | None) -> list[list[int]]:
    """'A-B[,C-D]' (or single steps 'A') as sorted [[A, B], ...]; one sentence naming the flag when
    malformed."""
    if not text:
        return []
    out = []
    for part in str(text).split(","):
        a, _, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise ConfigError(f"dataset_skip_steps '{text}': write step ranges as A-B[,C-D] with "
                              "whole numbers (for example 41200-41260).") from None
        if lo < 1 or hi < lo:
            raise ConfigError(f"dataset_skip_steps '{text}': each range A-B needs 1 <= A <= B.")
        out.append([lo, hi])
    out.sort()
    if any(p[1] >= q[0] for p, q in zip(out, out[1:])):
        raise ConfigError(f"dataset_skip_steps '{text}': the ranges overlap; give each step once.")
    return out
