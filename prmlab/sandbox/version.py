"""Which sandbox code a process runs: a digest of the package's source files (stdlib only).

The parent computes it when :mod:`prmlab.sandbox.pool` is imported, each worker when it starts (it is imported
there as a top-level module), and the worker reports it in its ``hello`` line. Workers start from the files on
disk, so after those files change (an edit, ``git pull``) a parent imported earlier would talk to workers running
different code: the parent then raises :class:`prmlab.errors.SandboxCodeChanged` instead of misreading every
result. The test runner and the program's process are forks of the worker, so they always run the worker's code.
"""

import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def code_digest(directory=HERE):
    """sha256 (first 16 hex digits) over the names and contents of the ``*.py`` files of ``directory``.

    >>> len(code_digest())
    16
    """
    h = hashlib.sha256()
    for name in sorted(n for n in os.listdir(directory) if n.endswith(".py")):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


CODE = code_digest()
"""This process's sandbox code, as its files were when this module was imported."""


def check_code(hello):
    """Raise :class:`prmlab.errors.SandboxCodeChanged` when a worker's ``hello`` reports other code than
    :data:`CODE` (parent side only)."""
    theirs = hello.get("code")
    if theirs != CODE:
        from prmlab.errors import SandboxCodeChanged

        raise SandboxCodeChanged(
            f"prmlab's sandbox files changed on disk after this process imported prmlab (a sandbox worker runs code "
            f"{theirs or 'of an older version'}, this process {CODE}): restart this Python process or Jupyter "
            "kernel so that both run the same code.")
