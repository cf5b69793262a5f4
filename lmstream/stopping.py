"""Preemption: SIGTERM (Kubernetes, Slurm, spot instances) or SIGINT (Ctrl-C) saves a complete checkpoint at the
next step boundary, every rank agreeing on that step, logs where, and stops; `--resume_from_checkpoint true`
then continues bitwise.

    with stop_on_signals() as stop:                 # in the training process
        trainer.add_callback(StopAtStepBoundary(stop))

DataLoader workers ignore both signals (their parent decides; they exit with it), so a signal sent to the whole
process group does not kill the readers whose positions the checkpoint needs.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # noqa: F401 - its exit handler is registered before ours, so ours runs first
import os
import signal
import sys
import threading

from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextlib.contextmanager
def stop_on_signals():
    """Record SIGTERM/SIGINT instead of dying (main thread only; elsewhere a no-op); a second SIGINT interrupts."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt   # Ctrl-C twice: stop now, without a checkpoint
        stop.signum = signum
        print(f"lmstream: received {signal.Signals(signum).name}: saving a checkpoint at the end of this step, then "
              "stopping (Ctrl-C again to stop at once)", flush=True)
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_signals_in_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: the main process handles SIGTERM/SIGINT (workers exit when it does)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if FORKED_BY[0] is not None:
        _die_with_parent(FORKED_BY[0])


FORKED_BY = [None]   # the loader's process id when its main thread forks the workers (they read their copy), or None


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when its parent process dies. A parent killed without running its exit
    handlers (a notebook kernel killed at shutdown, SIGKILL) would otherwise leave workers behind that never exit:
    at their own exit each waits to flush its last message into a pipe no one reads any more (the other workers
    hold its read end open). The signal follows the thread that forked: only a fork by the main thread asks it."""
    if sys.platform != "linux":
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


_reaper = []


def kill_workers_at_exit() -> None:
    """Call in the process that starts DataLoader workers. At interpreter exit, multiprocessing terminates the
    daemonic children still alive (SIGTERM, which these workers ignore) and then joins them: it would wait
    forever for the workers of an iterator that was never closed. They are killed first (their positions are
    the parent's business, and it is exiting)."""
    if not _reaper:
        _reaper.append(atexit.register(_kill_daemonic_children))


def _kill_daemonic_children() -> None:
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if not children:
        return
    if threading.current_thread() is threading.main_thread():
        # torch's SIGCHLD handler raises when a worker dies: mid-loop, it would leave the others alive
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        try:
            child.join(5)
        except Exception:  # noqa: BLE001 - exiting: nothing to do about a child that will not be reaped
            pass


class Stopped(Exception):
    """Training stopped on a signal after saving a checkpoint; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopAtStepBoundary(TrainerCallback):
    """At each step's end: if any rank was asked to stop, every rank saves and stops at this same step."""

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
    """Stop training after optimizer step `step` with a checkpoint there, as a SIGTERM would: a run cut short that
    `--resume_from_checkpoint true` continues (lowering max_steps instead would change the learning-rate schedule)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control
