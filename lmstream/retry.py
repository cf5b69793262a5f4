"""Retries for remote reads: transient faults (reset, timeout, truncated body, 5xx, 429) are retried
with exponential backoff and jitter, honouring Retry-After; permanent ones (404, 403, not a valid
file) fail at once with one sentence naming the URL.

    table = with_retries(lambda: read_row_group(url, 3), url, policy)

A retried read starts over from its beginning (a Parquet row group, or a line-based file skipping
the rows already delivered), so the stream continues with exactly the next document.
"""
from __future__ import annotations

import errno
import logging
import random
import time
from dataclasses import dataclass

from .errors import ConfigError

log = logging.getLogger("lmstream")
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_PERMANENT_STATUS = {400, 401, 403, 404, 405, 410, 416}
_TRANSIENT_WORDS = ("reset", "timed out", "timeout", "payload", "disconnect", "connection",
                    "broken pipe", "temporarily", "not completed", "truncated", "unexpected end",
                    "eof", "incomplete")


@dataclass
class RetryPolicy:
    max_attempts: int = 30       # tries per read, the first included
    backoff: float = 1.0         # seconds before the first retry; doubles each time
    max_backoff: float = 60.0    # cap on one backoff wait
    read_timeout: float = 60.0   # seconds a remote read may stall before it counts as a fault
    max_wait: float = 120.0      # cap on any one wait, a server's Retry-After included
    # seconds one read keeps retrying (rides out a store outage of that long)
    budget: float = 600.0


class ChangedFile(OSError):
    """A file that is not the version this run began reading (another size, modification time or
    ETag): reading on would train on a mix of two versions, so no retry is made."""

    def __init__(self, message: str, status: int | None = 409, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error's message on one line (a library's may hold several), at most `limit` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Unreadable(ConfigError):
    """A shard that cannot be read (permanently, or after all retries); `cause` is the last
    error."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


def _own_status(e: BaseException) -> int | None:
    status = (getattr(e, "status", None) or getattr(e, "status_code", None)
              or getattr(e, "code", None))
    # botocore's ClientError (s3://): a dict; httpx/requests: a response
    response = getattr(e, "response", None)
    if status is None and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    elif status is None and response is not None:
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None


def _s3_code(e: BaseException) -> str | None:
    response = getattr(e, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def retry_after(err: BaseException) -> float | None:
    """Seconds asked by a Retry-After header, if the error carries one."""
    for e in _chain(err):
        headers = getattr(e, "headers", None)
        response = getattr(e, "response", None)
        if headers is None and response is not None and not isinstance(response, dict):
            headers = getattr(e.response, "headers", None)   # HfHubHTTPError, httpx/requests errors
        value = headers.get("Retry-After") if headers is not None else None
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


# S3 error codes worth a retry, and the errno values s3fs gives them (EBUSY: SlowDown,
# ServiceUnavailable, 503; EREMOTEIO: InternalError, 500) besides connection-level ones
_TRANSIENT_S3 = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
                 "ThrottlingException", "RequestLimitExceeded", "503", "500"}
_TRANSIENT_ERRNO = {errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO), errno.EAGAIN,
                    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
_TRANSIENT_TYPES = ("ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError",
                    "ClientOSError", "ServerTimeoutError", "FSTimeoutError", "IncompleteRead",
                    "ProtocolError", "ReadTimeoutError", "ContentLengthError", "ConnectError",
                    "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "ReadError",
                    "WriteError", "RemoteProtocolError", "NetworkError", "TimeoutException")
_NEVER_TRANSIENT = ("OfflineModeIsEnabled",)   # HF_HUB_OFFLINE=1: no retry can help


def is_transient(err: BaseException) -> bool:
    """True for faults worth retrying: connection trouble, timeouts, truncated bodies, 5xx and 429.

    fsspec reports any failed HTTP HEAD as FileNotFoundError; its cause (a 503, a reset) decides.
    """
    chain = list(_chain(err))
    if any(type(e).__name__ in _NEVER_TRANSIENT for e in chain):
        return False
    if any(type(e).__name__ in _TRANSIENT_TYPES or isinstance(e, (ConnectionError, TimeoutError))
           for e in chain):
        return True
    if any(_s3_code(e) in _TRANSIENT_S3 for e in chain):
        return True
    # s3fs's translation
    if any(type(e) is OSError and e.errno in _TRANSIENT_ERRNO for e in chain):
        return True
    statuses = [s for s in (_own_status(e) for e in chain) if s is not None]
    if any(s in _TRANSIENT_STATUS for s in statuses):
        return True
    if statuses or any(isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError))
                       for e in chain):
        return False
    text = " ".join(str(e).lower() for e in chain)
    return any(w in text for w in _TRANSIENT_WORDS) and "magic bytes" not in text


def on_fault(err: BaseException, url: str, policy: RetryPolicy, attempt: int, what: str,
             stats: dict | None = None, started: float | None = None) -> None:
    """After failed attempt `attempt` (of a read that began at monotonic time `started`): sleep
    before the next one, or raise Unreadable when the fault is permanent or the attempts or the time
    budget are spent."""
    if isinstance(err, Unreadable):
        raise err
    changed = next((e for e in _chain(err) if isinstance(e, ChangedFile)), None)
    if changed is not None:
        raise Unreadable(f"{changed}: stopped rather than train on two versions of one file; "
                         "restore it, or resume from the last checkpoint with "
                         "--dataset_accept_changed_data true to train on the new content.",
                         err) from None
    if not is_transient(err):
        raise Unreadable(f"Could not {what} '{url}': {type(err).__name__}: {one_line(err)}",
                         err) from None
    elapsed = 0.0 if started is None else time.monotonic() - started
    if attempt >= policy.max_attempts or elapsed >= policy.budget:
        raise Unreadable(f"Gave up on '{url}' after {attempt} attempts in {elapsed:.0f} s "
                         f"({what}); last error {type(err).__name__}: {one_line(err)}. Raise "
                         "dataset_max_retries / dataset_retry_budget or check the "
                         "store.", err) from None
    asked = retry_after(err)
    wait = asked if asked is not None else (
        min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))
    wait = min(wait, policy.max_wait, max(0.0, policy.budget - elapsed) + 0.01)
    if stats is not None:
        stats["retries"] = stats.get("retries", 0) + 1
    log.warning("%s %s failed (%s: %s); retry %d/%d in %.1f s%s; %.0f s of its %.0f s retry budget "
                "spent", what, url, type(err).__name__, str(err)[:200], attempt,
                policy.max_attempts - 1, wait,
                f" (Retry-After {asked:g} s)" if asked is not None else "", elapsed, policy.budget)
    time.sleep(wait)


def with_retries(fn, url: str, policy: RetryPolicy, what: str = "read", stats: dict | None = None):
    """fn() retried on transient faults; raises Unreadable with the URL and the last error
    otherwise."""
    attempt, started = 0, time.monotonic()
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - on_fault classifies it
            on_fault(err, url, policy, attempt, what, stats, started)
