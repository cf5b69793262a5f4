"""Hub reads at scale: each file's signed storage URL reused until it expires, and resolves paced by
the Hub's own rate-limit headers.

The Hub answers a file's `resolve/` URL with a redirect to a signed storage URL (valid about an
hour) and counts every `resolve/` against a "resolvers" quota per 5 minutes. A process resolves a
file once and reads every range of it from the storage URL until shortly before the URL expires (the
expiry read from the URL: `Expires=` or `X-Amz-Date` + `X-Amz-Expires`); a refused storage URL
(401/403/404/410: expired, keys rotated) is resolved again once. DataLoader workers forked after
the plan inherit the resolutions the plan's footer reads made, and a run's processes share theirs
through a folder of its output (`share_in`), so a file is resolved about once per URL lifetime for
the whole run, however many readers stride through it.

    storage = signed.lookup(resolve_url)        # None: resolve (through the Hub) first
    signed.remember(resolve_url, response.url)  # after a redirected answer
    signed.told(response.headers)               # what the Hub said of its resolvers quota
    signed.pace()                               # before the next resolve: wait if the quota runs low
"""
from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import urllib.parse

from ..paths import atomic_write

log = logging.getLogger("lmstream")

DEFAULT_TTL = 300.0      # seconds a storage URL whose expiry is not in it is reused
EARLY = 0.1              # refresh when this share of a URL's life is left (at most 5 minutes)
REFUSED = (401, 403, 404, 410)   # what a storage host answers an expired or revoked signed URL
RESERVE = 0.1            # pacing starts when less than this share of the quota is left

_LOCK = threading.Lock()
_URLS: dict[str, tuple[str, float]] = {}        # resolve URL -> (storage URL, reuse until)
_QUOTA: dict = {}                               # the last RateLimit the Hub told
_SHARED: dict = {"folder": None}                # where the processes of a run share resolutions


def share_in(folder: str | None) -> None:
    """Share resolutions with every process that shares `folder` (the run's output folder: all its
    ranks, on every node that mounts it; a signed URL works from any host): each file is then
    resolved about once per URL lifetime for the whole run, not once per reader. None: this process
    only."""
    _SHARED["folder"] = folder


def shared_folder() -> str | None:
    return _SHARED["folder"]


def use_table(table: dict) -> dict:
    """Make `table` this process's resolutions (resolve URL -> (storage URL, reuse until)); returns
    the one it replaces (a simulation gives each of its readers its own)."""
    global _URLS
    with _LOCK:
        old, _URLS = _URLS, table
    return old


def _shared_path(url: str) -> str | None:
    folder = _SHARED["folder"]
    if folder is None:
        return None
    return os.path.join(folder, hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")


def expiry(url: str, now: float) -> float | None:
    """The wall-clock time a signed URL expires, from its query (None: it does not say)."""
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    try:
        if "Expires" in q:
            return float(q["Expires"][0])
        if "X-Amz-Date" in q and "X-Amz-Expires" in q:
            signed_at = calendar.timegm(time.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
            return signed_at + float(q["X-Amz-Expires"][0])
    except ValueError:
        return None
    return None


def lookup(url: str) -> str | None:
    """The storage URL `url` resolved to, while it is fresh; None otherwise."""
    with _LOCK:
        entry = _URLS.get(url)
    if entry is None or time.time() >= entry[1]:
        entry = _read_shared(url)
        if entry is None:
            return None
        with _LOCK:
            _URLS[url] = entry
    return entry[0]


def _read_shared(url: str) -> tuple[str, float] | None:
    path = _shared_path(url)
    try:
        with open(path) as f:
            got = json.load(f)
        entry = (str(got["storage"]), float(got["until"]))
    except (TypeError, OSError, ValueError, KeyError):
        return None
    return entry if time.time() < entry[1] else None


def _write_shared(url: str, entry: tuple[str, float]) -> None:
    """Atomically (a temporary file renamed), readable by this user only: a signed URL is a key to
    the file for its lifetime. A folder that cannot be written only means no sharing."""
    path = _shared_path(url)
    if path is None:
        return
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = json.dumps({"storage": entry[0], "until": entry[1]}).encode()
        atomic_write(path, data, mode=0o600, sync=False)


def remember(url: str, storage: str) -> None:
    """Reuse `storage` for `url` until shortly before it expires."""
    now = time.time()
    ends = expiry(storage, now)
    if ends is None:
        ends = now + DEFAULT_TTL
    life = ends - now
    if life <= 0:
        return
    entry = (storage, ends - min(300.0, EARLY * life))
    with _LOCK:
        _URLS[url] = entry
    _write_shared(url, entry)


def forget(url: str) -> None:
    with _LOCK:
        _URLS.pop(url, None)
    path = _shared_path(url)
    if path is not None:
        with contextlib.suppress(OSError):
            os.remove(path)


def forget_all() -> None:
    """Every storage URL and what the Hub told of its quota, forgotten (a new endpoint, a test)."""
    with _LOCK:
        _URLS.clear()
        _QUOTA.clear()


def _field(header: str, name: str) -> float | None:
    for part in header.replace(",", ";").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def told(headers) -> None:
    """Keep what the Hub's `RateLimit` / `RateLimit-Policy` headers say of the resolvers quota."""
    limit = headers.get("RateLimit") if headers is not None else None
    if not limit or "resolvers" not in limit:
        return
    remaining, reset = _field(limit, "r"), _field(limit, "t")
    quota = _field(headers.get("RateLimit-Policy") or "", "q")
    if remaining is None or reset is None:
        return
    with _LOCK:
        _QUOTA.update(remaining=remaining, reset_at=time.monotonic() + reset,
                      quota=quota or _QUOTA.get("quota"))


def pace() -> float:
    """Before a resolve: when less than RESERVE of the quota is left, wait so that what is left lasts
    until the window resets (all of it when none is left). Returns the seconds waited; the first
    wait is logged, with the numbers."""
    with _LOCK:
        if not _QUOTA:
            return 0.0
        remaining, quota = _QUOTA["remaining"], _QUOTA.get("quota") or 0
        left = max(0.0, _QUOTA["reset_at"] - time.monotonic())
        if left <= 0 or remaining > RESERVE * quota:
            return 0.0
        wait = left if remaining <= 0 else left / (remaining + 1)
        _QUOTA["remaining"] = remaining - 1
        first = not _QUOTA.get("pacing")
        _QUOTA["pacing"] = True
    if first:
        log.warning("Hub resolves paced: %d of the %d-per-window quota left for %.0f s; waiting "
                    "%.1f s between resolves until the window resets (RateLimit header)",
                    remaining, quota, left, wait)
    time.sleep(wait)
    return wait


@contextlib.contextmanager
def one_resolver(url: str, wait: float = 10.0, stale: float = 30.0):
    """Around a resolve: one process of the run resolves `url` while the others that need it wait
    for its shared answer (readers stride through a file's row groups in step, so without this every
    reader would meet a new file at the same moment and each resolve it). Yields the storage URL
    another process shared while this one waited, or None: resolve. A lock older than `stale`
    seconds (its holder died) is taken over."""
    path = _shared_path(url)
    if path is None:
        yield None
        return
    lock, deadline = path + ".lock", time.monotonic() + wait
    while True:
        try:
            os.makedirs(os.path.dirname(lock), exist_ok=True)
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            break
        except FileExistsError:
            entry = _read_shared(url)
            if entry is not None:
                with _LOCK:
                    _URLS[url] = entry
                yield entry[0]
                return
            with contextlib.suppress(OSError):
                if time.time() - os.stat(lock).st_mtime > stale:
                    os.remove(lock)
            if time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.02)
        except OSError:   # a folder that cannot be written: no sharing
            yield None
            return
    try:
        entry = _read_shared(url)   # resolved by the process that held the lock just before
        yield entry[0] if entry is not None else None
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
