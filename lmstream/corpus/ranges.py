"""Byte ranges of remote files: a Parquet footer, or one row group's column chunks, each fetched as
exactly the bytes it spans (one request), never a whole file or a fixed 8 MB block.

    tail, size = fetch_tail(shard, 64 << 10, timeout)           # the footer (and the file size)
    table = read_columns(shard, footer, row_group=3, columns=["text"], timeout=60)

http(s) URLs (the Hub's `resolve` URLs included) are read with httpx: redirects followed (a Hub
token is sent to the Hub's own host only, never to the storage host it redirects to), `206 Partial
Content`, the file size and its version (ETag or Last-Modified; a local file's size and modification
time) checked on every read against the plan and the first read, so a file replaced under the same
name, even while it is being read, is noticed, not mis-read (ChangedFile). s3://, gs://, hf:// go
through fsspec's `cat_file`. Errors carry the HTTP status and headers, for retry.py.
"""
from __future__ import annotations

import os
import re
import threading

from . import signed
from .cache import cached
from .sparse import SparseFile  # noqa: F401 - ranges.SparseFile, as callers name it
from .versions import file_version, same_version

_LOCAL = threading.local()
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class RemoteError(OSError):
    """An HTTP answer other than the bytes asked for; `status` and `headers` tell retry.py what to
    do."""

    def __init__(self, message: str, status: int | None = None, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers


def is_remote(url: str) -> bool:
    return "://" in url


def endpoint() -> str:
    """The Hub's address (HF_ENDPOINT, default https://huggingface.co)."""
    from huggingface_hub import constants
    return constants.ENDPOINT.rstrip("/")


_TOKEN: dict = {}


def token() -> str | None:
    """The Hub token of this process (HF_TOKEN or a stored login), looked up once."""
    if "t" not in _TOKEN:
        from huggingface_hub import get_token
        _TOKEN["t"] = get_token()
    return _TOKEN["t"]


def client():
    """One httpx client per process and thread (a forked DataLoader worker makes its own)."""
    import httpx
    key = os.getpid()
    if getattr(_LOCAL, "pid", None) != key:
        _LOCAL.client = httpx.Client(follow_redirects=True, http2=False)
        _LOCAL.pid = key
    return _LOCAL.client


def _auth_headers(url: str) -> dict:
    """The Hub token for the Hub's own URLs (HF_TOKEN or `hf auth login`); httpx drops it on a
    redirect to another host, so the storage host never sees it."""
    return {"Authorization": f"Bearer {token()}"} if token() and url.startswith(endpoint()) else {}


def _from_storage(url: str, storage: str | None, headers: dict, timeout):
    """The answer of `url`'s signed storage URL, or None when there is none or the storage host
    refuses it (expired or revoked: forgotten, so that it is resolved again, once)."""
    if storage is None:
        return None
    r = client().get(storage, headers=headers, timeout=timeout)
    if r.status_code not in signed.REFUSED:
        return r
    signed.forget(url)
    return None


def get(url: str, headers: dict, timeout, counts: dict | None):
    """GET with `headers`: a Hub file from its signed storage URL while that is fresh, else through
    `resolve/` (paced by the Hub's RateLimit, counted in `counts`, the storage URL it redirects to
    remembered; lmstream.corpus.signed)."""
    if not ("/resolve/" in url and url.startswith(endpoint())):
        return client().get(url, headers={**headers, **_auth_headers(url)}, timeout=timeout)
    r = _from_storage(url, signed.lookup(url), headers, timeout)
    if r is not None:
        return r
    with signed.one_resolver(url) as shared:
        r = _from_storage(url, shared, headers, timeout)   # another process resolved it meanwhile
        if r is not None:
            return r
        signed.pace()
        if counts is not None:
            counts["hub_resolves"] = counts.get("hub_resolves", 0) + 1
        r = client().get(url, headers={**headers, **_auth_headers(url)}, timeout=timeout)
        for answer in (*r.history, r):
            signed.told(answer.headers)
        if r.history and r.status_code < 400:
            signed.remember(url, str(r.url))
    return r


def _http_range(url: str, start: int, end: int | None, size: int | None, timeout: float | None,
                seen: dict | None = None, counts: dict | None = None):
    """Bytes [start, end) of an http(s) URL (end None with start < 0: the last -start bytes); and
    the file size."""
    import httpx
    # bytes=-n: the last n
    spec = f"bytes={start}" if end is None and start < 0 else f"bytes={start}-{end - 1}"
    headers = {"Range": spec, "Accept-Encoding": "identity"}
    t = httpx.Timeout(timeout) if timeout else httpx.Timeout(None)
    r = get(url, headers, t, counts)
    if r.status_code >= 400:
        raise RemoteError(f"HTTP {r.status_code} for {url}", r.status_code, r.headers)
    body = r.content
    if counts is not None and "/resolve/" in url:
        counts["hub_bytes"] = counts.get("hub_bytes", 0) + len(body)
    m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
    total = int(m.group(3)) if m and m.group(3) != "*" else (len(body) if r.status_code == 200
                                                             else None)
    same_version(url, file_version(url, r.headers), seen, total, size)
    if r.status_code == 200:   # the server ignored Range: keep the asked part
        lo = start if start >= 0 else max(0, len(body) + start)
        body = body[lo:end if end is not None else None]
    elif m is None:
        raise RemoteError(f"HTTP {r.status_code} without Content-Range for {url}", r.status_code,
                          r.headers)
    want = (end - start) if end is not None else (min(-start, total) if total is not None else None)
    if want is not None and len(body) != want:
        raise RemoteError(f"short body from {url}: {len(body)} of {want} bytes (truncated)", None,
                          r.headers)
    return body, total


def fetch(url: str, start: int, end: int, size: int | None = None,
          timeout: float | None = None, seen: dict | None = None,
          counts: dict | None = None) -> bytes:
    """Bytes [start, end) of a local path or URL; ChangedFile when the file is not `size` bytes
    or not the version first `seen` (see same_version)."""
    if not is_remote(url):
        with open(url, "rb") as f:
            st = os.fstat(f.fileno())
            same_version(url, file_version(url, st), seen, st.st_size, size)
            f.seek(start)
            return f.read(end - start)
    if url.startswith(("http://", "https://")):
        return _http_range(url, start, end, size, timeout, seen, counts)[0]
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    data = fs.cat_file(path, start=start, end=end)
    if len(data) != end - start:
        raise RemoteError(f"short body from {url}: {len(data)} of {end - start} bytes (truncated)")
    return data


def fetch_tail(url: str, nbytes: int, size: int | None = None,
               timeout: float | None = None) -> tuple[bytes, int]:
    """The last `nbytes` of a file (fewer if it is smaller) and the file's size, in one request
    where possible."""
    if not is_remote(url):
        total = os.path.getsize(url)
        return fetch(url, max(0, total - nbytes), total), total
    if url.startswith(("http://", "https://")):
        if size is not None:
            return _http_range(url, max(0, size - nbytes), size, size, timeout)[0], size
        return _http_range(url, -nbytes, None, None, timeout)
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    total = size if size is not None else fs.size(path)
    return fetch(url, max(0, total - nbytes), total, total, timeout), total


def footer_bytes(url: str, size: int | None, timeout: float | None, first: int = 32 << 10):
    """(ranges holding the whole Parquet footer, file size): one request, a second only for a footer
    over `first`."""
    tail, total = fetch_tail(url, first, size, timeout)
    if len(tail) < 8 or tail[-4:] != b"PAR1":
        raise ValueError(f"'{url}' is not a Parquet file (no PAR1 magic bytes at its end)")
    need = int.from_bytes(tail[-8:-4], "little") + 8
    if need > len(tail):
        if need > total:
            raise ValueError(f"'{url}' has a corrupt Parquet footer (length "
                             f"{need} > file size {total})")
        tail = fetch(url, total - need, total - len(tail), total, timeout) + tail
    return {total - len(tail): tail}, total


def column_ranges(footer, row_group: int, columns: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each column chunk of a row group, from the footer (dictionary page
    included)."""
    rg = footer.row_group(row_group)
    out = []
    for c in columns:
        col = rg.column(c)
        start = col.data_page_offset
        dictionary = col.dictionary_page_offset if col.has_dictionary_page else None
        if dictionary is not None and 0 < dictionary < start:
            start = col.dictionary_page_offset
        out.append((start, start + col.total_compressed_size))
    return out


def read_columns(url: str, size: int, footer, row_group: int, names: list[str],
                 timeout: float | None, seen: dict | None = None, counts: dict | None = None,
                 cache=None, tag: str | None = None):
    """One row group's columns `names`, fetching exactly their column chunks (one request for
    adjacent ones)."""
    import pyarrow.parquet as pq
    schema = footer.schema.to_arrow_schema().names
    spans = sorted(column_ranges(footer, row_group, [schema.index(n) for n in names]))
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    ranges = {a: cached(cache, tag, a, b, lambda a=a, b=b: fetch(url, a, b, size, timeout, seen,
                                                                  counts), counts)
              for a, b in merged}
    f = SparseFile(size, ranges, miss=lambda a, b: fetch(url, a, b, size, timeout, seen, counts))
    return pq.ParquetFile(f, metadata=footer).read_row_group(row_group, columns=names)


SAMPLE_WHOLE = 64 << 20     # files up to this size are hashed whole
SAMPLE_CHUNKS, SAMPLE_CHUNK = 64, 64 << 10


def _sampled_digest(url: str, size: int, timeout: float | None) -> str:
    """blake2b of the size and the bytes: all of them up to 64 MB, else 64 evenly spaced 64 KB
    chunks."""
    import hashlib
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    if size <= SAMPLE_WHOLE:
        spans = [(0, size)]
    else:
        step = (size - SAMPLE_CHUNK) / (SAMPLE_CHUNKS - 1)
        spans = [(int(k * step), int(k * step) + SAMPLE_CHUNK) for k in range(SAMPLE_CHUNKS)]
    for a, b in spans:
        h.update(fetch(url, a, b, size, timeout))
    return h.hexdigest()


def content_digest(shard, policy):
    """(digest, shard with its size) of a non-Parquet shard: the store's content tag (Hub sha256,
    HTTP/S3 ETag) when there is one, else a digest of sampled bytes; the same for a copy of the same
    bytes anywhere."""
    from dataclasses import replace
    from ..retry import with_retries
    if shard.etag:
        return f"etag:{shard.etag}", shard

    def digest():
        if not is_remote(shard.url):
            size = os.path.getsize(shard.url)
            return _sampled_digest(shard.url, size, None), replace(shard, size=size)
        import fsspec
        fs, path = fsspec.core.url_to_fs(shard.url)
        info = fs.info(path)
        size = int(info.get("size") or 0)
        etag = info.get("ETag") or info.get("etag")
        got = replace(shard, size=size, etag=str(etag).strip('"') if etag else None)
        return (f"etag:{got.etag}" if got.etag
                else _sampled_digest(shard.url, size, policy.read_timeout)), got
    return with_retries(digest, shard.url, policy, "fingerprint")
