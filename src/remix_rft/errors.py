"""Errors caused by the user's input, as opposed to bugs.

A `UserError` says what is wrong, where (config key, file and line, path) and how to fix it, in one line. The
command line prints it as `remix-rft <command>: error: <message>` and exits with status 2, without a traceback
(`--debug` or `REMIX_DEBUG=1` shows it); any other exception is a bug and keeps its traceback.

Each subclass also derives from the built-in exception that code catching the old error expects (ValueError,
FileNotFoundError, KeyError, ...), so library callers need not change.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a config key or value, a data file, a model path, a run directory, a name."""


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown or out of range; the message names the key."""


class UsageError(UserError, ValueError):
    """A command-line argument (or the matching function argument) out of range or inconsistent."""


class PathNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (a run directory, a checkpoint, a data directory) does not exist."""


class DataError(UserError, ValueError):
    """A data source or file the user named cannot be used: malformed, missing fields, wrong options."""


class DataNotFoundError(DataError, PathNotFoundError):
    """A data file or data directory the user named does not exist (catchable as ValueError or FileNotFoundError)."""


class DataFieldError(DataError, KeyError):
    """A row lacks a field it needs (catchable as KeyError, printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataOptionsError(DataError, TypeError):
    """Options given to a data source that does not take them."""


class ModelLoadError(UserError, OSError):
    """A model name or path that names no loadable model (not embedded, not a model folder, not in the HF cache)."""


class MissingPackageError(UserError, ModuleNotFoundError):
    """An optional package the chosen setting needs is not installed; the message gives the pip command."""


class PathNotWritableError(UserError, PermissionError):
    """A folder the run must write to (logging.output_dir, a run directory) cannot be written."""


class DiskFullError(UserError, OSError):
    """The disk filled while the run wrote a checkpoint: the half-written one is removed (its space freed) and the
    last complete checkpoint kept; the run's message names the folder, that checkpoint and the resume command."""


class RewardError(UserError, RuntimeError):
    """A user-provided reward misbehaved during a run in a way that would make the step wrong: it hung past its
    timeout, returned NaN / inf / a non-number, a batch of the wrong length, or raised on every response. The message
    names the reward and the sample."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (some libraries' messages span several)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())
