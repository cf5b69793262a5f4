"""The training job: the reference script's command line, streaming data, exact resume.

    python -m lmstream.train --dataset_streaming true --do_train --dataset_name HuggingFaceFW/fineweb \\
        --dataset_config_name CC-MAIN-2024-10 --model_name_or_path openai-community/gpt2 --max_steps 2500 ...
    python -m lmstream.train params.yaml          # the same keys in a YAML or JSON file
    torchrun --nproc_per_node 8 -m lmstream.train ...
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and ("-h" in sys.argv[1:2] or "--help" in sys.argv[1:]):   # fast: before torch is imported
    from lmstream.helptext import help_text
    print(help_text("python -m lmstream.train"), end="")
    sys.exit(0)

import contextlib
import importlib.util
import logging
import os
import time
from typing import Optional

import transformers
from transformers import HfArgumentParser, TrainingArguments, default_data_collator, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .config import DataArguments, ModelArguments, RunArguments
from .errors import ConfigError
from .data import build_datasets
from .models import load_model_and_tokenizer
from .runlock import output_lock
from .stopping import StopAtStepBoundary, stop_on_signals
from . import planfile
from .progress import BarOnly, TerminalProgress, TiedWeightsFilter, banner, resume_line, say, summary
from .checkpoints import DATA_STATE_DIR, is_cut_short, last_complete_checkpoint, read_data_states
from .pipeline import plan_source
from .state import stream_epoch
from .trainer import StreamingTrainer, is_stream

log = logging.getLogger("lmstream")
ARG_CLASSES = (ModelArguments, DataArguments, RunArguments, TrainingArguments)


class _Parser(HfArgumentParser):
    """argparse's errors as one sentence (a ConfigError), not a usage dump of every TrainingArguments flag."""

    def error(self, message: str):
        raise ConfigError(f"{message[0].upper()}{message[1:]}: see --help.")


def parse_args(argv: list[str] | None = None):
    """(model, data, run, training) arguments from flags or from one YAML/JSON file; unknown names fail."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:
        HfArgumentParser(ARG_CLASSES, prog="python -m lmstream.train").print_help()
        sys.exit(0)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = file_to_argv(argv[0])   # a file goes through the same parser: same types, same checks
    parser = _Parser(ARG_CLASSES)
    try:
        parsed = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:   # TrainingArguments' own checks (e.g. logging_steps 0): one sentence
        raise ConfigError(f"{str(err).strip().splitlines()[0]} (see --help).") from None
    if parsed[-1]:
        raise ConfigError(f"Unknown argument(s) {' '.join(parsed[-1])}: see `python -m lmstream.train --help`.")
    explicit = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    model_args, data_args, run_args, training_args = parsed[:-1]
    if "report_to" not in explicit:   # like the reference: W&B when a key is set, else no remote tracking
        training_args.report_to = []
        if os.environ.get("WANDB_API_KEY"):
            if importlib.util.find_spec("wandb") is None:
                log.warning("WANDB_API_KEY is set but wandb is not installed (pip install wandb): not reporting to W&B.")
            else:
                training_args.report_to = ["wandb"]
    return model_args, data_args, run_args, training_args


def file_to_argv(path: str) -> list[str]:
    """The flags a YAML/JSON arguments file stands for (lists become several values, dicts JSON)."""
    import json
    import yaml
    if not os.path.isfile(path):
        raise ConfigError(f"Arguments file '{path}' does not exist.")
    try:
        with open(path) as f:
            data = (yaml.load(f, Loader=_Yaml12Loader) if path.endswith((".yaml", ".yml")) else json.load(f)) or {}
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"Arguments file '{path}' is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}"
                          f" ({str(err).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Arguments file '{path}' must hold a mapping of argument names to values.")
    return mapping_to_argv(data)


def _yaml12_loader():
    """A safe YAML loader whose booleans are only true/false (YAML 1.2): `eval_strategy: no` stays the string
    "no", as a user writing the reference's flag into a file means it."""
    import re
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return Loader


_Yaml12Loader = _yaml12_loader()


def _bool_fields() -> set:
    import dataclasses
    return {f.name for cls in ARG_CLASSES for f in dataclasses.fields(cls)
            if f.type in (bool, "bool", "Optional[bool]", "bool | None") or f.type == Optional[bool]}


def mapping_to_argv(data: dict, skip=()) -> list[str]:
    """Flags for a mapping of argument names to values (None left out, lists as several values, dicts as JSON).

    A YAML 1.1 reader (papermill's -f) turns `eval_strategy: no` into False: a boolean given for an argument
    that is not boolean goes back to the word it was ("no" / "yes")."""
    import json
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
    """The TrainingArguments numbers a typo can make nonsense of: finite, and in range (one sentence each)."""
    import math
    at_least_one = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
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
    if a.num_train_epochs is not None and (not math.isfinite(a.num_train_epochs) or a.num_train_epochs < 0):
        raise ConfigError(f"num_train_epochs={a.num_train_epochs} must be a finite number, 0 or more.")


def check_output_dir(training_args: TrainingArguments, run_args: RunArguments, resume) -> None:
    """Refuse to write into a folder that holds another run (nothing is overwritten)."""
    out = training_args.output_dir
    # executed notebooks (the run's report, written by papermill as it starts) and lmstream's caches don't make it
    # another run
    held = [f for f in os.listdir(out) if not f.endswith(".ipynb") and f not in (".lmstream", ".lmstream-demo")] \
        if os.path.isdir(out) else []
    if not (training_args.do_train and held):
        return
    if resume or run_args.overwrite_output_dir:
        return
    raise ConfigError(f"output_dir '{out}' already holds files (another run?): pass --resume_from_checkpoint true to "
                      "continue it, --overwrite_output_dir true to write over it, or choose an empty output_dir.")


def resolve_checkpoint(training_args: TrainingArguments) -> str | None:
    """resume_from_checkpoint as a folder: a path, or 'true'/'last' for the newest in output_dir; its
    trainer_state.json must be readable (a damaged one is named, not a JSONDecodeError traceback)."""
    folder = _checkpoint_folder(training_args)
    if folder is not None:
        import json
        state = os.path.join(folder, "trainer_state.json")
        try:
            with open(state) as f:
                if not isinstance(json.load(f).get("global_step"), int):
                    raise ValueError("no global_step")
        except FileNotFoundError:
            raise ConfigError(f"Checkpoint '{folder}' has no trainer_state.json: resume from a complete checkpoint.") from None
        except (OSError, ValueError, AttributeError) as err:
            raise ConfigError(f"Checkpoint file '{state}' is unreadable ({err}): resume from an earlier checkpoint.") from None
    return folder


def _checkpoint_folder(training_args: TrainingArguments) -> str | None:
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "false", "False", False):
        return None
    if str(resume).lower() in ("true", "last"):
        last = last_complete_checkpoint(training_args.output_dir)
        if last is None:
            raise ConfigError(f"resume_from_checkpoint=true but output_dir '{training_args.output_dir}' has no "
                              "checkpoint-* folder: pass a checkpoint path, or drop the flag to start anew.")
        return last
    if not os.path.isdir(resume):
        raise ConfigError(f"resume_from_checkpoint '{resume}' is not a folder: pass a checkpoint-N folder or true.")
    if is_cut_short(resume):
        raise ConfigError(f"Checkpoint '{resume}' is incomplete (its save was interrupted): resume from an earlier "
                          "checkpoint, or pass --resume_from_checkpoint true to take the newest complete one.")
    return resume


def pinned_plan(checkpoint: str, data_args: DataArguments):
    """(plan, restart epoch or False) for resuming from `checkpoint`: the plan it saved, so nothing is listed and
    no footer read again, when its data is unchanged. Changed data is refused naming the file, or, with
    dataset_accept_changed_data, planned anew and restarted at the checkpoint's epoch."""
    folder = os.path.join(checkpoint, DATA_STATE_DIR)
    if data_args.dataset_mixture or not os.path.isdir(folder):
        return None, False
    plan = planfile.load(folder)
    if plan is None or plan.source != plan_source(data_args):
        # saved by an lmstream that did not pin plans, or for other data arguments: planned anew, and the data
        # state's settings decide (another dataset is refused there, naming what differs)
        return None, False
    changes = planfile.shared_plan_check(lambda: planfile.changed(plan, data_args.retry_policy()))
    if not changes:
        return plan, False
    what = "; ".join(f"'{f}': {w}" for f, w in changes[:3]) + (f" (and {len(changes) - 3} more)" if len(changes) > 3 else "")
    if not data_args.dataset_accept_changed_data:
        raise ConfigError(f"The data changed since {checkpoint} was saved ({what}): resume on the data it was trained on, "
                          "or pass --dataset_accept_changed_data true to start its epoch again on the new data.")
    epoch = stream_epoch(read_data_states(checkpoint) or [])
    log.warning("The data changed since %s was saved (%s); --dataset_accept_changed_data: the stream starts epoch %d "
                "again on the new data.", checkpoint, what, epoch)
    return None, epoch


def train(model_args: ModelArguments, data_args: DataArguments, run_args: RunArguments,
          training_args: TrainingArguments, callbacks: list | None = None) -> dict:
    """Train (and evaluate) as the arguments say; return the final metrics.

    `callbacks`: extra transformers TrainerCallbacks (instances or classes) added to the Trainer."""
    started = time.perf_counter()
    check_training_numbers(training_args)
    checkpoint = resolve_checkpoint(training_args) if training_args.do_train else None
    check_output_dir(training_args, run_args, checkpoint)
    try:
        with (output_lock(training_args.output_dir) if training_args.do_train and training_args.process_index == 0
              else contextlib.nullcontext()):
            return _train(model_args, data_args, run_args, training_args, checkpoint, callbacks, started)
    except (OSError, RuntimeError) as err:
        sentence = storage_error(err, training_args.output_dir)
        if sentence is None:
            raise
        raise ConfigError(sentence) from None


def storage_error(err: BaseException, output_dir: str) -> str | None:
    """One sentence for a full or unwritable disk (None for anything else)."""
    import errno
    where = getattr(err, "filename", None) or output_dir
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err) or "file write failed" in str(err):
        return (f"No space left on the device while writing '{where}': free space or choose another output_dir "
                "(files are written whole or not at all; the last complete checkpoint is intact).")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Cannot write '{where}' ({err.strerror}): choose an output_dir you can write to."
    return None


def save_final(trainer, output_dir: str) -> None:
    """The final model, config and tokenizer, each file complete or absent: written into a scratch folder in
    output_dir, then moved into place file by file (a rename is atomic)."""
    import shutil
    scratch = os.path.join(output_dir, ".lmstream", f"final-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        trainer.save_model(scratch)
        if trainer.args.should_save:
            for name in os.listdir(scratch):
                os.replace(os.path.join(scratch, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train(model_args, data_args, run_args, training_args, checkpoint, callbacks, started) -> dict:
    set_seed(training_args.seed)   # before the model exists: a from-scratch init is then reproducible
    model, tokenizer = load_model_and_tokenizer(model_args)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    rank, world = training_args.process_index, training_args.world_size
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    plan, restart = pinned_plan(checkpoint, data_args) if checkpoint and data_args.dataset_streaming else (None, False)
    train_ds, eval_ds = build_datasets(data_args, run_args, tokenizer, seed, rank, world, positions,
                                       training_args.do_eval, plan=plan)
    if is_stream(train_ds) and training_args.do_train and training_args.max_steps <= 0 and not run_args.max_train_samples:
        raise ConfigError("max_steps must be set for a streamed dataset (its length is unknown): pass --max_steps N, "
                          "or --max_train_samples N to give each epoch a known size and train --num_train_epochs.")
    data_states = None
    if restart is not False and is_stream(train_ds):   # the data changed and the user accepted it
        train_ds.min_epoch = restart
        training_args.ignore_data_skip = True
    elif checkpoint and is_stream(train_ds):
        data_states = read_data_states(checkpoint)
        if data_states is None:
            log.warning("Checkpoint %s holds no lmstream data position (saved by another script?): %s", checkpoint,
                        "the Trainer will skip the consumed batches by reading and tokenizing them again (slow); "
                        "pass --ignore_data_skip true to start the data stream from its beginning instead."
                        if not training_args.ignore_data_skip else
                        "--ignore_data_skip is set, so the data stream starts again from its beginning "
                        "(documents already trained on are seen again).")
        else:
            training_args.ignore_data_skip = True
    trainer = StreamingTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=tokenizer, data_collator=default_data_collator, data_states=data_states,
                               callbacks=[TerminalProgress(), *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)   # raw log dicts: TerminalProgress prints them readably
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly())
    transformers.utils.logging.disable_progress_bar()   # "Writing model shards" at every save: noise
    tied = TiedWeightsFilter(model)
    logging.getLogger("transformers.trainer").addFilter(tied)
    loud = training_args.process_index == 0
    if loud and training_args.do_train:
        block = getattr(train_ds, "block_size", None) or data_args.dataset_block_size
        for line in banner(model, data_args, training_args, getattr(train_ds, "plan", None), block, checkpoint):
            say(line)
        if data_states:
            say(resume_line(checkpoint, data_states))
    metrics: dict = {}
    if training_args.do_train:
        with stop_on_signals() as stop:
            stopper = StopAtStepBoundary(stop)
            trainer.add_callback(stopper)
            result = trainer.train(resume_from_checkpoint=checkpoint)
        if stopper.at_step is not None:
            logging.getLogger("transformers.trainer").removeFilter(tied)
            where = os.path.join(training_args.output_dir, f"checkpoint-{stopper.at_step}")
            raise Stopped(stop.signum, f"stopped by {stop.name} at step {stopper.at_step}: {where} saved; continue "
                                       "with --resume_from_checkpoint true")
        metrics.update(result.metrics)
        metrics.update({f"data_{k}": v for k, v in trainer.data_stats().items()})
        save_final(trainer, training_args.output_dir)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        eval_metrics = ({k: v for k, v in done[-1].items() if k.startswith("eval_")} if done   # evaluated at the last step
                        else trainer.evaluate())
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    logging.getLogger("transformers.trainer").removeFilter(tied)
    if loud and training_args.do_train:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        seen = [h["tokens_seen"] for h in trainer.state.log_history if "tokens_seen" in h]
        final = {**metrics, "global_step": trainer.state.global_step, "final_loss": losses[-1] if losses else float("nan"),
                 "tokens_seen": seen[-1] if seen else 0}
        for line in summary(final, training_args.output_dir, time.perf_counter() - started):
            say(line)
    return metrics


class Stopped(Exception):
    """Training stopped on a signal after saving a checkpoint; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        train(*parse_args(argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"lmstream: {err}", flush=True)
        return 128 + err.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
