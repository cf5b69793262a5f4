"""A Hugging Face Hub dataset as shards pinned to one commit, resolved once, in the main process.

    shards = resolve_hub("HuggingFaceFW/fineweb", "CC-MAIN-2024-10", "train", policy)

The repository's `main` is resolved to its commit sha (a HEAD of README.md, not an API call); the
config's `data_files` patterns are read from README.md's YAML at that commit, and only the folders
they name are listed (`/api/datasets/<repo>/tree/<sha>/<folder>`, one request per 1,000 files). Each
shard is then a `resolve/<sha>/<path>` URL with its size and LFS sha256: DataLoader workers read
bytes by URL and make no API call, and the data cannot change under a run. A repository without
`configs:` in its README falls back to `datasets.load_dataset_builder` (retried the same way). Every
Hub call goes through lmstream's retry policy (429, 5xx, timeouts, resets; Retry-After honoured up
to dataset_max_retry_wait); 401/403/404 fail at once with one sentence.
"""
from __future__ import annotations

import logging
import re
import urllib.parse

from ..errors import ConfigError
from . import ranges
from .ranges import RemoteError, client, endpoint
from ..retry import RetryPolicy, Unreadable, is_transient, with_retries
from .cards import config_patterns, matching_files, readme_configs
from .shards import Shard, shard_format

log = logging.getLogger("lmstream")


def resolve_url(repo: str, sha: str, path: str) -> str:
    return f"{endpoint()}/datasets/{repo}/resolve/{sha}/{urllib.parse.quote(path)}"


def _get(url: str, method: str = "GET", follow: bool = True):
    """One request to the Hub (token attached); a status >= 400 raises RemoteError (retry.py reads
    it)."""
    headers = {"Authorization": f"Bearer {ranges.token()}"} if ranges.token() else {}
    r = client().request(method, url, headers=headers, follow_redirects=follow, timeout=60.0)
    if r.status_code >= 400:
        raise RemoteError(f"HTTP {r.status_code} for {url} "
                          f"({r.headers.get('X-Error-Message') or r.text[:200]})",
                          r.status_code, r.headers)
    return r


def _entry_not_found(err: OSError) -> bool:
    """The Hub answered that the repository has no such file."""
    return (getattr(err, "status", None) == 404
            and err.headers.get("X-Error-Code") == "EntryNotFound")


def _hub_error(err: BaseException, repo: str) -> ConfigError | None:
    """One sentence for a permanent Hub error (gated, private, missing), or None."""
    cause = err.cause if isinstance(err, Unreadable) and err.cause is not None else err
    status = getattr(cause, "status", None)
    code = (getattr(cause, "headers", None) or {}).get("X-Error-Code")
    if status in (401, 403):
        return ConfigError(f"Dataset '{repo}' is gated or private on the Hub ({endpoint()}): "
                           "accept its terms on its page and set HF_TOKEN (or run `hf auth login`) "
                           "with a token that has access.")
    if status == 404 and code == "RevisionNotFound":
        return ConfigError(f"Dataset '{repo}' has no such revision on the Hub: check the revision.")
    if status == 404:
        return ConfigError(f"Dataset '{repo}' does not exist on the Hub ({endpoint()}): check "
                           "dataset_name (or pass a local directory, file, glob or URL).")
    return None


# the dataset API requests this process made (listing pages, retries included): the run's
# data_hub_api_calls
API_CALLS = [0]


def call(fn, repo: str, what: str, policy: RetryPolicy):
    """fn() with lmstream's retries; permanent Hub errors become one sentence."""
    try:
        return with_retries(fn, f"{endpoint()}/datasets/{repo}", policy, what)
    except Unreadable as err:
        known = _hub_error(err, repo)
        if known is not None:
            raise known from None
        if err.cause is not None and is_transient(err.cause):
            raise ConfigError(f"The Hub kept failing while trying to {what} dataset '{repo}' "
                              f"({err.cause}): the service may be down or rate-limiting; retry "
                              "later or raise dataset_retry_budget.") from None
        raise ConfigError(f"Could not reach dataset '{repo}' on the Hugging Face Hub "
                          f"({type(err.cause).__name__}: {err.cause}); if you are offline, pass a "
                          "local directory, file, glob or URL as dataset_name.") from None


def _readme(repo: str, policy: RetryPolicy) -> tuple[str, str | None]:
    """(commit sha of main, README.md text or None when the repo has none): resolve/ requests, no
    API call."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"Could not reach dataset '{repo}' on the Hugging Face Hub "
                          "(HF_HUB_OFFLINE is set): pass a local directory, file, glob or URL as "
                          "dataset_name, or unset HF_HUB_OFFLINE.")

    def head():
        try:
            r = _get(resolve_url(repo, "main", "README.md"), "HEAD", follow=False)
        except OSError as err:
            if _entry_not_found(err):
                return err.headers.get("X-Repo-Commit"), False
            raise
        return r.headers.get("X-Repo-Commit"), True
    sha, has_readme = call(head, repo, "resolve", policy)
    if not has_readme:
        return sha, None
    if not sha:
        raise ConfigError(f"The Hub did not name the commit of dataset '{repo}' (no X-Repo-Commit "
                          "header): check HF_ENDPOINT.")
    text = call(lambda: _get(resolve_url(repo, sha, "README.md")).text, repo,
                "download README.md of", policy)
    return sha, text


def _list_folder(repo: str, sha: str, folder: str, recursive: bool,
                 policy: RetryPolicy) -> list[dict]:
    """Entries of one folder at `sha` (the tree API, page by page via the Link header; each page
    retried alone)."""
    url = (f"{endpoint()}/api/datasets/{repo}/tree/{sha}/{urllib.parse.quote(folder, safe='')}"
           f"?recursive={str(recursive).lower()}&expand=false")
    out = []
    while url:
        def page(url=url):
            API_CALLS[0] += 1
            try:
                return _get(url)
            except OSError as err:
                if _entry_not_found(err):
                    return None
                raise
        r = call(page, repo, "list the files of", policy)
        if r is None:
            return out
        out += r.json()
        url = r.links.get("next", {}).get("url")
    return out


def _folder_of(pattern: str) -> tuple[str, bool]:
    """(folder to list, recursive?) for a pattern: the part before its first wildcard."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    folder = head.rsplit("/", 1)[0] if "/" in head else ""
    rest = pattern[len(folder):].lstrip("/")
    return folder, "/" in rest or "**" in rest


class _Entry:
    def __init__(self, d: dict):
        self.path, self.size = d["path"], d.get("size")
        self.etag = (d.get("lfs") or {}).get("oid") or d.get("oid")


def resolve_hub(repo: str, config: str | None, split: str,
                policy: RetryPolicy) -> list[Shard] | None:
    """Shards of a Hub dataset pinned to its current commit; None when its card declares no
    configs."""
    sha, text = _readme(repo, policy)
    configs = readme_configs(text) if text else None
    if configs is None:
        return None
    patterns = config_patterns(configs, config, split, repo)
    listing = {}
    for folder, recursive in sorted({_folder_of(p.lstrip("/")) for p in patterns}):
        listing.update((e["path"], _Entry(e))
                       for e in _list_folder(repo, sha, folder, recursive, policy)
                       if e.get("type") == "file")
    files = [e for e in matching_files(list(listing.values()), patterns) if shard_format(e.path)]
    if not files:
        raise ConfigError(f"No Parquet, JSON Lines or text file of dataset '{repo}' matches "
                          f"{patterns} (config {config}, split {split}): check dataset_config_name "
                          "and the dataset card.")
    log.info("dataset %s: %d file(s) of config %s, split %s, pinned to commit %s", repo, len(files),
             config, split, sha)
    return [Shard(resolve_url(repo, sha, e.path), shard_format(e.path), size=e.size, etag=e.etag,
                  name=f"{repo}@{sha}/{e.path}") for e in files]


def resolve_hf_url(url: str, policy: RetryPolicy) -> list[Shard]:
    """`hf://datasets/<namespace>/<name>[@<rev>]/<path or glob>` as shards pinned to the revision's
    commit: the same requests as a card's config (one revision call, the folder's listing), none in
    the workers."""
    m = re.match(r"^hf://datasets/([^/@]+/[^/@]+)(?:@([^/]+))?/(.+)$", url)
    if not m:
        raise ConfigError(f"'{url}' is not a Hub dataset URL: write "
                          f"hf://datasets/<namespace>/<name>[@<revision>]/<path>.")
    repo, rev, pattern = m.group(1), urllib.parse.unquote(m.group(2) or "main"), m.group(3)
    revision = f"{endpoint()}/api/datasets/{repo}/revision/{urllib.parse.quote(rev, safe='')}"
    sha = rev if re.fullmatch(r"[0-9a-f]{40}", rev) else call(
        lambda: _get(revision).json()["sha"], repo, "resolve", policy)
    folder, recursive = _folder_of(pattern if re.search(r"[*?\[]", pattern)
                                   else pattern.rsplit("/", 1)[0] + "/*")
    listing = [_Entry(e) for e in _list_folder(repo, sha, folder, recursive, policy)
               if e.get("type") == "file"]
    files = [e for e in matching_files(listing, [pattern]) if shard_format(e.path)]
    if not files:
        raise ConfigError(f"No Parquet, JSON Lines or text file of dataset '{repo}' (revision "
                          f"{rev}) matches '{pattern}': check the URL.")
    return [Shard(resolve_url(repo, sha, e.path), shard_format(e.path), size=e.size, etag=e.etag,
                  name=f"{repo}@{sha}/{e.path}") for e in files]


def from_builder_url(url: str) -> Shard:
    """A `datasets` data file `hf://datasets/<repo>@<sha>/<path>` as a pinned resolve URL (no size
    yet)."""
    m = re.match(r"^hf://datasets/(.+?)@([0-9a-f]{40})/(.+)$", url)
    if not m:
        return Shard(url, shard_format(url))
    repo, sha, path = m.groups()
    return Shard(resolve_url(repo, sha, urllib.parse.unquote(path)), shard_format(path),
                 name=f"{repo}@{sha}/{path}")


def pinned_file(name: str | None, url: str) -> tuple[str, str, str] | None:
    """(repository, commit, path) of a shard that names a Hub file at a commit (`repo@sha/path`, as
    resolve_hub and from_builder_url make them), whatever host its URL was made for; else None."""
    m = re.match(r"^(.+?)@([0-9a-f]{40})/(.+)$", name or "")
    if not m or f"/datasets/{m.group(1)}/resolve/{m.group(2)}/" not in url:
        return None
    return m.group(1), m.group(2), m.group(3)


def check_commit(repo: str, sha: str, path: str, policy: RetryPolicy) -> None:
    """One request: the commit a saved plan pins is at the current endpoint (HF_ENDPOINT: a mirror
    or proxy may lack it, or the repository's history was rewritten); else one sentence."""
    def head():
        try:
            return _get(resolve_url(repo, sha, path), "HEAD", follow=False)
        except OSError as err:
            if getattr(err, "status", None) == 404:
                return None
            raise
    if call(head, repo, "check the commit of", policy) is None:
        raise ConfigError(f"Dataset '{repo}' has no commit {sha[:12]} at {endpoint()} (the one "
                          "this checkpoint was trained on): resume through an endpoint "
                          "(HF_ENDPOINT) that has it, or start a new run.")
