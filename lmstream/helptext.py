"""`--help` for lmstream-train and `python -m lmstream.train`, without importing torch or
transformers.

The reference command's flags come first, then lmstream's data, model and run arguments (their help
is read from the dataclasses in config.py), then a pointer to the full TrainingArguments list
(`--help-all`).
"""
from __future__ import annotations

import dataclasses
import textwrap

from .config import DataArguments, ModelArguments, RunArguments

# the reference command's flags that belong to transformers.TrainingArguments, with a short help
# each
REFERENCE_TRAINING = {
    "do_train": "Train (the reference passes it; lmstream trains when it is given).",
    "eval_strategy": "When to evaluate: no, steps or epoch.",
    "dataloader_num_workers": "DataLoader worker processes per GPU; each reads its "
                              "own part of the stream.",
    "max_steps": "Optimizer steps to train (required for a stream without max_train_samples).",
    "output_dir": "Checkpoints, model, metrics, figures and the report (report.ipynb) go here.",
    "per_device_train_batch_size": "Blocks per GPU per step.",
    "logging_steps": "Log (and print a progress line) every N steps.",
    "save_steps": "Checkpoint every N steps; each checkpoint holds the data position.",
    "resume_from_checkpoint": "A checkpoint-N folder, or true for the newest "
                              "complete one in output_dir.",
    "report_to": "none, wandb, tensorboard, ...; default: wandb when "
                 "WANDB_API_KEY is set, else none.",
}
REFERENCE_ORDER = ["dataset_streaming", "do_train", "eval_strategy", "dataset_name",
                   "dataset_config_name", "dataset_group_text", "dataloader_num_workers",
                   "max_steps", "model_name_or_path", "output_dir", "per_device_train_batch_size",
                   "logging_steps", "save_steps", "max_train_samples", "max_eval_samples",
                   "resume_from_checkpoint", "tokenized_dataset_save_dir",
                   "tokenized_dataset_load_dir", "report_to"]


def _fields():
    return {f.name: f for cls in (DataArguments, ModelArguments, RunArguments)
            for f in dataclasses.fields(cls)}


def _default(f) -> str:
    value = f.default if f.default is not dataclasses.MISSING else None
    return "" if value is None else f" (default {value})"


def _row(name: str, text: str, width: int = 100) -> str:
    head = f"  --{name}"
    body = textwrap.wrap(text, width - 32) or [""]
    first = f"{head:<32}{body[0]}" if len(head) < 31 else f"{head}\n{'':<32}{body[0]}"
    return "\n".join([first] + [f"{'':<32}{line}" for line in body[1:]])


def help_text(prog: str) -> str:
    fields = _fields()
    out = [f"usage: {prog} [--FLAG VALUE ...]    or    {prog} ARGS.yaml (the same "
           f"keys in a YAML/JSON file)", "",
           "Trains a causal language model on a dataset streamed while training "
           "(FineWeb from the Hub, local or",
           "remote files), with exact resume. Every flag of the reference train.py works unchanged.", "",
           "The reference command's flags:"]
    for name in REFERENCE_ORDER:
        if name in fields:
            out.append(_row(name, fields[name].metadata.get("help", "") + _default(fields[name])))
        else:
            out.append(_row(name, REFERENCE_TRAINING[name]))
    for title, cls in (("Data (lmstream's own):", DataArguments), ("Model:", ModelArguments),
                       ("Run:", RunArguments)):
        rest = [f for f in dataclasses.fields(cls) if f.name not in REFERENCE_ORDER]
        if rest:
            out += ["", title] + [_row(f.name, f.metadata.get("help", "") + _default(f))
                                  for f in rest]
    out += ["",
            "Training: every transformers.TrainingArguments flag is accepted as well "
            "(learning_rate, warmup_steps,",
            "lr_scheduler_type, weight_decay, gradient_accumulation_steps, bf16, seed, "
            "save_total_limit, ...):",
            f"`{prog} --help-all` lists them all.", "",
            "Booleans take true/false. Errors you can fix are one sentence on "
            "stderr and exit status 2."]
    return "\n".join(out) + "\n"
