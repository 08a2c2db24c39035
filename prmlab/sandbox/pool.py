"""The parent side of prmlab's sandbox: a pool of worker processes, batching, caching and the run's protections.

Every reward, label and evaluation in prmlab rests on this package. Programs come from a policy that RL pushes to
find any way to collect reward, so execution is contained, honest about what passed, and fast:

* each program runs in **processes that are not forks of the caller**: a pool of small stdlib-only worker
  interpreters (:mod:`prmlab.sandbox.worker`, started with ``subprocess``) fork, per program, a process that runs
  the program and a separate test runner that judges it (:mod:`prmlab.sandbox.harness`);
* the worker isolates itself as far as the kernel allows (:mod:`prmlab.sandbox.isolation`: user, mount, PID and
  network namespaces, read-only mounts, Landlock), sets rlimits on CPU time, address space, processes, file size
  and open files, enforces a wall-clock timeout, bounds captured output and kills every process the program left;
  :attr:`Sandbox.protections` says what is in force (logged once per Sandbox; strict mode refuses when something
  is missing);
* the result is typed (:class:`~prmlab.records.ExecutionResult`):

  ============ ==================================================================================================
  ``passed``    the test runner reported every test passed and finished, both processes exited with status 0,
                and no process was left behind. Nothing else counts.
  ``failed``    the tests ran and at least one failed, or the program raised before the tests (``sys.exit(0)``
                included), or the program left a process running (then ``n_passed`` is 0).
  ``timed_out`` wall-clock timeout or CPU-time limit.
  ``crashed``   a process ended before the tests finished (``os._exit``, a signal, a broken channel, a dead
                worker); ``n_passed`` counts the tests that had passed before.
  ``error``     the sandbox itself failed (never cached).
  ============ ==================================================================================================

* ``pass_fraction`` (``n_passed / n_tests``) is the partial-credit reward: each of ``task.tests`` is an independent
  block run after ``task.test_setup`` in its own copy of the namespace, with the real builtins.

Execution is opt-in (``SandboxConfig.allow_execution``); see docs/safety.md. Linux only.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import functools
import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from prmlab.config import SandboxConfig
from prmlab.errors import SandboxCodeChanged
from prmlab.records import ExecutionResult, Task
from prmlab.sandbox.plan import encode, plan_job
from prmlab.sandbox.jobs import (HARNESS_VERSION, ResultCache, SandboxStats, cache_key, cacheable, limits, make_job,
                                 require_allowed, to_result)
from prmlab.sandbox.protections import (WORKER_PATH, Protections, announce, from_flags, protections,
                                        log, strict_requested, worker_env, worker_python)
from prmlab.sandbox.version import check_code

WATCHDOG_GRACE_S = 30.0
"""A worker that has not answered ``timeout_s`` plus this many seconds after a job is killed and replaced."""
PREFIX = struct.Struct(">II")
PIPELINE = 2
"""Jobs sent ahead to each worker: it starts the next one as soon as it has answered, without waiting for this
process (the next job waits in the pipe, not in the worker's memory)."""
WORKERS_PER_CORE = 2
"""Default workers per core: each job alternates between two processes (the program's and the test runner), so
one worker leaves its core idle while it waits; two per core keep the cores busy (bench/bench_sandbox.py)."""


class _Worker:
    """The parent's handle on one worker process (spawned with subprocess, never forked from the caller)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([worker_python().path, "-I", "-S", "-B", str(WORKER_PATH)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=worker_env(),
                                     close_fds=True, start_new_session=True, cwd="/")
        self.buf = b""
        self.hello: dict[str, Any] | None = None

    def read_hello(self, timeout_s: float = 60.0) -> dict[str, Any]:
        if self.hello is None:
            self.hello = json.loads(self._read_line(time.monotonic() + timeout_s))
            check_code(self.hello)
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

    def send(self, job: dict[str, Any]) -> None:
        """Send a job as prefix, header (limits, mode, test count, program, call plan) and body (setup, tests, call
        plan): the worker reads the body only after it has forked the program's process, which so never holds the
        tests (only the arguments of the planned calls, which it would receive anyway). Up to :data:`PIPELINE`
        jobs wait in the pipe; the worker reads one at a time."""
        calls, complete, body = _task_parts(job["setup"], tuple(job["tests"]), job["mode"])
        header = json.dumps({"limits": job["limits"], "mode": job["mode"], "n_tests": len(job["tests"]),
                             "program": job["program"], "plan": calls, "complete": complete},
                            ensure_ascii=False).encode()
        self.proc.stdin.write(PREFIX.pack(len(header), len(body)) + header + body)
        self.proc.stdin.flush()

    def receive(self, job: dict[str, Any]) -> dict[str, Any]:
        """The reply to the oldest job sent (the worker runs them in order), within its timeout plus a grace."""
        return json.loads(self._read_line(time.monotonic() + job["limits"]["timeout_s"] + WATCHDOG_GRACE_S))

    def close(self, kill: bool = False) -> None:
        """Ask the worker to exit (it cleans up); kill it (and its uid's processes) if it does not."""
        try:
            if not kill:
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
                self._remove_base()
                return
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        self._remove_base()
        uid = (self.hello or {}).get("uid")
        if uid is not None:  # without a PID namespace its programs may outlive it; kill them from a fresh process
            subprocess.run([worker_python().path, "-I", "-S", "-B", str(WORKER_PATH), "--kill-uid", str(uid)],
                           timeout=30, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _remove_base(self) -> None:
        """The worker's base directory on the host (empty when the worker had its own tmpfs there)."""
        base = (self.hello or {}).get("base")
        if base and Path(base).name.startswith("prmlab-sandbox-"):
            shutil.rmtree(base, ignore_errors=True)


@functools.lru_cache(maxsize=1024)
def _task_parts(setup: str, tests: tuple[str, ...], mode: str) -> tuple[str, bool, bytes]:
    """Once per task: its call plan (:mod:`prmlab.sandbox.plan`) encoded, whether the plan is complete, and the
    job body (setup, tests, mode, plan) as the worker receives it (the same bytes for every program of the task,
    which is what lets the test runner reuse its parsed and compiled copy)."""
    calls, complete = plan_job(setup, tests, builtins.__dict__)
    calls = encode(calls)
    body = json.dumps({"setup": setup, "tests": list(tests), "mode": mode, "plan": calls}, ensure_ascii=False)
    return calls, complete, body.encode()


def _started(worker: _Worker | None, strict: bool) -> tuple[_Worker | None, dict[str, Any] | None]:
    """A live worker that has said hello (respawned when missing or dead), or None and the reply for the job that
    cannot run: ``error`` when it failed to start or, in strict mode, reports a missing protection."""
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
    except SandboxCodeChanged:
        worker.close(kill=True)
        raise
    if strict:
        missing = from_flags(worker.hello.get("protections", {})).missing
        if missing:
            worker.close(kill=True)
            return None, {"status": "error", "n_passed": 0, "failing_index": None,
                          "message": "strict mode: the sandbox worker started without " + "; ".join(missing)}
    return worker, None


def _died(e: BaseException) -> dict[str, Any]:
    return {"status": "crashed", "n_passed": 0, "failing_index": None, "worker_died": True,
            "message": f"the sandbox worker died or hung while running the program ({type(e).__name__})"}


def _serve_slot(slot: list, pending: queue.Queue, jobs: list, replies: list, done: queue.Queue,
                stop: threading.Event, strict: bool) -> None:
    """One worker's share of a batch, :data:`PIPELINE` jobs ahead; ``slot[0]`` is the worker, kept current (None
    when it was lost), so that a caller can kill it if this raises with jobs in flight.

    A worker that dies or hangs (watchdog) crashes the job it was running, is killed and replaced; the jobs sent
    after it never started and go back to ``pending``. A worker that reports an unclean job exits: the same."""
    sent: collections.deque = collections.deque()
    worker = slot[0]
    while True:
        while len(sent) < PIPELINE and not stop.is_set():
            try:
                i = pending.get_nowait()
            except queue.Empty:
                break
            if not sent:
                slot[0] = None  # _started closes a dead worker, and a new one when it raises
                worker, error = _started(worker, strict)
                slot[0] = worker
                if error is not None:
                    replies[i] = error
                    done.put(i)
                    continue
            try:
                worker.send(jobs[i])
            except OSError as e:  # it died: an earlier job's reply (if any) tells, this one goes back
                if sent:
                    pending.put(i)
                    break
                worker.close(kill=True)
                worker, replies[i] = None, _died(e)
                slot[0] = None
                done.put(i)
                continue
            sent.append(i)
        if not sent:
            return
        i = sent.popleft()
        try:
            replies[i] = worker.receive(jobs[i])
        except (EOFError, TimeoutError, OSError, ValueError) as e:
            replies[i] = _died(e)
        if replies[i].get("worker_died") or not replies[i].get("clean", True):
            worker.close(kill=True)  # an unclean worker has exited: a fresh one starts lazily
            worker = slot[0] = None
            while sent:
                pending.put(sent.pop())
        done.put(i)


class Sandbox:
    """A pool of sandbox workers and an optional disk cache; use as a context manager.

    >>> with Sandbox(SandboxConfig(allow_execution=True), cache_dir="runs/x/exec_cache") as sb:  # doctest: +SKIP
    ...     results = sb.run_many([(program, task), ...], progress=True)
    ...     sb.stats.hit_rate
    """

    def __init__(self, cfg: SandboxConfig, cache_dir: str | os.PathLike | None = None, strict: bool | None = None):
        """``strict`` (default: ``cfg.strict`` if the config has it, or ``PRMLAB_SANDBOX_STRICT=1``) refuses to
        run without every protection (:class:`~prmlab.sandbox.protections.SandboxUnavailable`)."""
        require_allowed(cfg)
        if not sys.platform.startswith("linux"):
            raise RuntimeError("prmlab's sandbox needs Linux (fork, prctl, pidfd); see docs/safety.md.")
        self.strict = strict if strict is not None else (getattr(cfg, "strict", False) or strict_requested(None))
        self.protections: Protections = protections()
        """What is in force for this Sandbox's programs (see :meth:`provenance`)."""
        announce(self.protections, self.strict)
        log.info("prmlab sandbox: workers run %s", worker_python().describe())
        self.cfg = cfg
        self.cache = ResultCache(cache_dir) if (cache_dir is not None and cfg.cache) else None
        self.stats = SandboxStats()
        self.n_workers = cfg.workers or WORKERS_PER_CORE * len(os.sched_getaffinity(0))
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
                if self.cache is not None and cacheable(reply, self.cfg):  # asdict costs ~25 us a result
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
        failures: list[BaseException] = []

        def loop(slot: int) -> None:
            box = [self._workers[slot]]
            try:
                _serve_slot(box, pending, jobs, replies, done, stop, self.strict)
            except BaseException as e:  # SandboxCodeChanged (or a bug): stop, and raise it in the caller
                failures.append(e)
                stop.set()
                done.put(None)
                if box[0] is not None:  # it may hold jobs whose replies nobody would read
                    box[0].close(kill=True)
                    box[0] = None
            finally:
                self._workers[slot] = box[0]

        threads = [threading.Thread(target=loop, args=(s,), daemon=True)
                   for s in range(min(self.n_workers, len(jobs)))]
        for th in threads:
            th.start()
        bar = _progress_bar(len(jobs), progress)
        try:
            for _ in range(len(jobs)):
                if done.get() is None:
                    break
                if bar is not None:
                    bar.update(1)
        finally:
            stop.set()
            for th in threads:
                th.join()
            if bar is not None:
                bar.close()
        if failures:
            raise failures[0]
        return replies  # type: ignore[return-value]

    def provenance(self) -> dict[str, Any]:
        """What to record with a run: harness version, limits, strict mode and the protections in force."""
        return {"harness_version": HARNESS_VERSION, "limits": limits(self.cfg), "strict": self.strict,
                "protections": self.protections.as_dict(), "summary": self.protections.line(),
                "interpreter": worker_python().describe()}

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
