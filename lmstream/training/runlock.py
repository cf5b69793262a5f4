"""One run per output folder: a lock file (host, pid, start time) taken before the run writes
anything.

    with output_lock("out"):      # a second run into "out" is refused, naming the holder
        train(...)

A lock left by a process that is gone (same host, pid not alive: a run killed with SIGKILL) is taken
over with a warning; a lock held from another host is refused (its liveness cannot be checked from
here): the sentence says which host and how to release it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

from ..errors import ConfigError

log = logging.getLogger("lmstream")
LOCK = os.path.join(".lmstream", "run.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None   # half-written or unreadable: treated as stale


@contextlib.contextmanager
def output_lock(output_dir: str):
    """Hold output_dir's run lock for the `with` block (on rank 0 only: call it from the main
    process)."""
    path = os.path.join(output_dir, LOCK)
    # the folders this lock makes go again with it when the run left nothing in them (a refused
    # start writes nothing)
    made = [d for d in (os.path.dirname(path), output_dir) if not os.path.exists(d)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _holder(path)
            if (held and held.get("host") == me["host"] and _alive(int(held.get("pid", -1)))
                    and held["pid"] != me["pid"]):
                raise ConfigError(f"output_dir '{output_dir}' is in use by another run (pid "
                                  f"{held['pid']} on this host, started {held.get('started')}): "
                                  "wait for it, or choose another output_dir.") from None
            if held and held.get("host") != me["host"]:
                raise ConfigError(f"output_dir '{output_dir}' is in use by a run on host "
                                  f"{held.get('host')} (pid {held.get('pid')}, started "
                                  f"{held.get('started')}): if that run is gone, delete "
                                  f"{path}.") from None
            log.warning("output_dir %s: taking over the lock of a run that is gone (%s)",
                        output_dir, held)
            os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if (_holder(path) or {}).get("pid") == me["pid"]:
            os.remove(path)
        for folder in made:
            with contextlib.suppress(OSError):   # not empty: the run wrote there
                os.rmdir(folder)
