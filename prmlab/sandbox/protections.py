"""Which protections the sandbox has on this machine, said once per run and on request.

The worker reports what the kernel granted it (:func:`prmlab.sandbox.isolation.protection_flags`);
:class:`Protections` turns those flags into guarantees and names what is missing. :func:`protections` starts a
probe worker once per process (and environment) to find out before any program runs. Strict mode
(``Sandbox(..., strict=True)`` or ``PRMLAB_SANDBOX_STRICT=1``) refuses to run when anything is missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prmlab.sandbox.version import check_code

WORKER_PATH = Path(__file__).with_name("worker.py")
STRICT_ENV = "PRMLAB_SANDBOX_STRICT"
PYTHON_ENV = "PRMLAB_SANDBOX_PYTHON"
"""Which interpreter runs the sandbox workers: a path, ``current`` (this process's), or unset (automatic, see
:func:`worker_python`)."""
SYSTEM_DIRS = ("/usr/bin", "/usr/local/bin")
"""Where :func:`worker_python` looks for another build of this Python version."""
log = logging.getLogger("prmlab.sandbox")
_cache: dict[tuple, "Protections"] = {}


class SandboxUnavailable(RuntimeError):
    """Strict mode and a protection is missing (the message names it)."""


@dataclass(frozen=True)
class Protections:
    """Guarantees in force for programs run by this machine's sandbox workers, and what is missing."""

    mode: str
    """``root with namespaces``, ``unprivileged with namespaces``, ``unprivileged with Landlock only``, ..."""
    writes_confined: bool
    network: str
    """``blocked`` (network namespace), ``TCP blocked`` (Landlock ABI >= 4) or ``open``."""
    signals_confined: bool
    processes: str
    """How leftovers are killed: ``PID namespace``, ``sandbox uid`` or ``descendant walk``."""
    processes_hidden: bool
    verdict_separated: bool = True
    """Tests run in a process the program cannot reach (always)."""
    missing: tuple[str, ...] = ()
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing

    def line(self) -> str:
        """One line for the log and the run's provenance."""
        text = (f"prmlab sandbox: {self.mode}; writes {'confined' if self.writes_confined else 'NOT confined'}; "
                f"network {self.network}; signals {'confined' if self.signals_confined else 'NOT confined'}; "
                f"leftovers by {self.processes}; verdict in a separate process")
        return text + (f"; missing: {', '.join(self.missing)}" if self.missing else "")

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), missing=list(self.missing), complete=self.complete)


def from_flags(flags: dict[str, Any]) -> Protections:
    """Guarantees and missing pieces from a worker's flags."""
    f = lambda k: bool(flags.get(k))  # noqa: E731
    ns = f("pid_namespace")
    writes = (f("mount_namespace") and f("read_only_root")) or f("landlock_fs")
    network = "blocked" if f("network_namespace") else "TCP blocked" if f("landlock_net") else "open"
    signals = ns or f("landlock_scope") or f("uid_isolation")
    processes = "PID namespace" if ns else "sandbox uid" if f("uid_isolation") else "descendant walk"
    missing = []
    if not writes:
        missing.append("write confinement (no mount namespace, no Landlock)")
    if network != "blocked":
        missing.append("network isolation (no network namespace" + ("; only TCP is blocked)" if network != "open" else ")"))
    if not signals:
        missing.append("signal confinement (no PID namespace, no Landlock ABI 6)")
    if not ns:
        missing.append("PID namespace (your processes are visible in /proc; leftovers are hunted by "
                       + ("uid)" if f("uid_isolation") else "walking /proc, which races with forks)"))
    if flags.get("as_root") and not f("uid_isolation"):
        missing.append("per-worker uid (programs run as root)")
    who = "root" if flags.get("as_root") else "unprivileged"
    how = "namespaces" if ns else "Landlock only" if f("landlock_fs") else "no kernel isolation"
    return Protections(mode=f"{who} with {how}", writes_confined=writes, network=network, signals_confined=signals,
                       processes=processes, processes_hidden=ns, missing=tuple(missing), flags=dict(flags))


def unavailable(reason: str) -> Protections:
    return Protections(mode="unavailable", writes_confined=False, network="open", signals_confined=False,
                       processes="none", processes_hidden=False, missing=(f"a working sandbox worker ({reason})",))


def worker_env() -> dict[str, str]:
    """The minimal environment of a worker (none of the caller's variables but the sandbox's own).

    ``LD_BIND_NOW``: the dynamic loader resolves every symbol when the worker starts, not at a function's first
    call; otherwise each program's process resolves (and so copies the pages of) every C function the worker had
    not called yet, about 14 page faults per program. The worker removes it from its environment before any
    program runs (it clears ``os.environ``), so programs and what they start never see it."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LD_BIND_NOW": "1"}
    for name in ("PRMLAB_SANDBOX_TMP", "PRMLAB_SANDBOX_DISABLE"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@dataclass(frozen=True)
class Interpreter:
    """What matters about a Python interpreter for running the sandbox workers."""

    path: str
    implementation: str
    version: tuple[int, int, int]
    shared: bool
    """Runs from a shared ``libpython`` (one is mapped into the process; ``Py_ENABLE_SHARED`` says only that the
    build made one: Debian's makes one, yet links ``/usr/bin/python3.11`` statically)."""
    debug: bool

    def describe(self) -> str:
        return (f"{self.path} ({self.implementation} {'.'.join(map(str, self.version))}, "
                f"{'shared libpython' if self.shared else 'static'}{', debug' if self.debug else ''})")


def pick_interpreter(current: Interpreter, others: list[Interpreter]) -> Interpreter:
    """The interpreter for the sandbox workers (pure): ``current`` unless it is linked against a shared
    ``libpython`` and ``others`` hold a statically linked, non-debug build of the same implementation and the same
    major.minor version (the first such).

    Why: the workers only run the standard library (``python -I -S``: no site-packages), so any build of the same
    version runs a program the same way, and most of a program's cost in the sandbox is the interpreter itself
    (fork, copy-on-write faults, start-up of the program's process). A shared ``libpython`` (pyenv's and
    python-build's default) calls through the PLT, is built without profile-guided optimisation unless asked, and
    was about 18 % slower per forked program than Debian's static, PGO-built ``/usr/bin/python3.11`` on the same
    machine (docs/safety.md, "Speed")."""
    if not current.shared:
        return current
    for o in others:
        if (o.implementation == current.implementation and o.version[:2] == current.version[:2] and not o.shared
                and not o.debug):
            return o
    return current


def _libpython_mapped() -> bool:
    """Whether this process runs from a shared ``libpython`` (Linux: ``/proc/self/maps``)."""
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        return "/libpython" in f.read()


_PROBE = ("import json, sys; print(json.dumps([sys.implementation.name, list(sys.version_info[:3]), "
          "'/libpython' in open('/proc/self/maps').read(), hasattr(sys, 'gettotalrefcount')]))")


def describe_interpreter(path: str) -> Interpreter | None:
    """What ``path`` is (it runs briefly, isolated: ``-I -S``), or None if it cannot run."""
    try:
        out = subprocess.run([path, "-I", "-S", "-c", _PROBE], capture_output=True, timeout=30, cwd="/",
                             stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, check=True)
        impl, version, shared, debug = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError, TypeError):
        return None
    return Interpreter(os.path.realpath(path), impl, tuple(version), shared, debug)


_python: dict[str, Interpreter] = {}


def worker_python() -> Interpreter:
    """The interpreter that runs the sandbox workers (once per process and :data:`PYTHON_ENV` value).

    ``PRMLAB_SANDBOX_PYTHON`` unset: :func:`pick_interpreter` between this process's interpreter and the builds of
    the same version in :data:`SYSTEM_DIRS`; ``current``: this process's; a path: that interpreter, which must be
    the same implementation and major.minor version (programs must run as they would here)."""
    choice = os.environ.get(PYTHON_ENV, "").strip()
    if choice in _python:
        return _python[choice]
    current = Interpreter(sys.executable, sys.implementation.name, tuple(sys.version_info[:3]),
                          _libpython_mapped(), hasattr(sys, "gettotalrefcount"))
    if choice == "current":
        picked = current
    elif choice:
        picked = describe_interpreter(choice)
        if picked is None or (picked.implementation, picked.version[:2]) != (current.implementation,
                                                                              current.version[:2]):
            what = "does not run" if picked is None else f"is {picked.describe()}"
            raise ValueError(f"{PYTHON_ENV}={choice} {what}; it must be {current.implementation} "
                             f"{current.version[0]}.{current.version[1]} like this process (or unset the variable).")
    else:
        names = [Path(d, f"python{current.version[0]}.{current.version[1]}") for d in SYSTEM_DIRS]
        found = [p for p in names if p.exists() and os.path.realpath(p) != os.path.realpath(sys.executable)]
        others = [i for i in map(describe_interpreter, map(str, found)) if i is not None] if current.shared else []
        picked = pick_interpreter(current, others)
    _python[choice] = picked
    return picked


def protections(refresh: bool = False) -> Protections:
    """What a sandbox worker gets on this machine now: starts one probe worker (cached per process, uid and
    sandbox environment variables)."""
    python = worker_python().path
    key = (os.geteuid(), python, tuple(sorted(worker_env().items())))
    if key in _cache and not refresh:
        return _cache[key]
    try:
        out = subprocess.run([python, "-I", "-S", "-B", str(WORKER_PATH), "--probe"], capture_output=True,
                             env=worker_env(), timeout=60, cwd="/", stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return unavailable(f"{type(e).__name__}: {e}"[:200])
    first = out.stdout.decode(errors="replace").splitlines()[:1]
    try:
        hello = json.loads(first[0]) if first else None
    except ValueError:
        hello = None
    if not isinstance(hello, dict) or "protections" not in hello:
        said = (out.stderr.decode(errors="replace").strip().splitlines() or first or ["nothing"])[-1]
        return unavailable(f"the probe worker exited with status {out.returncode} without its report: {said}"[:300])
    _remove_base(hello)
    check_code(hello)
    result = from_flags(hello["protections"])
    _cache[key] = result
    return result


def _remove_base(hello: dict[str, Any]) -> None:
    """The probe worker's base directory on the host (its own mount namespace could not remove the mount point)."""
    base = hello.get("base")
    if isinstance(base, str) and Path(base).name.startswith("prmlab-sandbox-"):
        shutil.rmtree(base, ignore_errors=True)


def strict_requested(strict: bool | None) -> bool:
    return bool(strict) if strict is not None else os.environ.get(STRICT_ENV, "") not in ("", "0")


def announce(p: Protections, strict: bool) -> None:
    """Log the line; warn about what is missing, or refuse in strict mode."""
    log.info(p.line())
    if p.missing and strict:
        raise SandboxUnavailable(f"strict sandbox mode ({STRICT_ENV}=1 or strict=True) and this machine lacks: "
                                 + "; ".join(p.missing) + ". See docs/safety.md.")
    if p.missing:
        import warnings

        warnings.warn(f"prmlab sandbox runs without: {'; '.join(p.missing)} (mode: {p.mode}); see docs/safety.md, "
                      f"or set {STRICT_ENV}=1 to refuse instead.", stacklevel=3)
