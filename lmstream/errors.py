"""The error a user can cause and fix: every module below the job raises it, with one sentence that
names the file, column or flag and what to do. `lmstream.retry.Unreadable` (a store that would not
answer) is one."""


class ConfigError(ValueError):
    """A mistake a user can make in the arguments or data; the message names the flag and what to
    do."""
