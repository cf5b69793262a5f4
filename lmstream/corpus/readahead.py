"""Read-ahead: the next Parquet row groups of a reader are fetched in background threads, within a
memory budget, so a slow store costs latency once instead of on every row group.

    ahead = ReadAhead(read_fn, sizes, budget_bytes=256 << 20)
    # row group k, fetched earlier if possible; schedules the next ones
    table = ahead.take(k, pieces)
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor


class ReadAhead:
    """Keeps up to `budget_bytes` (uncompressed, from the footers) of upcoming pieces in flight."""

    def __init__(self, read, size_of, budget_bytes: int, threads: int = 2):
        self.read, self.size_of = read, size_of     # read(piece) -> table; size_of(piece) -> bytes
        self.budget = budget_bytes
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None
        self.inflight: dict[int, Future] = {}
        # the in-flight pieces' sizes, and their sum: the budget used
        self.sizes: dict[int, int] = {}
        self.used = 0
        self.wait_seconds = 0.0                     # time the consumer waited for a piece

    def take(self, k: int, pieces: list):
        """Piece k's table (read now if it was not fetched ahead); then schedule what follows."""
        fut = None
        # in flight in increasing order: k, and any the reader moved past without taking
        while self.inflight:
            j = next(iter(self.inflight))
            if j > k:
                break
            f = self.inflight.pop(j)
            self.used -= self.sizes.pop(j)
            if j == k:
                fut = f
            else:
                f.cancel()
        self._schedule(k + 1, pieces)
        t0 = time.perf_counter()
        table = fut.result() if fut is not None else self.read(pieces[k])
        self.wait_seconds += time.perf_counter() - t0
        return table

    def _schedule(self, first: int, pieces: list) -> None:
        """Fetch pieces from `first` on while the budget allows (the first one always). The sizes in
        flight are kept and their sum updated, not asked again: a stream of many small pieces keeps
        thousands in flight, and `take` runs once per piece."""
        if self.budget <= 0:
            return
        j = max(first, next(reversed(self.inflight)) + 1) if self.inflight else first
        while j < len(pieces):
            size = self.size_of(pieces[j])
            if size < 0 or (self.inflight and self.used + size > self.budget):
                break   # not a piece that can be read ahead, or over the budget
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.threads,
                                               thread_name_prefix="lmstream-readahead")
            self.inflight[j], self.sizes[j] = self.pool.submit(self.read, pieces[j]), size
            self.used += size
            j += 1

    def close(self) -> None:
        for fut in self.inflight.values():
            fut.cancel()
        self.inflight.clear()
        self.sizes.clear()
        self.used = 0
        if self.pool is not None:
            try:
                self.pool.shutdown(wait=False, cancel_futures=True)
            except Exception:  # noqa: BLE001 - at interpreter exit the executor's modules may be gone
                pass
            self.pool = None
