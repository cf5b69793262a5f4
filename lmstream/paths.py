"""The paths a user names (flags, an arguments file, a mixture's sources), checked before anything
is read or written: one sentence naming the flag and the path, by what the file system says of it.

Every text field of the argument dataclasses is placed in PATHS (with its kind: "source",
"file", "folder", "new-folder") or NOT_PATHS, so a flag added later is checked (and swept by
tests/test_sweeps.py) once its kind is declared, without a case of its own.

    check_path("tokenized_dataset_load_dir", "blocks/", "folder", "run `python -m lmstream.prepare` first")
    check_paths(data_args, PATHS)    # every field that is a path
    check_paths(training_args)              # output_dir, resume_from_checkpoint
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import stat
import threading

from .errors import ConfigError

# what the file system's refusal means, said of the path
_WHY = {
    errno.ENOENT: "does not exist",
    errno.ENOTDIR: "goes through a file as if it were a folder",
    errno.ELOOP: "leads through symbolic links back into themselves",
    errno.EACCES: "cannot be read (permission denied)",
    errno.EPERM: "cannot be read (permission denied)",
    errno.ENAMETOOLONG: "is a name too long for the file system",
}
# Which text fields of the argument dataclasses (lmstream.config) are paths, and of which kind
# (KINDS), with what to do when one cannot be read; every other text field is named in NOT_PATHS,
# so that a field added later must be placed in one or the other (tests/test_sweeps.py holds it)
# and is then swept as what it is.
PATHS = {
    "dataset_name": ("source", None),
    "tokenized_dataset_save_dir": ("new-folder", None),
    "dataset_cache_dir": ("new-folder", None),
    "tokenized_dataset_load_dir": ("folder", "give the folder `python -m lmstream.prepare` wrote"),
    "dataset_skip_documents": ("file", "give a text file of document ids or urls, one per line"),
    "model_name_or_path": ("model", None),
    "config_name": ("model", None),
    "tokenizer_name": ("model", None),
}
NOT_PATHS = {"dataset_config_name", "dataset_mixture", "dataset_train_split", "dataset_test_split",
             "dataset_text_field", "dataset_text_sample_by", "dataset_tokenizer_backend",
             "dataset_document_attention", "dataset_mixture_schedule",
             "dataset_skip_steps", "config_overrides", "torch_dtype", "attn_implementation"}
# TrainingArguments' paths (its fields carry no metadata of ours)
TRAINING_PATHS = {"output_dir": "new-folder", "resume_from_checkpoint": "checkpoint"}
KINDS = ("source", "model", "file", "folder", "new-folder", "checkpoint")
# what a folder of a model or tokenizer (save_pretrained's) holds at least one of
_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


def path_problem(path: str, want: str | None = None) -> str | None:
    """What keeps `path` from being read as `want` ("file", "folder" or None for either), in a few
    words; None when nothing does."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return _WHY.get(err.errno) or f"cannot be used ({err.strerror})"
    folder = stat.S_ISDIR(mode)
    if want == "folder" and not folder:
        return "is a file, not a folder"
    if want == "file" and folder:
        return "is a folder, not a file"
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        return _WHY[errno.EACCES]
    return None


def atomic_write(path: str, data: bytes, mode: int = 0o644, sync: bool = True) -> None:
    """`data` at `path` whole or not at all: written aside (a name of this process and thread, so
    that threads and processes writing the same path at once do not mix), synced when `sync`,
    renamed into place; the aside file is removed when anything fails."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def check_path(flag: str, path: str, want: str | None = None, hint: str = "check the path") -> None:
    """Raise one sentence naming `flag` and `path` when `path` cannot be read as `want`."""
    problem = path_problem(os.path.expanduser(path), want)
    if problem:
        raise ConfigError(f"{flag} '{path}' {problem}: {hint}.")


def looks_local(name: str) -> bool:
    """Whether a name that may be a Hub id is meant as a local path: it exists (a link included),
    or starts like one (/, ~, .), or has more parts than a Hub id's owner/name."""
    if _URL.match(name):
        return False
    return (os.path.lexists(os.path.expanduser(name)) or name.startswith(("/", "~", "."))
            or name.strip("/").count("/") > 1)


def _glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def check_new_folder(flag: str, path: str) -> None:
    """A folder to write into: a folder there already, or nothing yet under a folder that is."""
    full = os.path.abspath(os.path.expanduser(path))
    try:
        os.stat(full)
        here = full
    except OSError as err:
        here = None if err.errno != errno.ENOENT else os.path.dirname(full)
        problem = _WHY.get(err.errno) or f"cannot be used ({err.strerror})"
    while here is not None and not os.path.lexists(here):
        here = os.path.dirname(here)
    if here is not None:
        problem = path_problem(here, "folder")
        if problem is None and not os.access(here, os.W_OK | os.X_OK):
            problem = "cannot be written (permission denied)"
    if problem:
        where = path if here in (None, full) else f"{path}' ('{here}"
        raise ConfigError(f"{flag} '{where}' {problem}: choose another {flag} (nothing was "
                          "written).")


_HINTS = {"source": "check the path (or give a Hub id)", "file": "check the path",
          "folder": "check the path"}


def check_one(flag: str, value, kind: str, hint: str | None = None) -> None:
    """`value` of `flag`, a path of `kind` (see KINDS), checked; None and "" are unset."""
    if value in (None, "") or not isinstance(value, str):
        return
    hint = hint or _HINTS.get(kind, "check the path")
    if kind == "source":
        for name in (n.strip() for n in value.split(",")):
            if name and not _glob(name) and looks_local(name):
                check_path(flag, name, None, hint)
    elif kind == "model":
        if looks_local(value):
            check_path(flag, value, "folder", "give a folder saved with save_pretrained, or a Hub id")
            if not any(os.path.exists(os.path.join(os.path.expanduser(value), name))
                       for name in _MODEL_FILES):
                raise ConfigError(f"{flag} '{value}' holds no config.json or tokenizer files: give a "
                                  "folder saved with save_pretrained, or a Hub id.")
    elif kind in ("file", "folder"):
        check_path(flag, value, kind, hint)
    elif kind == "new-folder":
        check_new_folder(flag, value)
    elif kind == "checkpoint" and value.lower() not in ("true", "last", "false"):
        check_path(flag, value, "folder", "pass a checkpoint-N folder, or true for the newest")


def path_fields(obj, kinds: dict | None = None) -> dict[str, tuple[str, str | None]]:
    """{field: (kind, hint)} of the paths among `obj`'s fields: those `kinds` names (PATHS),
    or TrainingArguments' own."""
    names = {f.name for f in dataclasses.fields(obj)}
    table = {**{k: (v, None) for k, v in TRAINING_PATHS.items()}, **(kinds or {})}
    return {name: kind for name, kind in table.items() if name in names}


def check_paths(obj, kinds: dict | None = None) -> None:
    """Every path among the fields of `obj` (see path_fields), checked before anything is read or
    written."""
    for name, (kind, hint) in path_fields(obj, kinds).items():
        check_one(name, getattr(obj, name), kind, hint)
