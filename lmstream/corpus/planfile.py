"""What a run reads, pinned: the plan (shards, sizes, content digests, Parquet footers) as a file,
its fingerprint, a check that the data has not changed since, and one plan shared by every rank.

    plan = shared_plan(lambda: plan_dataset(args))        # rank 0 plans, the others receive it
    # plan.json.gz (hard-linked between checkpoints)
    save(plan, "out/checkpoint-100/lmstream_data")
    plan = load("out/checkpoint-100/lmstream_data")        # no listing, no footer read
    # [(file, what changed)]: [] when it is the same data
    changed(plan, policy)

The fingerprint is content, not names: each file's size and digest (the Parquet footer's bytes, the
Hub's LFS sha256, an HTTP/S3 ETag, or sampled bytes), under its name within the dataset (Hub:
repo@commit/path; else the file name). A copy of the same bytes on another node has the same
fingerprint; rewritten data has another.
"""
from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import time
import urllib.parse

from . import ranges
from ..errors import ConfigError
from ..paths import atomic_write
from .plan import Plan, assemble_plan, read_footer
from .hub import check_commit, pinned_file, resolve_url
from .shards import Shard

log = logging.getLogger("lmstream")
PLAN_FILE = "plan.json.gz"
PLAN_VERSION = 1


def shard_name(shard: Shard) -> str:
    return shard.name or os.path.basename(shard.url.split("?", 1)[0])


def fingerprint(plan: Plan) -> str:
    """16 hex digits over every file's name within the dataset, size and content digest."""
    rows = [[shard_name(s), s.size, plan.digests.get(i)] for i, s in enumerate(plan.shards)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def to_dict(plan: Plan) -> dict:
    shards = []
    for i, s in enumerate(plan.shards):
        raw = plan.raw_footers.get(i)
        shards.append({"url": s.url, "format": s.format, "size": s.size, "etag": s.etag,
                       "name": s.name, "digest": plan.digests.get(i),
                       "footer": base64.b64encode(raw).decode() if raw else None})
    return {"version": PLAN_VERSION, "fingerprint": fingerprint(plan), "source": plan.source,
            "shards": shards, "skipped": plan.skipped}


def from_dict(d: dict, where: str = "the saved plan") -> Plan:
    import pyarrow.parquet as pq
    if (not isinstance(d, dict) or d.get("version") != PLAN_VERSION
            or not isinstance(d.get("shards"), list)):
        raise ConfigError(f"{where} is not an lmstream plan of version {PLAN_VERSION}: "
                          f"delete it to plan anew.")
    kept = []
    for e in d["shards"]:
        url, pinned = e["url"], pinned_file(e.get("name"), e["url"])
        if pinned is not None:   # a Hub file is its repository, commit and path: today's endpoint
            url = resolve_url(*pinned[:2], urllib.parse.unquote(pinned[2]))
        shard = Shard(url, e["format"], e.get("size"), e.get("etag"), e.get("name"))
        if e.get("footer"):
            raw = base64.b64decode(e["footer"])
            # pyarrow reads a 64 KB tail: the bytes before the footer are never parsed, zeros stand
            # for them
            tail = ranges.SparseFile(shard.size, {shard.size - len(raw): raw}, miss=lambda a,
                                     b: bytes(b - a))
            meta = pq.ParquetFile(tail).metadata
            kept.append((shard, (meta, raw, shard)))
        else:
            kept.append((shard, (e.get("digest"), shard)))
    plan = assemble_plan(kept, list(d.get("skipped") or []), {"retries": 0})
    plan.source = dict(d.get("source") or {})
    if fingerprint(plan) != d.get("fingerprint"):
        raise ConfigError(f"{where} is corrupt (its fingerprint does not match its content): "
                          f"delete it to plan anew.")
    return plan


def save(plan: Plan, folder: str, cache_dir: str | None = None) -> str:
    """Write the plan into `folder` (atomically); with `cache_dir`, written once there and
    hard-linked."""
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, PLAN_FILE)
    fp = fingerprint(plan)
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        cached = os.path.join(cache_dir, f"plan-{fp}.json.gz")
        if not os.path.isfile(cached):
            atomic_write(cached, gzip.compress(json.dumps(to_dict(plan)).encode(), mtime=0))
        tmp = f"{target}.tmp-{os.getpid()}"
        try:
            os.link(cached, tmp)
        except OSError:   # no hard links here: a copy
            with open(cached, "rb") as f:
                atomic_write(tmp, f.read())
        os.replace(tmp, target)
        return target
    atomic_write(target, gzip.compress(json.dumps(to_dict(plan)).encode(), mtime=0))
    return target


def load(folder: str) -> Plan | None:
    """The plan saved in `folder`, or None if it holds none (a checkpoint of an older lmstream)."""
    path = os.path.join(folder, PLAN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with gzip.open(path) as f:
            d = json.load(f)
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(f"The data plan '{path}' is unreadable ({err}): delete it to "
                          f"plan anew from the data.") from None
    return from_dict(d, f"The data plan '{path}'")


def changed(plan: Plan, policy) -> list[tuple[str, str]]:
    """Files of `plan` whose content is not what it was: [(file, what changed)].

    Hub files are pinned to a commit (immutable): one request per commit checks that the current
    endpoint has it. Others are measured again: a local file's size and footer (or sampled bytes), a
    remote one's size and footer (or ETag). All of it within one retry budget, not one per file."""
    out, commits, deadline = [], set(), time.monotonic() + policy.budget
    for i, s in enumerate(plan.shards):
        left = dataclasses.replace(policy, budget=max(0.0, deadline - time.monotonic()))
        pinned = pinned_file(s.name, s.url)
        if pinned is not None:
            if pinned[:2] not in commits:
                commits.add(pinned[:2])
                check_commit(*pinned[:2], urllib.parse.unquote(pinned[2]), left)
            continue
        try:
            if s.format == "parquet":
                _, raw, now = read_footer(Shard(s.url, s.format), "", left, {}, check_field=False)
                digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
            else:
                digest, now = ranges.content_digest(Shard(s.url, s.format), left)
        except (ConfigError, OSError) as err:
            out.append((s.url, f"cannot be read any more ({err})"))
            continue
        if now.size != s.size:
            out.append((s.url, f"size {s.size} -> {now.size} bytes"))
        elif digest != plan.digests.get(i):
            out.append((s.url, "same size, other content"))
    return out


def _rank0_then_broadcast(fn, encode, decode):
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return fn()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box = [encode(fn())]
        except ConfigError as err:
            dist.broadcast_object_list([{"error": str(err)}], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], dict) and "error" in box[0]:
        raise ConfigError(box[0]["error"])
    return decode(box[0])


def shared_plan_check(check) -> list:
    """check() on rank 0 only, its answer sent to every rank."""
    return _rank0_then_broadcast(check, lambda x: {"changes": x},
                                 lambda d: [tuple(c) for c in d["changes"]])


def shared_plan(build) -> Plan:
    """build() on rank 0 only, its plan sent to every rank (torch.distributed, when a process group
    is up)."""
    return _rank0_then_broadcast(build, to_dict, lambda d: from_dict(d, "the plan sent by rank 0"))
