"""One training run, step by step: the cells of notebooks/03_training.ipynb call these steps in
order, and `lmstream.train()` (the command line, torchrun, each process of a launched job) calls the
same steps.

    # checks, the checkpoint to resume, the folder's lock
    run = Run(model_args, data_args, run_args, training_args)
    model, tokenizer = run.load_model()
    # placed where the checkpoint stood
    train_ds, eval_ds = run.load_data()
    trainer = run.build_trainer()
    # train (and evaluate), save, print the summary
    metrics = run.fit()

With `launch=N` (N > 1, the notebook's `num_processes`) the run's own process only shows rank 0's
model and data; `fit()` starts N processes with accelerate's notebook_launcher, each running these
steps through `train()`."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import time

import transformers
from transformers import set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..arguments import check_training_numbers
from ..corpus import hub, signed
from ..paths import check_paths
from . import lineage
from .data import build_datasets
from ..errors import ConfigError
from ..stream.loader import build_loader
from ..stream.logical import with_readers
from .models import isolate_documents, load_model_and_tokenizer
from .outputs import read_metrics, save_final, step
from .progress import (BarOnly, TerminalProgress, TiedWeightsFilter, final_numbers, run_banner,
                       say, summary)
from .resume import (check_output_dir, data_states_to_load, pinned_plan, readers_to_resume,
                     resolve_checkpoint)
from .runlock import output_lock
from .signals import StopAtStepBoundary, Stopped, stop_on_signals
from .trainer import StreamingTrainer, block_collator, is_stream, place_loader

log = logging.getLogger("lmstream")
TRAINER_LOG = logging.getLogger("transformers.trainer")


class Run:
    """One run of the training job; see the module's docstring for the order of the steps."""

    def __init__(self, model_args, data_args, run_args, training_args,
                 callbacks: list | None = None, launch: int = 1, argv: list[str] | None = None):
        self.model_args, self.data_args = model_args, data_args
        self.run_args, self.training_args = run_args, training_args
        self.callbacks, self.launch, self.argv = callbacks or [], launch, argv
        self.started = time.perf_counter()
        self.model = self.tokenizer = self.trainer = None
        self.train_dataset = self.eval_dataset = self.data_states = None
        # lmstream.training.lineage: which topology fed which steps (a stream's only)
        self.lineage: list[dict] = []
        self.metrics: dict = {}
        self._locks = contextlib.ExitStack()
        self.checkpoint = self._start()

    @step
    def _start(self) -> str | None:
        """The checks before anything is written, the checkpoint to resume (or None), the output
        folder's lock."""
        a = self.training_args
        check_training_numbers(a)
        check_paths(a)
        if not (a.do_train or a.do_eval):
            raise ConfigError("Neither do_train nor do_eval is set, so the run would do nothing: "
                              "pass --do_train true (and --do_eval true to evaluate).")
        checkpoint = resolve_checkpoint(a) if a.do_train else None
        check_output_dir(a, self.run_args, checkpoint)
        if a.do_train and self.launch == 1 and a.process_index == 0:
            self._locks.enter_context(output_lock(a.output_dir))
        hub.API_CALLS[0] = 0     # this run's own (a kernel may have run another before)
        # the Hub's signed storage URLs, shared by every process of the run (corpus.signed)
        signed.share_in(os.path.join(a.output_dir, ".lmstream", "signed-urls") if a.do_train else None)
        return checkpoint

    def all_steps(self) -> dict:
        """Every step in order, the lock let go however it ends; the metrics (what `train()`
        does)."""
        with self:
            self.load_model()
            self.load_data()
            self.build_trainer()
            return self.fit()

    def close(self) -> None:
        """Let go of the output folder's lock (done by `fit`, or by a step that failed)."""
        self._locks.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):   # the lock is let go however the run ends
        self.close()

    @property
    def rank_and_world(self) -> tuple[int, int]:
        # this process shows rank 0 of the launched ones (and touches no accelerator)
        if self.launch > 1:
            return 0, self.launch
        return self.training_args.process_index, self.training_args.world_size

    @step
    def load_model(self):
        """(model, tokenizer): pretrained, or built from a config with the run's seed (a
        reproducible init)."""
        set_seed(self.training_args.seed)
        self.model, self.tokenizer = load_model_and_tokenizer(self.model_args)
        if self.data_args.dataset_document_attention == "isolated":
            isolate_documents(self.model)
        return self.model, self.tokenizer

    @step
    def load_data(self):
        """(train, eval) datasets of this rank; resuming, the stream is placed where the checkpoint
        stood."""
        a, cfg = self.training_args, self.model.config
        positions = (getattr(cfg, "max_position_embeddings", None)
                     or getattr(cfg, "n_positions", None))
        seed = a.data_seed if a.data_seed is not None else a.seed
        resuming = self.checkpoint and self.data_args.dataset_streaming
        plan, restart = pinned_plan(self.checkpoint, self.data_args) if resuming else (None, False)
        rank, world = self.rank_and_world
        self.data_args = lineage.with_listed_documents(self.checkpoint, self.data_args,
                                                       a.output_dir)
        self.data_args, auto = readers_to_resume(self.checkpoint if resuming else None,
                                                 self.data_args, world)
        self.train_dataset, self.eval_dataset = build_datasets(self.data_args, self.run_args,
                                                               self.tokenizer, seed, rank,
                                                               world, positions, a.do_eval,
                                                               plan=plan, output_dir=a.output_dir,
                                                               auto_readers=auto)
        # the lineage records the readers chosen (0: one per process and worker)
        self.data_args = with_readers(self.data_args, getattr(self.train_dataset, "readers", 0))
        if hasattr(self.train_dataset, "set_batches"):   # a mixture's schedule: optimizer steps
            self.train_dataset.set_batches(a.per_device_train_batch_size,
                                           a.gradient_accumulation_steps)
        stream = is_stream(self.train_dataset)
        if stream and a.do_train and a.max_steps <= 0 and not self.run_args.max_train_samples:
            raise ConfigError("max_steps must be set for a streamed dataset (its length is "
                              "unknown): pass --max_steps N, or --max_train_samples N to give each "
                              "epoch a known size and train --num_train_epochs.")
        if self.checkpoint and stream:
            self.data_states = data_states_to_load(self.checkpoint, a, self.train_dataset,
                                                   restart)
        self.lineage = []
        if stream:
            self.lineage = lineage.for_run(self.checkpoint, self.model_args, self.data_args,
                                           self.run_args, a, world, seed, positions)
        return self.train_dataset, self.eval_dataset

    def peek_batch(self) -> dict:
        """The first batch training will take (the resumed position included), from a copy of the
        stream with the run's workers: the run's own stream does not move."""
        a, ds = self.training_args, copy.deepcopy(self.train_dataset)
        if not is_stream(ds):
            return block_collator(self.data_args, self.tokenizer)(
                [ds[i] for i in range(min(a.per_device_train_batch_size, len(ds)))])
        loader = build_loader(ds, a.per_device_train_batch_size, a.dataloader_num_workers)
        place_loader(loader, ds, self.data_states, *self.rank_and_world, a.dataloader_num_workers)
        return next(iter(loader))

    def trainer_kwargs(self) -> dict:
        """What StreamingTrainer takes beyond the Trainer's own arguments: the saved data states to
        resume from, the run's lineage, and the callbacks (the terminal's lines, the caller's)."""
        return {"data_states": self.data_states, "lineage": self.lineage,
                "callbacks": [TerminalProgress(), *self.callbacks]}

    def adopt(self, trainer):
        """The run trains `trainer` (a StreamingTrainer built from this run's objects): the raw log
        dicts and tqdm bars give way to the terminal's lines; returns it."""
        trainer.remove_callback(PrinterCallback)   # raw log dicts: TerminalProgress prints them
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(BarOnly())
        # "Writing model shards" at every save: noise
        transformers.utils.logging.disable_progress_bar()
        self.trainer = trainer
        return trainer

    @step
    def build_trainer(self):
        """The StreamingTrainer (None when the run is launched: each launched process builds its
        own), as notebook 03 writes it out."""
        if self.launch > 1:
            return None
        return self.adopt(StreamingTrainer(
            model=self.model, args=self.training_args, train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset, processing_class=self.tokenizer,
            data_collator=block_collator(self.data_args, self.tokenizer), **self.trainer_kwargs()))

    @step
    def fit(self) -> dict:
        """Train (and evaluate) as the arguments say, save the model and metrics, print the summary;
        the metrics."""
        if self.launch > 1:
            from accelerate import notebook_launcher
            notebook_launcher(train_argv, (self.argv,), num_processes=self.launch)
            self.metrics = read_metrics(self.training_args.output_dir)
            return self.metrics
        result = None
        with self.training():
            if self.training_args.do_train:
                result = self.trainer.train(resume_from_checkpoint=self.checkpoint)
        return self.finish(result)

    @contextlib.contextmanager
    def training(self):
        """Around `trainer.train()`: the banner; SIGTERM or SIGINT stop at the next step boundary,
        after a checkpoint (Stopped); the Trainer's notice about tied weights on resume silenced."""
        a, tied = self.training_args, TiedWeightsFilter(self.model)
        TRAINER_LOG.addFilter(tied)
        self._locks.callback(TRAINER_LOG.removeFilter, tied)   # close() removes it
        try:
            if a.process_index == 0 and a.do_train:
                for line in run_banner(self):
                    say(line)
            with stop_on_signals() as stop:
                stopper = StopAtStepBoundary(stop)
                self.trainer.add_callback(stopper)
                yield
        except BaseException:
            self.close()
            raise
        self.trainer.remove_callback(stopper)
        if stopper.at_step is not None:
            self.close()
            where = os.path.join(a.output_dir, f"checkpoint-{stopper.at_step}")
            raise Stopped(stop.signum,
                          f"stopped by {stop.name} at step {stopper.at_step}: {where} saved; "
                          "continue with --resume_from_checkpoint true")

    @step
    def finish(self, result=None) -> dict:
        """After `trainer.train()` (its `result`, None when not training): the final model and the
        metrics saved, the evaluation (do_eval), the folder's lock let go, the summary printed; the
        metrics."""
        a = self.training_args
        try:
            self.metrics = self._save_training(result) if result is not None else {}
            if a.do_eval:
                self.metrics.update(self._evaluate())
        finally:
            self.close()
        if a.process_index == 0 and a.do_train:
            numbers = final_numbers(self.metrics, self.trainer.state)
            for line in summary(numbers, a.output_dir,
                                time.perf_counter() - self.started):
                say(line)
        return self.metrics

    def _save_training(self, result) -> dict:
        trainer, a = self.trainer, self.training_args
        metrics = {**result.metrics, **{f"data_{k}": v for k, v in trainer.data_stats().items()}}
        if hub.API_CALLS[0]:   # the plan's, made by this process (rank 0; none on a resume)
            metrics["data_hub_api_calls"] = hub.API_CALLS[0]
        save_final(trainer, a.output_dir)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        return metrics

    def _evaluate(self) -> dict:
        """Evaluation metrics: those of an evaluation at the last step, else a new evaluation."""
        t = self.trainer
        done = [h for h in t.state.log_history if "eval_loss" in h
                and h.get("step") == t.state.global_step]
        if done:
            metrics = {k: v for k, v in done[-1].items() if k.startswith("eval_")}
        else:
            metrics = t.evaluate()
        t.save_metrics("eval", metrics)
        return metrics


def train(model_args, data_args, run_args, training_args, callbacks: list | None = None) -> dict:
    """Train (and evaluate) as the arguments say, every step of a Run in order; return the final
    metrics.

    `callbacks`: extra transformers TrainerCallbacks (instances or classes) added to the Trainer."""
    return Run(model_args, data_args, run_args, training_args, callbacks).all_steps()


def train_argv(argv: list[str]) -> dict:
    """Train in a launched process: it parses the flags itself (TrainingArguments takes its rank and
    device then)."""
    from ..arguments import parse_args
    return train(*parse_args(argv))
