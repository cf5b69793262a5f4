"""Preemption: SIGTERM (Kubernetes, Slurm, spot instances) or SIGINT (Ctrl-C) saves a complete
checkpoint at the next step boundary, every rank agreeing on that step, logs where, and stops;
`--resume_from_checkpoint true` then continues bitwise.

    with stop_on_signals() as stop:                 # in the training process
        trainer.add_callback(StopAtStepBoundary(stop))

DataLoader workers ignore both signals (lmstream/stream/workers.py: their parent decides; they exit
with it), so a signal sent to the whole process group does not kill the readers whose positions the
checkpoint needs.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from transformers import TrainerCallback

from ..stream.workers import SIGNALS


class StopRequest:
    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextlib.contextmanager
def stop_on_signals():
    """Record SIGTERM/SIGINT instead of dying (main thread only; elsewhere a no-op); a second SIGINT
    interrupts."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt   # Ctrl-C twice: stop now, without a checkpoint
        stop.signum = signum
        print(f"lmstream: received {signal.Signals(signum).name}: saving a checkpoint at the end "
              "of this step, then stopping (Ctrl-C again to stop at once)", flush=True)
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Stopped(Exception):
    """Training stopped on a signal after saving a checkpoint; the exit status is 128 + the signal
    number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopAtStepBoundary(TrainerCallback):
    """At each step's end: if any rank was asked to stop, every rank saves and stops at this same
    step."""

    def __init__(self, stop: StopRequest):
        self.stop = stop
        self.at_step = None

    def on_step_end(self, args, state, control, **kwargs):
        asked = self.stop.signum or 0
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            import torch
            flag = torch.tensor([asked], dtype=torch.int64,
                                device=args.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = int(flag.item())
        if asked and self.at_step is None:
            self.stop.signum = self.stop.signum or asked
            self.at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


class StopAfterStep(TrainerCallback):
    """Stop training after optimizer step `step` with a checkpoint there, as a SIGTERM would: a run
    cut short that `--resume_from_checkpoint true` continues (lowering max_steps instead would
    change the learning-rate schedule)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control
