"""What a run leaves in output_dir besides its checkpoints: the final model, config and tokenizer
(each file whole or absent) and the metrics; and a full or unwritable disk said in one sentence
(`step`, around each step of a lmstream.training.run.Run).

    save_final(trainer, "out")        # out/model.safetensors, config.json, tokenizer files
    read_metrics("out")               # all_results.json as a dict ({} before the run ends)
"""
from __future__ import annotations

import errno
import functools
import json
import os
import pathlib
import re
import shutil

from ..errors import ConfigError
from .models import as_configured


# what to do about a path the file system refuses, by errno (network errors are not these)
_PATH_ADVICE = {
    errno.EACCES: "choose an output_dir you can write to",
    errno.EPERM: "choose an output_dir you can write to",
    errno.EROFS: "the file system is read-only: choose an output_dir on a writable one",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another output_dir",
    errno.EISDIR: "a folder stands where a file is written: move it, or choose another output_dir",
    errno.ELOOP: "symbolic links lead back into themselves: fix them, or choose another output_dir",
    errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter output_dir",
    errno.EMLINK: "too many links to one file there: choose another output_dir",
    errno.EEXIST: "something already stands there: move it away or choose another output_dir",
}


def storage_error(err: BaseException, output_dir: str) -> str | None:
    """One sentence naming the path for an error of the file system (full, not writable, not a
    folder, a link loop, a name too long, ...); None for anything else."""
    where = getattr(err, "filename", None) or output_dir
    code = getattr(err, "errno", None)
    if code is None:   # a native library's error (the tokenizers crate: "... (os error 21)")
        found = re.search(r"\(os error (\d+)\)", str(err))
        code = int(found.group(1)) if found else None
    strerror = getattr(err, "strerror", None) or (os.strerror(code) if code else "")
    if (code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err)
            or "file write failed" in str(err)):
        return (f"No space left on the device while writing '{where}': free space or choose "
                "another output_dir (files are written whole or not at all; the last complete "
                "checkpoint is intact).")
    if code in _PATH_ADVICE:
        return f"Cannot write '{where}' ({strerror}): {_PATH_ADVICE[code]}."
    return None


def read_metrics(output_dir: str) -> dict:
    """The metrics a finished run wrote (all_results.json; {} if none)."""
    path = os.path.join(output_dir, "all_results.json")
    return json.loads(pathlib.Path(path).read_text()) if os.path.exists(path) else {}


def save_final(trainer, output_dir: str) -> None:
    """The final model, config and tokenizer, each file complete or absent: written into a scratch
    folder in output_dir, then moved into place file by file (a rename is atomic)."""
    scratch = os.path.join(output_dir, ".lmstream", f"final-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with as_configured(trainer.model):
            trainer.save_model(scratch)
        if trainer.args.should_save:
            for name in os.listdir(scratch):
                os.replace(os.path.join(scratch, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def step(method):
    """A step of a run: a full disk becomes one sentence, and a failed step lets go of the output
    folder's lock (a notebook cell run again after a fix is then not refused by its own kernel)."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException as err:
            self.close()
            sentence = None
            if isinstance(err, Exception) and not isinstance(err, ConfigError):
                sentence = storage_error(err, self.training_args.output_dir)
            if sentence is None:
                raise
            raise ConfigError(sentence) from None
    return wrapped
