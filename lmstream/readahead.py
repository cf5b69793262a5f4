"""Read-ahead: the next Parquet row groups of a reader are fetched in background threads, within a
memory budget, so a slow store costs latency once instead of on every row group.

    ahead = ReadAhead(read_fn, sizes, budget_bytes=256 << 20)
    table = ahead.take(k, pieces)     # row group k, fetched earlier if possible; schedules the next ones
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
        self.wait_seconds = 0.0                     # time the consumer waited for a piece

    def take(self, k: int, pieces: list):
        """Piece k's table (read now if it was not fetched ahead); then schedule what follows."""
        fut = self.inflight.pop(k, None)
        self._schedule(k + 1, pieces)
        t0 = time.perf_counter()
        table = fut.result() if fut is not None else self.read(pieces[k])
        self.wait_seconds += time.perf_counter() - t0
        return table

    def _schedule(self, first: int, pieces: list) -> None:
        if self.budget <= 0:
            return
        used = sum(self.size_of(pieces[j]) for j in self.inflight)
        j = first
        while j < len(pieces) and (j in self.inflight or used + self.size_of(pieces[j]) <= self.budget or not self.inflight):
            if j not in self.inflight:
                if not self._readable(pieces[j]):
                    break
                if self.pool is None:
                    self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="lmstream-readahead")
                self.inflight[j] = self.pool.submit(self.read, pieces[j])
                used += self.size_of(pieces[j])
            j += 1

    def _readable(self, piece) -> bool:
        return self.size_of(piece) >= 0

    def close(self) -> None:
        for fut in self.inflight.values():
            fut.cancel()
        self.inflight.clear()
        if self.pool is not None:
            try:
                self.pool.shutdown(wait=False, cancel_futures=True)
            except Exception:  # noqa: BLE001 - at interpreter exit the executor's modules may be gone
                pass
            self.pool = None
