"""prmlab's sandbox: isolated, limited, batched and cached execution of generated programs against unit tests.

Public API (see :mod:`prmlab.sandbox.pool` for the design and docs/safety.md for what it protects against):

* :class:`Sandbox`, :func:`run_program`, :class:`ExecutionNotAllowed`, :class:`SandboxStats`;
* :func:`make_job`, :func:`cache_key`, :class:`ResultCache`, ``HARNESS_VERSION``;
* :func:`protections` (what this machine's kernel allows, as :class:`Protections`), :func:`self_test` (known-answer
  and hostile programs, a readable report), :class:`SandboxUnavailable` (strict mode refused).

The worker side (``worker.py``, ``harness.py``, ``wire.py``, ``isolation.py``, ``uids.py``, ``verdict.py``) is
stdlib-only and runs in separate interpreters; it is never imported by the caller.
"""

from prmlab.sandbox.jobs import (HARNESS_VERSION, ExecutionNotAllowed, ResultCache, SandboxStats, cache_key,
                                 cacheable, limits, make_job, require_allowed, to_result)
from prmlab.sandbox.pool import Sandbox, run_program
from prmlab.sandbox.protections import Protections, SandboxUnavailable, protections


def self_test(names: list[str] | None = None, skip: tuple[str, ...] = ()):
    """Run the sandbox's self-test (:mod:`prmlab.sandbox.selftest`) and return its report (``str()`` reads well)."""
    from prmlab.sandbox.selftest import self_test as run

    return run(names, skip)

__all__ = ["HARNESS_VERSION", "ExecutionNotAllowed", "Protections", "ResultCache", "Sandbox", "SandboxStats",
           "SandboxUnavailable", "cache_key", "cacheable", "limits", "make_job", "protections",
           "require_allowed", "run_program", "self_test", "to_result"]
