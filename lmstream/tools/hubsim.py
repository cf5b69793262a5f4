"""A run's Hub reads simulated at any scale on one machine: thousands of readers stepping through
their real piece lists (lmstream.corpus.documents deals them) on a virtual clock, each row-group
read going through the real `ranges.get` (signed-URL reuse, single-flight, pacing by the RateLimit
headers) against a simulated Hub that keeps a resolvers quota, answers 429 past it, and signs
storage URLs that expire.

    python -m lmstream.tools.hubsim --gpus 512 --files 600 --groups_per_file 1500 --minutes 120

The run's shared resolutions (`signed.share_in`: one folder for all processes) are modelled as one
table; "reader" gives each reader its own table (no sharing), "none" forgets every URL before each
read (how reads went before signed URLs were reused).
"""
from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import sys
import time as _time

import numpy as np

from ..corpus import ranges, signed
from ..corpus.plan import Piece, Plan
from ..corpus.shards import Shard
from .hubplan import WINDOW


@dataclasses.dataclass
class SimShape:
    """A run's shape and the Hub's terms, for `python -m lmstream.tools.hubsim`."""
    gpus: int = dataclasses.field(default=512, metadata={"help": "GPUs of the run."})
    workers: int = dataclasses.field(default=8, metadata={"help": "DataLoader workers per GPU."})
    tokens_per_second: float = dataclasses.field(default=120_000.0, metadata={
        "help": "Tokens a GPU trains on per second."})
    files: int = dataclasses.field(default=600, metadata={"help": "Files of the dataset."})
    groups_per_file: int = dataclasses.field(default=1500, metadata={"help": "Row groups a file."})
    tokens_per_group: float = dataclasses.field(default=700_000.0, metadata={
        "help": "Tokens a row group holds."})
    minutes: float = dataclasses.field(default=120.0, metadata={"help": "Minutes simulated."})
    quota: int = dataclasses.field(default=3000, metadata={
        "help": "The Hub's resolvers quota per 5 minutes (3,000 anonymous)."})
    url_lifetime: float = dataclasses.field(default=3600.0, metadata={
        "help": "Seconds a signed storage URL is valid."})
    jitter: float = dataclasses.field(default=0.3, metadata={
        "help": "Spread (lognormal sigma) of the time a reader spends on a row group."})
    sharing: str = dataclasses.field(default="run", metadata={
        "help": "run (lmstream), reader (each reader its own URLs) or none (one resolve a read)."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the data order."})


class Clock:
    """Virtual time for lmstream.corpus.signed; a sleep delays the reader being served."""

    def __init__(self):
        self.now, self.slept = 1.7e9, 0.0

    def time(self):
        return self.now

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept += seconds

    def __getattr__(self, name):       # strptime and the rest: the real module's
        return getattr(_time, name)


@dataclasses.dataclass
class Answer:
    status_code: int
    url: str
    headers: dict
    history: list = dataclasses.field(default_factory=list)


class SimHub:
    """The Hub's resolve/ and its storage host, as `ranges.client()` is asked for them."""

    def __init__(self, clock: Clock, quota: int, lifetime: float):
        self.clock, self.quota, self.lifetime = clock, quota, lifetime
        self.used: dict[int, int] = {}           # window number -> resolves asked in it
        self.refused = self.storage = 0
        self.files: set[str] = set()             # files resolved at least once

    def get(self, url, headers=None, timeout=None):
        now = self.clock.now
        if "/resolve/" not in url:
            self.storage += 1
            expires = float(url.rsplit("Expires=", 1)[1])
            return Answer(403 if now >= expires else 206, url, {})
        w = int(now // WINDOW)
        n = self.used[w] = self.used.get(w, 0) + 1
        reset = (w + 1) * WINDOW - now
        limit = {"RateLimit": f'"resolvers";r={max(0, self.quota - n)};t={math.ceil(reset)}',
                 "RateLimit-Policy": f'"fixed window";"resolvers";q={self.quota};w={int(WINDOW)}'}
        if n > self.quota:
            self.refused += 1
            return Answer(429, url, {**limit, "Retry-After": str(math.ceil(reset))})
        self.files.add(url)
        storage = url.replace("/resolve/", "/storage/") + f"?Expires={int(now + self.lifetime)}"
        return Answer(206, storage, {}, [Answer(302, url, limit)])


def fineweb_like(shape: SimShape) -> Plan:
    """A plan of `files` Parquet files of `groups_per_file` row groups at a Hub-style address."""
    base = ranges.endpoint() + "/datasets/sim/data/resolve/0123456789abcdef"
    shards = [Shard(f"{base}/{i:05d}.parquet", "parquet", 2 << 30) for i in range(shape.files)]
    pieces = [Piece(i, g, 1000) for i in range(shape.files) for g in range(shape.groups_per_file)]
    return Plan(shards, pieces, {})


def dealt(plan: Plan, readers: int, seed: int) -> list[list[str]]:
    """Each reader's row groups in order, as lmstream.corpus.documents deals them (the URLs of
    their files)."""
    from ..config import DataArguments
    from ..corpus.documents import DocumentStream
    order = DocumentStream(plan, DataArguments(), seed, 0, 1).slot_pieces(0)
    urls = [plan.shards[p.shard].url for p in order]
    return [urls[k::readers] for k in range(readers)]


@contextlib.contextmanager
def simulated(clock: Clock, hub: SimHub):
    saved = (signed.time, ranges.client, signed.use_table({}), signed.shared_folder())
    signed.forget_all()
    signed.time, ranges.client = clock, (lambda: hub)
    signed.share_in(None)
    try:
        yield
    finally:
        signed.time, ranges.client = saved[:2]
        signed.use_table(saved[2])
        signed.share_in(saved[3])
        signed.forget_all()


def simulate(plan: Plan, shape: SimShape) -> dict:
    """Readers step through their row groups on a virtual clock, each read through `ranges.get`;
    returns the resolves per 5-minute window, the 429s, the seconds paced and the reads."""
    readers = shape.gpus * shape.workers
    lists = dealt(plan, readers, shape.seed)
    per_group = shape.tokens_per_group / (shape.tokens_per_second / shape.workers)
    rng = np.random.default_rng(shape.seed)
    clock, counts = Clock(), {}
    hub = SimHub(clock, shape.quota, shape.url_lifetime)
    start, end = clock.now, clock.now + shape.minutes * 60
    own = [{} for _ in range(readers)] if shape.sharing == "reader" else None
    heap = [(start + per_group * rng.random(), k, 0) for k in range(readers)]
    heapq.heapify(heap)
    reads = failed = 0
    with simulated(clock, hub):
        while heap and heap[0][0] < end:
            t, k, i = heapq.heappop(heap)
            if i >= len(lists[k]):
                continue
            clock.now, clock.slept = t, 0.0
            if own is not None:
                signed.use_table(own[k])
            elif shape.sharing == "none":
                signed.forget_all()
            r = ranges.get(lists[k][i], {}, None, counts)
            reads, failed = reads + 1, failed + (r.status_code >= 400)
            # a refused read is retried by the reader's policy (lmstream.retry) after the wait
            nxt = (t + clock.slept + (float(r.headers.get("Retry-After", 1)) if r.status_code >= 400
                   else per_group * rng.lognormal(0.0, shape.jitter)), k, i + (r.status_code < 400))
            heapq.heappush(heap, nxt)
    windows = [hub.used.get(w, 0) for w in range(int(start // WINDOW), int(end // WINDOW) + 1)]
    return {"readers": readers, "reads": reads, "failed_reads": failed, "resolves": sum(windows),
            "max_per_window": max(windows), "refused_429": hub.refused,
            "storage_requests": hub.storage, "files_resolved": len(hub.files), "windows": windows}


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser
    (shape,) = HfArgumentParser((SimShape,), prog="python -m lmstream.tools.hubsim"
                                ).parse_args_into_dataclasses(argv)
    got = simulate(fineweb_like(shape), shape)
    print(f"{got['readers']:,} readers, {shape.minutes:g} min simulated, sharing={shape.sharing}: "
          f"{got['reads']:,} row-group reads, {got['resolves']:,} resolves "
          f"(at most {got['max_per_window']:,} in a 5-minute window, quota {shape.quota:,}), "
          f"{got['refused_429']:,} answered 429, {got['failed_reads']:,} reads failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
