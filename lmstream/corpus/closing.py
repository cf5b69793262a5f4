"""Generators that read data are closed at interpreter exit, while the modules they use are whole.

A stream iterated part-way leaves its row generators paused inside `try` blocks. Left to the garbage
collector at the very end of the interpreter, such a generator evaluates its `except` clauses and
`finally` blocks against module names already cleared, and Python prints an "Exception ignored in:
<generator ...>" traceback after the user's own output. Closing them from an atexit handler runs
those clauses while everything is there.
"""
from __future__ import annotations

import atexit
import contextlib
import weakref

_OPEN: weakref.WeakSet = weakref.WeakSet()


def close_at_exit(generator):
    """`generator`, to be closed at interpreter exit if it is still open then; returns it."""
    _OPEN.add(generator)
    return generator


@atexit.register
def _close_open() -> None:
    for generator in list(_OPEN):
        with contextlib.suppress(ValueError, RuntimeError):   # one still running on another thread
            generator.close()
