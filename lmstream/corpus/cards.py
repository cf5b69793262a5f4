"""A dataset card's `configs:`: which files make a config's split, read from the YAML header of
README.md as `datasets` reads it, for a Hub repository (lmstream.corpus.hub) and a local one.

    configs = readme_configs(open("README.md").read())       # None without `configs:`
    patterns = config_patterns(configs, "CC-MAIN-2024-10", "train", "HuggingFaceFW/fineweb")
    files = matching_files(listing, patterns)                # entries with a .path, in order
"""
from __future__ import annotations

import fnmatch
import os
import re

from ..errors import ConfigError


def readme_configs(text: str) -> list[dict] | None:
    """The `configs:` list of a dataset card's YAML header, or None."""
    import yaml
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"The dataset card's YAML header is invalid "
                          f"({str(err).splitlines()[0]}): fix README.md.") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return configs if isinstance(configs, list) and configs else None


def config_patterns(configs: list[dict], config: str | None, split: str, name: str) -> list[str]:
    """The data_files patterns of `config`'s `split`, as `datasets` reads a card's `configs:`."""
    names = [c.get("config_name", "default") for c in configs]
    if config is None:
        chosen = ([c for c in configs if c.get("default")]
                  or [c for c in configs if c.get("config_name", "default") == "default"])
        if not chosen and len(configs) == 1:
            chosen = configs
        if not chosen:
            raise ConfigError(f"Dataset '{name}' has several configs ({', '.join(names)}): "
                              f"pass dataset_config_name.")
    else:
        chosen = [c for c in configs if c.get("config_name", "default") == config]
        if not chosen:
            raise ConfigError(f"dataset_config_name '{config}' is not a config of dataset "
                              f"'{name}': its configs are {', '.join(names)}.")
    files = chosen[0].get("data_files")
    if isinstance(files, (str, list)) and not (isinstance(files, list) and files
                                               and isinstance(files[0], dict)):
        files = [{"split": "train", "path": files}]
    if isinstance(files, dict):
        files = [{"split": k, "path": v} for k, v in files.items()]
    splits = {f.get("split", "train"): f.get("path") for f in files or []}
    if split not in splits:
        raise ConfigError(f"Dataset '{name}' (config {config}) has no split '{split}'; its splits "
                          f"are {sorted(splits)}: set dataset_train_split/dataset_test_split "
                          "accordingly.")
    paths = splits[split]
    return [paths] if isinstance(paths, str) else list(paths)


def pattern_regex(pattern: str) -> re.Pattern:
    """A data_files glob as a regex: `*` and `?` stay within a folder, `**` crosses folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            if j > 0:
                out, i = out + fnmatch.translate(pattern[i:j + 1])[4:-3], j + 1
            else:
                out, i = out + r"\[", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def matching_files(listing, patterns: list[str]) -> list:
    """Entries of a listing whose path matches any pattern, in pattern order, each once, sorted
    within a pattern."""
    seen, out = set(), []
    for p in patterns:
        rx = pattern_regex(p.lstrip("/"))
        for e in sorted((e for e in listing if rx.match(e.path)), key=lambda e: e.path):
            if e.path not in seen:
                seen.add(e.path)
                out.append(e)
    return out


def local_readme_configs(folder: str) -> list[dict] | None:
    """The `configs:` list of a local dataset repository's README.md, or None."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return readme_configs(f.read())
