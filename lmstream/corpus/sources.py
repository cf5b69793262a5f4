"""Resolve `dataset_name` into shards: files that are read as they stream, never downloaded whole.

    shards = resolve_shards("HuggingFaceFW/fineweb", "CC-MAIN-2024-10", "train")

Accepted, alone or several separated by commas: a hub id; a local dataset repository (README.md
with YAML `configs:`); a local directory, glob or file of Parquet, JSON Lines (plain, .gz, .zst) or
plain text; http(s):// URLs; s3://, gs:// URLs or globs through fsspec; hf://datasets/ URLs or globs
(pinned to a commit, see lmstream.corpus.hub).
"""
from __future__ import annotations

import glob as _glob
import os
import re

from . import cards, hub
from ..config import DataArguments
from ..errors import ConfigError
from ..retry import RetryPolicy, is_transient
from .cache import RangeCache
from .plan import Plan, plan_pieces
from .shards import Shard, shard_format

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_REMOTE = ("http://", "https://", "s3://", "gs://", "gcs://", "hf://")


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _shards_from_files(files: list[str], origin: str) -> list[Shard]:
    known = [f for f in files if shard_format(f)]
    if not known:
        raise ConfigError(f"No Parquet, JSON Lines or text file matches dataset_name '{origin}' "
                          f"(found {len(files)} other file(s)): check the path or pattern.")
    return [Shard(f, shard_format(f)) for f in known]


def _from_builder(name: str, config: str | None, split: str, policy: RetryPolicy) -> list[Shard]:
    """Files of a dataset repository whose card declares no `configs:`, as `datasets` resolves them
    (retried)."""
    import datasets

    local = os.path.isdir(name)

    def build():
        try:
            return datasets.load_dataset_builder(name, config)
        except ValueError as err:   # unknown config: datasets lists the available ones
            if local or not is_transient(err):
                raise ConfigError(f"dataset_config_name '{config}' is not a config of "
                                  f"dataset '{name}': {err}") from None
            raise
    if local:
        try:
            builder = build()
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to read a local repository
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"Could not read dataset_name '{name}' as a dataset repository "
                              f"({why}): check the folder and its README's configs.") from None
    else:
        builder = hub.call(build, name, "resolve", policy)
    files = builder.config.data_files or {}
    if split not in files:
        raise ConfigError(f"Dataset '{name}' (config {config}) has no split '{split}'; its splits "
                          f"are {sorted(files)}: set dataset_train_split/dataset_test_split "
                          "accordingly.")
    _shards_from_files(list(files[split]), name)   # the format check
    return [hub.from_builder_url(str(f)) for f in files[split] if shard_format(str(f))]


def _local_repository(folder: str, config: str | None, split: str,
                      policy: RetryPolicy) -> list[Shard]:
    """A local dataset repository: its card's `configs:` read as the Hub's are (datasets when it has
    none)."""
    configs = cards.local_readme_configs(folder)
    if configs is None:
        return _from_builder(folder, config, split, policy)
    patterns = cards.config_patterns(configs, config, split, folder)

    class _Entry:
        def __init__(self, path):
            self.path = path
    listing = [_Entry(os.path.relpath(os.path.join(r, f), folder).replace(os.sep, "/"))
               for r, _, fs in os.walk(folder) for f in fs]
    files = [os.path.join(folder, e.path) for e in cards.matching_files(listing, patterns)]
    if not files:
        raise ConfigError(f"No file of the dataset repository '{folder}' matches {patterns} "
                          f"(config {config}, split {split}): check dataset_config_name and its "
                          "README.md.")
    return _shards_from_files(files, folder)


def _no_splits(entry: str, split: str) -> None:
    """Plain files, folders, globs and URLs have one split, "train": asking for another is refused,
    never answered with the training files."""
    if split != "train":
        raise ConfigError(f"'{entry}' is a plain file, folder, glob or URL, which has no split "
                          f"'{split}' (only its documents, as split 'train'): to evaluate, hold "
                          "documents out with --dataset_holdout_fraction 0.01, or use a dataset "
                          "repository with that split.")


def _resolve_one(entry: str, config: str | None, split: str, policy: RetryPolicy) -> list[Shard]:
    local_repository = os.path.isdir(entry) and (
        os.path.isfile(os.path.join(entry, "README.md")) or config)
    hub_id = not entry.startswith(_REMOTE) and not os.path.exists(entry) and not _is_glob(entry)
    repository = local_repository or hub_id
    if not repository:
        _no_splits(entry, split)
    # pinned to a commit, read by URL: workers make no API call
    if entry.startswith("hf://datasets/"):
        return hub.resolve_hf_url(entry, policy)
    if entry.startswith(_REMOTE):
        if _is_glob(entry) and not entry.startswith(("http://", "https://")):
            import fsspec
            fs, _, paths = fsspec.get_fs_token_paths(entry)
            proto = entry.split("://", 1)[0]
            files = sorted(f"{proto}://{p}" for p in paths)
            if not files:
                raise ConfigError(f"No file matches dataset_name '{entry}': check the pattern.")
            return _shards_from_files(files, entry)
        if not shard_format(entry):
            raise ConfigError(f"Cannot tell the format of '{entry}': name it .parquet, "
                              f".jsonl[.gz|.zst] or .txt.")
        return [Shard(entry, shard_format(entry))]
    if os.path.isdir(entry):
        if os.path.isfile(os.path.join(entry, "README.md")) or config:
            return _local_repository(entry, config, split, policy)
        return _shards_from_files(_files_under(entry), entry)
    if _is_glob(entry):
        files = _each_once(sorted(f for f in _glob.glob(entry, recursive=True) if os.path.isfile(f)))
        if not files:
            raise ConfigError(f"No file matches dataset_name '{entry}': check the pattern.")
        return _shards_from_files(files, entry)
    if os.path.isfile(entry):
        return _shards_from_files([entry], entry)
    if not _HUB_ID.match(entry):
        raise ConfigError(f"dataset_name '{entry}' does not exist: check the path (or give a Hub "
                          "id).")
    # a hub id
    return (hub.resolve_hub(entry, config, split, policy)
            or _from_builder(entry, config, split, policy))


def _files_under(folder: str) -> list[str]:
    """Every file under `folder`, sorted, hidden ones (.name) left out as a glob leaves them: links
    to folders are followed, but a folder reached again (a link back into the tree) is not read
    twice."""
    seen, files = set(), []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if os.path.realpath(root) in seen:
            dirs[:] = []
            continue
        seen.add(os.path.realpath(root))
        files += [os.path.join(root, n) for n in names
                  if not n.startswith(".") and os.path.isfile(os.path.join(root, n))]
    return _each_once(sorted(files))


def _each_once(files: list[str]) -> list[str]:
    """Files in order, each once by what it is (links to one file are one file)."""
    seen, out = set(), []
    for f in files:
        if os.path.realpath(f) not in seen:
            seen.add(os.path.realpath(f))
            out.append(f)
    return out


def resolve_shards(dataset_name: str | None, config: str | None = None, split: str = "train",
                   policy: RetryPolicy | None = None) -> list[Shard]:
    """All shards of `dataset_name` (comma-separated entries, in the order given)."""
    if not dataset_name or not dataset_name.strip():
        raise ConfigError("dataset_name is empty: pass a hub id, a local path or glob, or a URL.")
    shards: list[Shard] = []
    for entry in (e.strip() for e in dataset_name.split(",")):
        if entry:
            shards.extend(_resolve_one(os.path.expanduser(entry), config, split,
                                       policy or RetryPolicy()))
    return shards


def open_binary(url: str, block_size: int = 8 << 20, timeout: float | None = None):
    """A seekable binary file object for a local path or an fsspec URL (read with Range requests).

    `timeout` bounds a stalled HTTP connection (seconds), so that a stall becomes a retryable fault.
    """
    if not url.startswith(_REMOTE) and "://" not in url:
        return open(url, "rb")
    import fsspec
    options = {}
    if url.startswith(("http://", "https://")) and timeout:
        import aiohttp
        client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        options["client_kwargs"] = {"timeout": client_timeout}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs.open(path, "rb", block_size=block_size)


def plan_dataset(args: DataArguments, split: str | None = None) -> Plan:
    """Resolve `dataset_name` and list the pieces of the split (default dataset_train_split)."""
    policy = args.retry_policy()
    shards = resolve_shards(args.dataset_name, args.dataset_config_name,
                            split or args.dataset_train_split, policy)
    cache = (RangeCache(args.dataset_cache_dir, args.dataset_cache_size)
             if args.dataset_cache_dir else None)
    plan = plan_pieces(shards, args.dataset_text_field, policy, args.dataset_skip_bad_shards,
                       cache=cache)
    plan.source = plan_source(args, split)
    return plan


def plan_source(args: DataArguments, split: str | None = None) -> dict:
    """What a plan was made from: a saved plan serves a resume only when these are the same."""
    return {"dataset_name": args.dataset_name, "config": args.dataset_config_name,
            "split": split or args.dataset_train_split, "text_field": args.dataset_text_field}
