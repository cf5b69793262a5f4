"""The job's arguments: the reference script's flags (four dataclasses: model, data, run,
TrainingArguments), from a command line or from one YAML/JSON file, checked with one sentence per
mistake.

    model_args, data_args, run_args, training_args = parse_args(["--dataset_name", "HuggingFaceFW/fineweb", ...])
    # a mapping (YAML, notebook) as flags
    argv = mapping_to_argv({"max_steps": 10, "eval_strategy": "no"})
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import sys
from typing import Optional

from transformers import HfArgumentParser, TrainingArguments

from .config import DataArguments, ModelArguments, RunArguments
from .errors import ConfigError
from .paths import check_path, check_paths

log = logging.getLogger("lmstream")

ARG_CLASSES = (ModelArguments, DataArguments, RunArguments, TrainingArguments)


class OneSentenceParser(HfArgumentParser):
    """argparse's errors as one sentence (a ConfigError), not a usage dump of every
    TrainingArguments flag."""

    def error(self, message: str):
        raise ConfigError(f"{message[0].upper()}{message[1:]}: see --help.")


def expand(argv: list[str]) -> list[str]:
    """The flags themselves: one YAML/JSON file's content as flags, else `argv` as it is."""
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        # a file goes through the same parser: same types, same checks
        return file_to_argv(argv[0])
    return list(argv)


def given(argv: list[str]) -> set[str]:
    """The names of the arguments a command line (or its file) sets explicitly."""
    return {a[2:].split("=", 1)[0] for a in expand(argv) if a.startswith("--")}


def parse_args(argv: list[str] | dict | None = None):
    """(model, data, run, training) arguments from flags, from one YAML/JSON file, or from a mapping
    of argument names to values (None values left out); unknown names fail."""
    if isinstance(argv, dict):
        argv = mapping_to_argv(argv)
    else:
        argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:
        HfArgumentParser(ARG_CLASSES, prog="python -m lmstream.train").print_help()
        sys.exit(0)
    argv = expand(argv)
    parser = OneSentenceParser(ARG_CLASSES)
    try:
        parsed = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ConfigError:
        raise
    # TrainingArguments' own checks (e.g. logging_steps 0): one sentence
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{str(err).strip().splitlines()[0]} (see --help).") from None
    if parsed[-1]:
        raise ConfigError(f"Unknown argument(s) {' '.join(parsed[-1])}: see `python -m "
                          f"lmstream.train --help`.")
    model_args, data_args, run_args, training_args = parsed[:-1]
    check_paths(training_args)
    # like the reference: W&B when a key is set, else no remote tracking
    if "report_to" not in given(argv):
        training_args.report_to = []
        if os.environ.get("WANDB_API_KEY"):
            if importlib.util.find_spec("wandb") is None:
                log.warning("WANDB_API_KEY is set but wandb is not installed (pip install "
                            "wandb): not reporting to W&B.")
            else:
                training_args.report_to = ["wandb"]
    return model_args, data_args, run_args, training_args


def file_to_argv(path: str) -> list[str]:
    """The flags a YAML/JSON arguments file stands for (lists become several values, dicts JSON)."""
    import yaml
    check_path("Arguments file", path, "file", "give a YAML or JSON file of argument names and "
               "values")
    try:
        with open(path) as f:
            if path.endswith((".yaml", ".yml")):
                data = yaml.load(f, Loader=_Yaml12Loader) or {}
            else:
                data = json.load(f) or {}
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"Arguments file '{path}' is not valid "
                          f"{'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}"
                          f" ({str(err).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Arguments file '{path}' must hold a mapping of "
                          f"argument names to values.")
    return mapping_to_argv(data)


def _yaml12_loader():
    """A safe YAML loader whose booleans are only true/false (YAML 1.2): `eval_strategy: no` stays
    the string "no", as a user writing the reference's flag into a file means it."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag,
                                          rx in v if tag != "tag:yaml.org,2002:bool"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                 re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return Loader


_Yaml12Loader = _yaml12_loader()


def _bool_fields() -> set:
    return {f.name for cls in ARG_CLASSES for f in dataclasses.fields(cls)
            if f.type in (bool, "bool", "Optional[bool]", "bool | None")
            or f.type == Optional[bool]}


def mapping_to_argv(data: dict, skip=()) -> list[str]:
    """Flags for a mapping of argument names to values (None left out, lists as several values,
    dicts as JSON).

    A YAML 1.1 reader (papermill's -f) turns `eval_strategy: no` into False: a boolean given for an
    argument that is not boolean goes back to the word it was ("no" / "yes")."""
    argv: list[str] = []
    booleans = _bool_fields()
    for key, value in data.items():
        if key in skip or value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool) and key not in booleans:
            argv.append("yes" if value else "no")
        elif isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            argv.append(json.dumps(value))   # a list of records (dataset_mixture) is one JSON value
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def check_training_numbers(a: TrainingArguments) -> None:
    """The TrainingArguments numbers a typo can make nonsense of: finite, and in range (one sentence
    each)."""
    at_least_one = ("per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps")
    for name in at_least_one:
        if getattr(a, name) < 1:
            raise ConfigError(f"{name}={getattr(a, name)} must be at least 1.")
    for name in ("learning_rate", "weight_decay", "max_grad_norm", "adam_epsilon", "warmup_ratio"):
        v = getattr(a, name, None)
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ConfigError(f"{name}={v} must be a finite number, 0 or more.")
    if getattr(a, "warmup_ratio", 0) and a.warmup_ratio > 1:
        raise ConfigError(f"warmup_ratio={a.warmup_ratio} must be at most 1.")
    for name in ("logging_steps", "save_steps", "eval_steps"):
        v = getattr(a, name, None)
        if v is not None and v <= 0:
            raise ConfigError(f"{name}={v} must be positive.")
    for name in ("seed", "data_seed"):
        v = getattr(a, name, None)
        if v is not None and not 0 <= v < 2 ** 32:
            raise ConfigError(f"{name}={v} must be in [0, 2**32).")
    if a.dataloader_num_workers < 0:
        raise ConfigError(f"dataloader_num_workers={a.dataloader_num_workers} must be 0 or more.")
    if a.num_train_epochs is not None and (not math.isfinite(a.num_train_epochs)
                                           or a.num_train_epochs < 0):
        raise ConfigError(f"num_train_epochs={a.num_train_epochs} must be a "
                          f"finite number, 0 or more.")
