"""Line-based shards (JSON Lines, plain text; optionally .gz/.zst/.bz2/.xz compressed) as rows of
text.

    for text, invalid_utf8 in json_texts(lines(url), url, "text"): ...
"""
from __future__ import annotations

import itertools
import json
import os
import time

from ..config import DataArguments
from ..errors import ConfigError
from ..retry import ChangedFile, RetryPolicy, Unreadable, on_fault
from .ranges import is_remote
from .shards import Shard
from .versions import file_version, same_version
from .sources import open_binary


def lines(url: str, timeout: float | None = None, size: int | None = None,
          seen: dict | None = None):
    """Binary lines of a (possibly .gz/.zst/.bz2/.xz compressed) file, streamed. The file's version
    is checked when it is opened and again at its end (ranges.same_version against `size`, the
    plan's, and `seen`): a file that changed while it was read raises ChangedFile, never yields a
    mix of two versions in silence."""
    from fsspec.compression import compr
    from fsspec.utils import infer_compression
    comp = "zstd" if url.endswith(".zst") else infer_compression(url)
    with open_binary(url, timeout=timeout) as raw:
        _check_version(url, raw, size, seen, opened=True)
        if comp is None:
            yield from raw
        elif comp == "zstd":
            yield from _zstd_lines(raw)
        else:
            with compr[comp](raw, mode="rb") as f:
                yield from f
        _check_version(url, raw, size, seen, opened=False)


def _check_version(url: str, raw, size: int | None, seen: dict | None, opened: bool) -> None:
    """ChangedFile if `url` is not the version of the plan and of the first read: a local file's
    stat, an fsspec file's details when it was opened and the store's answer at the end."""
    if size is None and seen is None:
        return
    if url.startswith("hf://") or "/resolve/" in url:
        return   # a Hub file at a commit cannot change (and asking would spend the Hub's quota)
    if not is_remote(url):
        info = os.fstat(raw.fileno()) if opened and raw is not None else os.stat(url)
        now = info.st_size
    else:
        info = getattr(raw, "details", None) if opened else None
        if info is None:
            import fsspec
            fs, path = fsspec.core.url_to_fs(url)
            info = fs.info(path)
        now = info.get("size")
    same_version(url, file_version(url, info), seen, now, size)


def _zstd_lines(raw, chunk_bytes: int = 1 << 20):
    """Lines of a Zstandard stream of one or more frames. A stream cut inside a frame raises
    EOFError as gzip does (zstandard's stream reader returns what it decoded and stops, in
    silence: a cut file would have lost its tail unnoticed)."""
    import zstandard
    new = zstandard.ZstdDecompressor().decompressobj
    d, fed, rest = new(), False, b""
    for chunk in iter(lambda: raw.read(chunk_bytes), b""):
        while chunk:
            if d.eof:    # the next frame
                d, fed = new(), False
            rest += d.decompress(chunk)
            fed = True
            chunk = d.unused_data if d.eof else b""
            *done, rest = rest.split(b"\n")
            yield from (line + b"\n" for line in done)
    if fed and not d.eof:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
    if rest:
        yield rest


def decode(line: bytes) -> tuple[str, bool]:
    try:
        return line.decode("utf-8"), False
    except UnicodeDecodeError:
        return line.decode("utf-8", "replace"), True


def json_texts(lines, url: str, field: str):
    for n, line in enumerate(lines, 1):
        text, bad = decode(line)
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"Line {n} of '{url}' is not valid JSON ({err}): "
                              f"fix or remove the shard.") from None
        if not isinstance(row, dict) or field not in row:
            cols = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise ConfigError(f"Line {n} of '{url}' has no field '{field}' (fields: {cols}): "
                              "set dataset_text_field to one of them.")
        value = row[field]
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"Line {n} of '{url}': field '{field}' holds {type(value).__name__}, "
                              "not text: set dataset_text_field to a string field.")
        if value is not None and ("\\ud" in text or "\\uD" in text):
            value, lone = _without_lone_surrogates(value)
            bad = bad or lone
        yield value, bad


def _without_lone_surrogates(text: str) -> tuple[str, bool]:
    """JSON may escape half of a UTF-16 pair (\\ud800) alone: no UTF-8 text holds it. Replaced by
    U+FFFD and counted as invalid UTF-8, as undecodable bytes are."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:   # through UTF-16, where a lone half decodes to U+FFFD
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), True


def text_samples(lines, sample_by: str):
    if sample_by == "line":
        for line in lines:
            yield decode(line.rstrip(b"\r\n"))
        return
    buf: list[bytes] = []
    for line in lines:
        if sample_by == "paragraph" and not line.strip():
            if buf:
                yield decode(b"".join(buf))
            buf = []
            continue
        buf.append(line)
    if buf:
        yield decode(b"".join(buf))


def line_rows(shard: Shard, skip: int, args: DataArguments, policy: RetryPolicy, stats: dict,
              seen: dict | None = None):
    """(text, invalid_utf8) of each row of a JSON Lines or text shard from row `skip` on; after a
    transient fault the file is opened again and what was delivered skipped (compressed streams
    cannot seek)."""
    delivered, attempt, started = skip, 0, time.monotonic()
    while True:
        attempt += 1
        try:
            for row in itertools.islice(_parsed(shard, args, policy, seen), delivered, None):
                delivered += 1
                yield row
            return
        except Exception as err:  # noqa: BLE001 - on_fault retries transient faults, reports the rest
            if not isinstance(err, (Unreadable, ChangedFile)):
                # bad content (not JSON, a damaged stream), unless the file changed under the reader
                try:
                    _check_version(shard.url, None, shard.size, seen, opened=False)
                except ChangedFile as changed:
                    err = changed
                except Exception:  # noqa: BLE001 - the check is a courtesy: the first error stands
                    pass
            if isinstance(err, ConfigError) and not isinstance(err, Unreadable):
                raise        # bad content: no retry helps
            on_fault(err, shard.url, policy, attempt, "read", stats, started)


def _parsed(shard: Shard, args: DataArguments, policy: RetryPolicy, seen: dict | None = None):
    raw = lines(shard.url, policy.read_timeout, shard.size, seen)
    if shard.format == "json":
        return json_texts(raw, shard.url, args.dataset_text_field)
    return text_samples(raw, args.dataset_text_sample_by)
