"""Isolated, limited, batched and cached execution of generated programs against unit tests.

Every reward, label and evaluation in prmlab rests on this module. Programs come from a policy that RL pushes to
find any way to collect reward, so execution is contained, honest about what passed, and fast:

* each program runs in a **separate process that is not a fork of the caller**: a pool of small stdlib-only worker
  interpreters (:mod:`prmlab.sandbox_worker`, started with ``subprocess``) each fork a fresh child per program;
* the child gets its own session, a fresh temporary working directory, rlimits on CPU time, address space,
  processes, file size and open files, and (when running as root) an unprivileged uid of its own; the worker
  enforces a wall-clock timeout, bounds captured output and kills every process the program left;
* the result is typed (:class:`~prmlab.records.ExecutionResult`):

  ============ ==================================================================================================
  ``passed``    a nonce-tagged "done" report from the child itself after the last test, exit status 0, every
                test passed, and no process left behind. Nothing else counts.
  ``failed``    the tests ran and at least one failed, or the program raised before the tests (``sys.exit(0)``
                included), or the program left a process running (then ``n_passed`` is 0).
  ``timed_out`` wall-clock timeout or CPU-time limit.
  ``crashed``   the child ended before its tests finished (``os._exit``, a signal, a closed result pipe, a dead
                worker); ``n_passed`` counts the tests that had passed before.
  ``error``     the sandbox itself failed (never cached).
  ============ ==================================================================================================

* ``pass_fraction`` (``n_passed / n_tests``) is the partial-credit reward: each of ``task.tests`` is an independent
  block run after the program and ``task.test_setup`` in its own copy of the namespace, with the real builtins.

Execution is opt-in (``SandboxConfig.allow_execution``); see docs/safety.md for what this does and does not protect
against. Linux only (fork, prctl, pidfd).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prmlab.config import SandboxConfig
from prmlab.records import ExecutionResult, Task

HARNESS_VERSION = "prmlab-sandbox-1"
"""Part of every cache key: bump it when the harness's semantics change."""
WORKER_PATH = Path(__file__).with_name("sandbox_worker.py")
CACHE_FILE = "sandbox_cache.jsonl"
WATCHDOG_GRACE_S = 30.0
"""A worker that has not answered ``timeout_s`` plus this many seconds after a job is killed and replaced."""


class ExecutionNotAllowed(RuntimeError):
    """Raised when code would be executed without ``SandboxConfig(allow_execution=True)``."""


def require_allowed(cfg: SandboxConfig) -> None:
    """Raise :class:`ExecutionNotAllowed` unless the config opts in to executing generated code."""
    if not cfg.allow_execution:
        raise ExecutionNotAllowed(
            "Executing model-generated programs is off: set SandboxConfig(allow_execution=True) (CLI: "
            "--allow-execution) once you have read docs/safety.md, which says what prmlab's sandbox protects "
            "against and what it does not (it is not a security boundary against a determined attacker).")


@dataclass
class SandboxStats:
    """Counters of a :class:`Sandbox`: programs executed, served from the cache, and seconds spent."""

    executed: int = 0
    cache_hits: int = 0
    duplicates: int = 0
    """Identical (program, tests, limits) jobs within one batch that ran once."""
    errors: int = 0
    time_s: float = 0.0

    @property
    def requests(self) -> int:
        return self.executed + self.cache_hits + self.duplicates

    @property
    def hit_rate(self) -> float:
        """Share of requests answered without executing (cache hits and in-batch duplicates)."""
        return (self.cache_hits + self.duplicates) / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), requests=self.requests, hit_rate=self.hit_rate)


def limits(cfg: SandboxConfig) -> dict[str, Any]:
    """The limits sent to the worker (and hashed into cache keys)."""
    return {"timeout_s": cfg.timeout_s, "cpu_time_s": cfg.cpu_time_s, "memory_mb": cfg.memory_mb,
            "nproc": cfg.max_processes, "max_file_mb": cfg.max_file_mb, "max_output_bytes": cfg.max_output_bytes}


def make_job(program: str, task: Task, cfg: SandboxConfig) -> dict[str, Any]:
    """The worker's job: program, test setup, test cases, mode (``stdin`` tasks run the program per test)."""
    mode = "stdin" if task.meta.get("io") == "stdin" else "function"
    return {"program": program, "setup": task.test_setup, "tests": list(task.tests), "mode": mode,
            "limits": limits(cfg)}


def cache_key(job: dict[str, Any]) -> str:
    """sha256 over (harness version, program, setup, tests, mode, limits)."""
    blob = json.dumps([HARNESS_VERSION, job["program"], job["setup"], job["tests"], job["mode"], job["limits"]],
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def to_result(reply: dict[str, Any], task: Task) -> ExecutionResult:
    """An :class:`ExecutionResult` from a worker reply (``failing_index`` becomes the failing test's source)."""
    idx = reply.get("failing_index")
    return ExecutionResult(status=reply["status"], n_tests=len(task.tests), n_passed=reply["n_passed"],
                           failing_test=task.tests[idx] if idx is not None else None, message=reply.get("message"),
                           duration_s=round(float(reply.get("duration_s", 0.0)), 6))


def cacheable(reply: dict[str, Any], cfg: SandboxConfig) -> bool:
    """Harness errors and dead workers are never cached; nor are wall-clock timeouts of a mostly idle program
    (a loaded machine or a sleep, not a property of the program)."""
    if reply["status"] == "error" or reply.get("worker_died"):
        return False
    return not (reply["status"] == "timed_out" and "wall-clock" in (reply.get("message") or "")
                and reply.get("cpu_s", 0.0) < 0.5 * cfg.timeout_s)


class ResultCache:
    """Results memoised on disk as JSON lines ``{"k": key, "r": result}`` in ``<dir>/sandbox_cache.jsonl``."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_bytes().split(b"\n"):
                try:
                    row = json.loads(line)
                    ExecutionResult(**row["r"])  # validate
                    self.entries[row["k"]] = row["r"]
                except (ValueError, KeyError, TypeError):
                    continue  # a truncated or foreign line is skipped, never trusted

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        if not items:
            return
        lines = []
        for key, result in items:
            self.entries[key] = result
            lines.append(json.dumps({"k": key, "r": result}, ensure_ascii=False) + "\n")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))


class _Worker:
    """The parent's handle on one worker process (spawned with subprocess, never forked from the caller)."""

    def __init__(self) -> None:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if os.environ.get("PRMLAB_SANDBOX_TMP"):
            env["PRMLAB_SANDBOX_TMP"] = os.environ["PRMLAB_SANDBOX_TMP"]
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(WORKER_PATH)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
                                     start_new_session=True, cwd="/")
        self.buf = b""
        self.hello: dict[str, Any] | None = None

    def read_hello(self, timeout_s: float = 60.0) -> dict[str, Any]:
        if self.hello is None:
            self.hello = json.loads(self._read_line(time.monotonic() + timeout_s))
            if not self.hello.get("stdlib_readable", True):
                warnings.warn("prmlab sandbox: the unprivileged sandbox user cannot read this interpreter's standard "
                              "library (installed in a private directory), so programs can import only built-in "
                              "modules; install Python in a world-readable place (see docs/safety.md).")
        return self.hello

    def _read_line(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("sandbox worker did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    raise EOFError("sandbox worker exited")
                self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def request(self, job: dict[str, Any]) -> dict[str, Any]:
        self.read_hello()
        self.proc.stdin.write((json.dumps(job, ensure_ascii=False) + "\n").encode("utf-8"))
        self.proc.stdin.flush()
        return json.loads(self._read_line(time.monotonic() + job["limits"]["timeout_s"] + WATCHDOG_GRACE_S))

    def close(self, kill: bool = False) -> None:
        """Ask the worker to exit (it cleans up); kill it (and its uid's processes) if it does not."""
        try:
            if not kill:
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
                return
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        base = (self.hello or {}).get("base")
        if base and Path(base).name.startswith("prmlab-sandbox-"):
            shutil.rmtree(base, ignore_errors=True)
        uid = (self.hello or {}).get("uid")
        if uid is not None:  # the worker's programs may outlive it; kill them from a fresh process
            subprocess.run([sys.executable, "-I", "-S", "-B", str(WORKER_PATH), "--kill-uid", str(uid)],
                           timeout=30, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _run_on(worker: _Worker | None, job: dict[str, Any]) -> tuple[_Worker | None, dict[str, Any]]:
    """Run a job, respawning a worker that is missing, dead or stuck; a dead worker's job is ``crashed``."""
    if worker is None or worker.proc.poll() is not None:
        if worker is not None:
            worker.close(kill=True)
        worker = _Worker()
    try:
        worker.read_hello()
    except (EOFError, TimeoutError, OSError, ValueError) as e:
        worker.close(kill=True)
        return None, {"status": "error", "n_passed": 0, "failing_index": None,
                      "message": f"the sandbox worker failed to start ({type(e).__name__}: {e})"}
    try:
        reply = worker.request(job)
    except (EOFError, TimeoutError, OSError, ValueError) as e:
        worker.close(kill=True)
        reply = {"status": "crashed", "n_passed": 0, "failing_index": None, "worker_died": True,
                 "message": f"the sandbox worker died or hung while running the program ({type(e).__name__})"}
        return None, reply
    if not reply.get("clean", True):  # it could not kill everything: replace it (a fresh one starts lazily)
        worker.close(kill=True)
        worker = None
    return worker, reply


class Sandbox:
    """A pool of sandbox workers and an optional disk cache; use as a context manager.

    >>> with Sandbox(SandboxConfig(allow_execution=True), cache_dir="runs/x/exec_cache") as sb:  # doctest: +SKIP
    ...     results = sb.run_many([(program, task), ...], progress=True)
    ...     sb.stats.hit_rate
    """

    def __init__(self, cfg: SandboxConfig, cache_dir: str | os.PathLike | None = None):
        require_allowed(cfg)
        if not sys.platform.startswith("linux"):
            raise RuntimeError("prmlab's sandbox needs Linux (fork, prctl, pidfd); see docs/safety.md.")
        self.cfg = cfg
        self.cache = ResultCache(cache_dir) if (cache_dir is not None and cfg.cache) else None
        self.stats = SandboxStats()
        self.n_workers = cfg.workers or len(os.sched_getaffinity(0))
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, program: str, task: Task) -> ExecutionResult:
        """Run one program against ``task``'s tests."""
        return self.run_many([(program, task)])[0]

    def run_many(self, pairs: list[tuple[str, Task]], progress: bool = False) -> list[ExecutionResult]:
        """Run many (program, task) pairs on all workers; results in input order, cached ones with ``cached=True``."""
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        with self._lock:
            t0 = time.perf_counter()
            jobs = [make_job(p, t, self.cfg) for p, t in pairs]
            keys = [cache_key(j) for j in jobs]
            out: list[ExecutionResult | None] = [None] * len(pairs)
            todo: dict[str, int] = {}  # key -> first index that needs executing
            for i, key in enumerate(keys):
                hit = self.cache.get(key) if self.cache is not None else None
                if hit is not None:
                    out[i] = dataclasses.replace(ExecutionResult(**hit), cached=True)
                    self.stats.cache_hits += 1
                elif key in todo:
                    self.stats.duplicates += 1
                else:
                    todo[key] = i
            replies = self._execute([jobs[i] for i in todo.values()], progress)
            fresh = []
            for (key, i), reply in zip(todo.items(), replies):
                result = to_result(reply, pairs[i][1])
                out[i] = result
                self.stats.errors += result.status == "error"
                if cacheable(reply, self.cfg):
                    fresh.append((key, dataclasses.asdict(result)))
            for i, key in enumerate(keys):
                if out[i] is None:
                    out[i] = out[todo[key]]
            if self.cache is not None:
                self.cache.put_many(fresh)
            self.stats.executed += len(todo)
            self.stats.time_s += time.perf_counter() - t0
            return out  # type: ignore[return-value]

    def _execute(self, jobs: list[dict[str, Any]], progress: bool) -> list[dict[str, Any]]:
        """Jobs spread over the worker threads (one per worker); a KeyboardInterrupt stops after running jobs."""
        replies: list[dict[str, Any] | None] = [None] * len(jobs)
        pending: queue.Queue = queue.Queue()
        for i in range(len(jobs)):
            pending.put(i)
        done: queue.Queue = queue.Queue()
        stop = threading.Event()

        def loop(slot: int) -> None:
            while not stop.is_set():
                try:
                    i = pending.get_nowait()
                except queue.Empty:
                    return
                self._workers[slot], replies[i] = _run_on(self._workers[slot], jobs[i])
                done.put(i)

        threads = [threading.Thread(target=loop, args=(s,), daemon=True)
                   for s in range(min(self.n_workers, len(jobs)))]
        for th in threads:
            th.start()
        bar = _progress_bar(len(jobs), progress)
        try:
            for _ in range(len(jobs)):
                done.get()
                if bar is not None:
                    bar.update(1)
        finally:
            stop.set()
            for th in threads:
                th.join()
            if bar is not None:
                bar.close()
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the workers (each removes its temporary directories and kills what its programs left)."""
        self._closed = True
        for i, w in enumerate(self._workers):
            if w is not None:
                w.close()
                self._workers[i] = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sandbox", unit="prog")


def run_program(program: str, task: Task, cfg: SandboxConfig) -> ExecutionResult:
    """Run one program against ``task``'s tests in a fresh one-worker sandbox (no cache).

    Raises :class:`ExecutionNotAllowed` when ``cfg.allow_execution`` is False. For many programs use
    :class:`Sandbox`, which keeps its workers and is far faster.
    """
    require_allowed(cfg)
    with Sandbox(dataclasses.replace(cfg, workers=1, cache=False)) as sb:
        return sb.run(program, task)
