"""The errors prmlab raises on purpose: each message is one sentence that says what is wrong and what to do.

Every class derives from :class:`PrmlabError` and from the built-in exception a caller would expect (a bad value is a
``ValueError``, a missing file a ``FileNotFoundError``...), so existing ``except`` clauses keep working. The command
line prints such an error as its message alone and exits with the class's ``exit_code`` (``--debug`` or
``PRMLAB_DEBUG=1`` shows the traceback); in a notebook, :func:`short_traceback` shows just the message too. Anything
else is a bug and keeps its traceback.

    exit code  class                 when
    2          ConfigError           a config value or ``--set`` override is invalid
    3          RecordError           a JSONL file has a malformed row (file and line named)
    4          ExecutionNotAllowed   model-generated code would run without ``allow_execution``
    5          NotAvailable          a model, package or dataset cannot be had here (offline, not installed)
    6          NotEnoughData         a stage's input is too small to do what was asked
    7          RunDirConflict        a run directory holds artifacts of a different config
    8          MissingArtifact       a stage's upstream artifact is missing (the message names the command making it)
    9          SandboxCodeChanged    the sandbox's files changed on disk after this process imported prmlab
"""

from __future__ import annotations


class PrmlabError(Exception):
    """An error whose message stands alone: what is wrong and what to do."""

    exit_code = 1


class ConfigError(PrmlabError, ValueError):
    """An invalid configuration value; the message names the field."""

    exit_code = 2


class RecordError(PrmlabError, ValueError):
    """A malformed record in a JSONL file; the message names the file and line."""

    exit_code = 3


class ExecutionNotAllowed(PrmlabError, PermissionError):
    """Executing model-generated programs was not allowed (``allow_execution`` / ``--allow-execution``)."""

    exit_code = 4


class NotAvailable(PrmlabError, RuntimeError):
    """A model, package or dataset cannot be loaded on this machine; the message names what works instead."""

    exit_code = 5


class NotEnoughData(PrmlabError, ValueError):
    """Too little input for the stage (e.g. no training responses left after data selection)."""

    exit_code = 6


class RunDirConflict(PrmlabError, ValueError):
    """A run directory already holds artifacts made with a different configuration."""

    exit_code = 7


class MissingArtifact(PrmlabError, FileNotFoundError):
    """A stage needs an upstream artifact that does not exist; the message names the command that makes it."""

    exit_code = 8


class SandboxCodeChanged(PrmlabError, RuntimeError):
    """A sandbox worker started from files that differ from the code this process imported (restart it)."""

    exit_code = 9


def short_traceback(shell, etype, value, tb, tb_offset=None):  # noqa: ARG001 (IPython's custom-exception hook)
    """IPython hook: show a :class:`PrmlabError` raised in a notebook cell as its one-sentence message.

    Registered by :func:`enable_short_errors`; other exceptions keep IPython's full traceback.
    """
    print(f"{type(value).__name__}: {value}")
    return None


def enable_short_errors() -> bool:
    """In IPython/Jupyter, show prmlab's own errors as one sentence instead of a wall of frames; True if enabled."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc((PrmlabError,), short_traceback)
    return True
