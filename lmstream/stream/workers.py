"""The life of DataLoader workers, tied to the process that starts them (no Trainer needed).

DataLoader workers ignore SIGTERM and SIGINT: their parent decides (it saves the positions a
checkpoint needs) and they exit with it. On Linux the kernel kills a worker whose parent died
without running its exit handlers, and at interpreter exit the workers of an iterator that was never
closed are killed before multiprocessing would wait for them forever.
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401 - its exit handler is registered before ours, so ours runs first
import os
import re
import signal
import sys
import threading

from ..errors import ConfigError
from ..tokens.tokenize import settle

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_signals_in_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: the main process handles SIGTERM/SIGINT (workers exit when it
    does)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if FORKED_BY[0] is not None:
        _die_with_parent(FORKED_BY[0])


# the loader's process id when its main thread forks the workers (they read their copy), or None
FORKED_BY = [None]


def before_fork() -> None:
    """Call right before a loader starts its DataLoader workers: no tokenizer call under way on
    another thread (a child would start holding its locks), and the workers told who forked them."""
    settle()
    main = threading.current_thread() is threading.main_thread()
    FORKED_BY[0] = os.getpid() if main else None


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when its parent process dies. A parent killed without
    running its exit handlers (a notebook kernel killed at shutdown, SIGKILL) would otherwise leave
    workers behind that never exit: at their own exit each waits to flush its last message into a
    pipe no one reads any more (the other workers hold its read end open). The signal follows the
    thread that forked: only a fork by the main thread asks it."""
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
    """Call in the process that starts DataLoader workers. At interpreter exit, multiprocessing
    terminates the daemonic children still alive (SIGTERM, which these workers ignore) and then
    joins them: it would wait forever for the workers of an iterator that was never closed. They are
    killed first (their positions are the parent's business, and it is exiting)."""
    if not _reaper:
        _reaper.append(atexit.register(_kill_daemonic_children))


def _kill_daemonic_children() -> None:
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if not children:
        return
    if threading.current_thread() is threading.main_thread():
        # torch's SIGCHLD handler raises when a worker dies: mid-loop, it would leave the others
        # alive
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        try:
            child.join(5)
        except Exception:  # noqa: BLE001 - exiting: nothing to do about a child that will not be reaped
            pass


def own_message(err: ConfigError) -> ConfigError:
    """An lmstream error re-raised by a DataLoader worker ("Caught Unreadable in DataLoader worker
    process 1. Original Traceback ...") as its own sentence first, the worker named after it."""
    text = str(err)
    m = re.match(r"Caught \w+ in (DataLoader worker process \d+)\.", text)
    if not m:
        return err
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    at = text.rfind(prefix)
    body = text[at + len(prefix):] if at >= 0 else text.strip().splitlines()[-1]
    sentence = " ".join(line.strip() for line in body.strip().splitlines())
    try:
        return type(err)(f"{sentence} (in {m.group(1)})")
    except TypeError:
        return ConfigError(f"{sentence} (in {m.group(1)})")
