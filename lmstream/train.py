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
import errno
import logging
import os
import shutil
import time

import transformers
from transformers import TrainingArguments, default_data_collator, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .arguments import check_training_numbers, parse_args
from .checkpoints import read_data_states
from .config import DataArguments, ModelArguments, RunArguments
from .data import build_datasets
from .errors import ConfigError
from .models import load_model_and_tokenizer
from .progress import BarOnly, TerminalProgress, TiedWeightsFilter, banner, resume_line, say, summary
from .resume import check_output_dir, pinned_plan, resolve_checkpoint
from .runlock import output_lock
from .stopping import StopAtStepBoundary, stop_on_signals
from .trainer import StreamingTrainer, is_stream

log = logging.getLogger("lmstream")
TRAINER_LOG = logging.getLogger("transformers.trainer")


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
    train_ds, eval_ds, data_states = _data(model, tokenizer, data_args, run_args, training_args, checkpoint)
    trainer = StreamingTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=tokenizer, data_collator=default_data_collator, data_states=data_states,
                               callbacks=[TerminalProgress(), *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)   # raw log dicts: TerminalProgress prints them readably
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly())
    transformers.utils.logging.disable_progress_bar()   # "Writing model shards" at every save: noise
    tied = TiedWeightsFilter(model)
    TRAINER_LOG.addFilter(tied)
    loud = training_args.process_index == 0 and training_args.do_train
    try:
        if loud:
            block = getattr(train_ds, "block_size", None) or data_args.dataset_block_size
            streams = getattr(train_ds, "streams", None) or [train_ds]   # a mixture's sources share the tokenizer
            backend = getattr(getattr(streams[0], "encoder", None), "backend", None)
            for line in banner(model, data_args, training_args, getattr(train_ds, "plan", None), block, checkpoint,
                               backend):
                say(line)
            if data_states:
                say(resume_line(checkpoint, data_states))
        metrics = _fit(trainer, training_args, checkpoint) if training_args.do_train else {}
        if training_args.do_eval:
            metrics.update(_evaluate(trainer))
    finally:
        TRAINER_LOG.removeFilter(tied)
    if loud:
        for line in summary(_final_numbers(trainer, metrics), training_args.output_dir, time.perf_counter() - started):
            say(line)
    return metrics


def _data(model, tokenizer, data_args, run_args, training_args, checkpoint):
    """(train, eval, data states to resume from or None): the run's datasets, placed where the checkpoint stood."""
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    plan, restart = pinned_plan(checkpoint, data_args) if checkpoint and data_args.dataset_streaming else (None, False)
    train_ds, eval_ds = build_datasets(data_args, run_args, tokenizer, seed, training_args.process_index,
                                       training_args.world_size, positions, training_args.do_eval, plan=plan)
    if is_stream(train_ds) and training_args.do_train and training_args.max_steps <= 0 and not run_args.max_train_samples:
        raise ConfigError("max_steps must be set for a streamed dataset (its length is unknown): pass --max_steps N, "
                          "or --max_train_samples N to give each epoch a known size and train --num_train_epochs.")
    if not (checkpoint and is_stream(train_ds)):
        return train_ds, eval_ds, None
    if restart is not False:   # the data changed and the user accepted it
        train_ds.min_epoch = restart
        training_args.ignore_data_skip = True
        return train_ds, eval_ds, None
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
    return train_ds, eval_ds, data_states


def _fit(trainer, training_args, checkpoint) -> dict:
    """Train; a signal stops it at a step boundary after a checkpoint (Stopped)."""
    with stop_on_signals() as stop:
        stopper = StopAtStepBoundary(stop)
        trainer.add_callback(stopper)
        result = trainer.train(resume_from_checkpoint=checkpoint)
    if stopper.at_step is not None:
        where = os.path.join(training_args.output_dir, f"checkpoint-{stopper.at_step}")
        raise Stopped(stop.signum, f"stopped by {stop.name} at step {stopper.at_step}: {where} saved; continue "
                                   "with --resume_from_checkpoint true")
    metrics = {**result.metrics, **{f"data_{k}": v for k, v in trainer.data_stats().items()}}
    save_final(trainer, training_args.output_dir)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def _evaluate(trainer) -> dict:
    """Evaluation metrics: those of an evaluation at the last step, else a new evaluation."""
    done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
    metrics = {k: v for k, v in done[-1].items() if k.startswith("eval_")} if done else trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    return metrics


def _final_numbers(trainer, metrics: dict) -> dict:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    seen = [h["tokens_seen"] for h in trainer.state.log_history if "tokens_seen" in h]
    return {**metrics, "global_step": trainer.state.global_step, "final_loss": losses[-1] if losses else float("nan"),
            "tokens_seen": seen[-1] if seen else 0}


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
