"""Where a run starts: a fresh output_dir, or a checkpoint to resume (`--resume_from_checkpoint PATH
| true`), with the plan it pinned when the data is unchanged.

    # None, or a complete checkpoint-N folder
    checkpoint = resolve_checkpoint(training_args)
    # the saved plan, or (None, epoch) on changed data
    plan, restart = pinned_plan(checkpoint, data_args)
"""
from __future__ import annotations

import json
import logging
import os

from transformers import TrainingArguments

from ..corpus import planfile
from ..stream.logical import logical_readers_of, with_readers
from .checkpoints import DATA_STATE_DIR, is_cut_short, last_complete_checkpoint, read_data_states
from ..config import DataArguments, RunArguments
from ..errors import ConfigError
from ..corpus.sources import plan_source
from ..stream.state import stream_epoch

log = logging.getLogger("lmstream")


def check_output_dir(training_args: TrainingArguments, run_args: RunArguments, resume) -> None:
    """Refuse to write into a folder that holds another run (nothing is overwritten)."""
    out = training_args.output_dir
    # executed notebooks (the run's report, written by papermill as it starts), lmstream's caches
    # and a lineage alone (a run that saved no checkpoint: nothing to resume) don't make it another
    # run
    ignored = (".lmstream", ".lmstream-demo", "lmstream_lineage.json")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"output_dir '{out}' is a file, not a folder: choose another output_dir "
                          "(nothing was written).")
    names = os.listdir(out) if os.path.isdir(out) else []
    held = [f for f in names if not f.endswith(".ipynb") and f not in ignored]
    if not (training_args.do_train and held):
        return
    if resume or run_args.overwrite_output_dir:
        return
    raise ConfigError(f"output_dir '{out}' already holds files (another run?): pass "
                      "--resume_from_checkpoint true to continue it, --overwrite_output_dir true "
                      "to write over it, or choose an empty output_dir.")


def resolve_checkpoint(training_args: TrainingArguments) -> str | None:
    """resume_from_checkpoint as a folder: a path, or 'true'/'last' for the newest in output_dir;
    its trainer_state.json must be readable (a damaged one is named, not a JSONDecodeError
    traceback)."""
    folder = checkpoint_folder(training_args)
    if folder is not None:
        state = os.path.join(folder, "trainer_state.json")
        try:
            with open(state) as f:
                step = json.load(f).get("global_step")
                if not isinstance(step, int):
                    raise ValueError("no global_step")
        except FileNotFoundError:
            raise ConfigError(f"resume_from_checkpoint '{folder}' has no trainer_state.json: "
                              f"resume from a complete checkpoint.") from None
        except (OSError, ValueError, AttributeError) as err:
            raise ConfigError(f"Checkpoint file '{state}' is unreadable ({err}): resume "
                              f"from an earlier checkpoint.") from None
        if 0 < training_args.max_steps <= step:   # the Trainer would take one step more
            raise ConfigError(f"resume_from_checkpoint '{folder}' already holds {step} steps, "
                              f"max_steps={training_args.max_steps}: pass a larger --max_steps "
                              "to go on.")
    return folder


def checkpoint_folder(training_args: TrainingArguments) -> str | None:
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "false", "False", False):
        return None
    if str(resume).lower() in ("true", "last"):
        last = last_complete_checkpoint(training_args.output_dir)
        if last is None:
            raise ConfigError("resume_from_checkpoint=true but output_dir "
                              f"'{training_args.output_dir}' has no checkpoint-* folder: pass a "
                              "checkpoint path, or drop the flag to start anew.")
        return last
    if not os.path.isdir(resume):
        raise ConfigError(f"resume_from_checkpoint '{resume}' is not a folder: pass a "
                          f"checkpoint-N folder or true.")
    if is_cut_short(resume):
        raise ConfigError(f"Checkpoint '{resume}' is incomplete (its save was interrupted): resume "
                          "from an earlier checkpoint, or pass --resume_from_checkpoint true to "
                          "take the newest complete one.")
    return resume


def pinned_plan(checkpoint: str, data_args: DataArguments):
    """(plan, restart epoch or False) for resuming from `checkpoint`: the plan it saved, so nothing
    is listed and no footer read again, when its data is unchanged. Changed data is refused naming
    the file, or, with dataset_accept_changed_data, planned anew and restarted at the checkpoint's
    epoch."""
    folder = os.path.join(checkpoint, DATA_STATE_DIR)
    if data_args.dataset_mixture or not os.path.isdir(folder):
        return None, False
    plan = planfile.load(folder)
    if plan is None or plan.source != plan_source(data_args):
        # saved by an lmstream that did not pin plans, or for other data arguments: planned anew,
        # and the data state's settings decide (another dataset is refused there, naming what
        # differs)
        return None, False
    changes = planfile.shared_plan_check(lambda: planfile.changed(plan, data_args.retry_policy()))
    if not changes:
        return plan, False
    what = "; ".join(f"'{f}': {w}" for f, w in changes[:3]) + (f" (and {len(changes) - 3} more)"
                                                               if len(changes) > 3 else "")
    if not data_args.dataset_accept_changed_data:
        raise ConfigError(f"The data changed since {checkpoint} was saved ({what}): resume on the "
                          "data it was trained on, or pass --dataset_accept_changed_data true to "
                          "start its epoch again on the new data.")
    epoch = stream_epoch(read_data_states(checkpoint) or [])
    log.warning("The data changed since %s was saved (%s); --dataset_accept_changed_data: the "
                "stream starts epoch %d again on the new data.", checkpoint, what, epoch)
    return None, epoch


def data_states_to_load(checkpoint: str, training_args: TrainingArguments, stream, restart):
    """The checkpoint's data states for `stream` to start from; None when there are none, or when
    the data changed and the user accepted a new epoch (`restart`: that epoch, else False)."""
    a = training_args
    if restart is not False:
        stream.min_epoch = restart
    states = read_data_states(checkpoint) if restart is False else None
    if restart is not False or states is not None:   # nothing for the Trainer to skip
        a.ignore_data_skip = True
        return states
    if not a.ignore_data_skip and a.dataloader_num_workers > 0:
        raise ConfigError(f"Checkpoint {checkpoint} holds no lmstream data position (saved by "
                          "another script?), and the Trainer's skip of the batches trained on "
                          "(reading them again) works in one process only: resume with "
                          "--dataloader_num_workers 0, or --ignore_data_skip true.")
    if a.ignore_data_skip:
        then = ("--ignore_data_skip is set: the data stream starts from its beginning (documents "
                "seen again).")
    else:
        then = ("the Trainer will skip the consumed batches by reading and tokenizing them again "
                "(slow); --ignore_data_skip true starts the data stream from its beginning "
                "instead.")
    log.warning("Checkpoint %s holds no lmstream data position (saved by another script?): %s",
                checkpoint, then)
    return None


def readers_to_resume(checkpoint: str | None, data_args, world_size: int):
    """(data arguments, auto) for this start: a resumed run keeps the logical readers its checkpoint
    was saved with (lmstream.stream.logical; 0 for per-process readers); a topology that cannot
    serve them falls back to the elastic resume, said in a warning. `auto`: a new run, whose
    default the pipeline chooses."""
    states = read_data_states(checkpoint) if checkpoint else None
    saved = logical_readers_of(states)
    asked = data_args.dataset_logical_readers
    if saved is None:
        if checkpoint:   # another script's checkpoint: the Trainer skips its batches by reading
            return with_readers(data_args, asked or 0), False
        return data_args, asked is None
    if asked is not None and asked != saved:
        raise ConfigError(f"Checkpoint {checkpoint} was saved with dataset_logical_readers="
                          f"{saved}, this run asks {asked}: a run keeps its readers (drop the "
                          "flag), or start a new run.")
    if saved and saved % world_size:
        log.warning("Elastic resume: the checkpoint's %d logical readers cannot be split evenly "
                    "between %d processes, so the run goes on with one reader per process and "
                    "worker: every document of the current epoch not yet trained on is dealt to "
                    "them (none twice, none skipped; the order differs from an uninterrupted run).",
                    saved, world_size)
        saved = 0
    return with_readers(data_args, saved), False
