"""The sandbox worker: a small, long-lived, stdlib-only interpreter that runs untrusted programs for prmlab.

:mod:`prmlab.sandbox.pool` starts it with ``subprocess`` as ``python -I -S -B worker.py`` (never a fork of the
caller, which may hold a model, CUDA or a Jupyter kernel). It imports nothing from prmlab. At start it isolates
itself as far as the kernel allows (:mod:`prmlab.sandbox.isolation`): with namespaces it forks once more, and that
process, PID 1 of a fresh PID namespace, serves the jobs. For every job it:

1. forks the **program's process** before it has read the job's body (so that process never holds the tests),
   then reads the body and forks the **test runner** (:mod:`prmlab.sandbox.harness`); both get their own
   session, a fresh working directory (also ``HOME`` and ``TMPDIR``), rlimits, the sandbox uid (root) or no
   capabilities (user namespace), and a Landlock domain of their own;
2. enforces the wall-clock timeout, drains the output pipe (keeping at most ``max_output_bytes``) and the
   runner's verdict pipe;
3. afterwards kills every process left: ``kill(-1)`` from PID 1 of the namespace (nothing escapes it), or without
   namespaces ``kill(-1)`` as the sandbox uid (root) or every descendant found in /proc (the worker is a child
   subreaper; weaker: it races with forks); then removes the working directory.

Protocol on stdin: per job an 8-byte prefix (lengths of header and body), a JSON header (limits, mode, n_tests)
and a JSON body (program, setup, tests). On stdout: a ``hello`` line, then one JSON result line per job.
"""

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (stdlib-only sibling modules)
import isolation  # noqa: E402
import plan  # noqa: E402
import verdict  # noqa: E402
import wire  # noqa: E402,F401  (imported here once, so each forked process finds it loaded)
import uids  # noqa: E402
import version  # noqa: E402
from uids import kill_descendants, kill_uid  # noqa: E402

CODE = version.CODE
"""Digest of the sandbox files this worker loaded (:mod:`prmlab.sandbox.version`), reported in its hello."""
del sys.modules["version"]  # not needed by the forked processes; keeps ``import version`` free for programs

del sys.path[0]  # programs must not import prmlab's modules as top-level names

PREFIX = struct.Struct(">II")
RUNNER_JOBS = 1000
"""A test runner serves at most this many jobs, then a fresh one is forked (its memory starts clean again)."""
RUNNER_CPU_S = 3600
"""RLIMIT_CPU of the long-lived runner (each job's tests are bounded by the job's wall clock)."""
MAX_REPORT_BYTES = 4 << 20
"""At most this much of the verdict pipe is read."""
REPORT_PIPE_BYTES = 1 << 20
"""Capacity asked for the verdict pipe (the runner never waits for this process to read it, except past this)."""
DRAIN_S = 0.05
"""While the program runs, the verdict pipe is emptied this often (a report larger than the pipe then only waits)."""
PLANS_KEPT = 1
"""Decoded call plans kept by the worker: only the current task's, because this process's memory is copied into
every program's process, which may see its own task's planned arguments (it receives them anyway) but no other's."""
F_SETPIPE_SZ = 1031
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "copy",
           "hashlib", "fractions", "operator", "io", "pickle", "types", "decimal", "datetime")
"""Standard-library modules imported once by the worker, so that each forked process finds them in sys.modules
(most HumanEval/MBPP programs and tests import some of them). Not ``random`` (nor ``statistics``, which imports
it): it reseeds itself in every forked child (about 0.15 ms of CPU per program, measured), so only the programs
that import it pay for it."""


class Worker:
    """One worker: its isolation, a base directory for working directories, and the job loop."""

    def __init__(self):
        self.libc = isolation.load_libc()
        self.as_root = os.geteuid() == 0
        self.lock_fd, self.creds, self.stdlib_readable, self.tmpfs = None, None, True, False
        if self.as_root:
            self.lock_fd, self.creds = uids.acquire_uid()
        self.base = self._make_base()
        self.ns = isolation.enter_namespaces(self.libc, self.base, self.as_root)
        if self.ns.get("pid_namespace"):
            self._become_init()  # before any other fork: the first child is the namespace's PID 1
        if self.as_root and self.creds is not None:
            self.creds, self.stdlib_readable = self._check_stdlib(self.creds)
        if not self.ns and self.as_root:
            self.tmpfs = self._private_base()
        self.subreaper = harness._prctl(self.libc, PR_SET_CHILD_SUBREAPER, 1) == 0
        harness._prctl(self.libc, PR_SET_NO_NEW_PRIVS, 1)  # inherited: setuid binaries cannot raise privileges
        self.abi = isolation.landlock_abi(self.libc)
        writable = [self.base] + (list(isolation.PRIVATE_TMP) if self.ns.get("private_tmp") else [])
        self.ruleset = _high(isolation.landlock_ruleset(self.libc, self.abi, writable))
        self.protections = isolation.protection_flags(self.ns, self.abi, self.ruleset, self.as_root,
                                                      self.creds is not None)
        self.counter, self.previous, self.runner, self.plans, self.limits = 0, None, None, {}, {}
        self.null = _high(os.open(os.devnull, os.O_RDONLY))  # each forked process's stdin
        calls = isolation.confinement(self.libc, self.ruleset, self.ns.get("user_namespace"))
        prctl = self.libc.prctl if self.libc is not None else None
        self.confinement = (self.creds, calls, prctl, self.null)
        """The arguments of :func:`harness.setup_process` that are the same for every process (built once)."""
        import builtins

        self.safe_builtins = dict(builtins.__dict__)  # what tests see as builtins
        os.environ.clear()  # changing the environment in each child would cost copy-on-write faults
        os.environ.update(HOME=".", TMPDIR=".", PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")
        if self.creds is not None and not self.ns.get("pid_namespace"):
            kill_uid(self.creds)  # leftovers of a worker that died while holding this uid

    def _make_base(self):
        root = os.environ.get("PRMLAB_SANDBOX_TMP") or "/tmp"
        base = os.path.join(root, f"prmlab-sandbox-{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(base, 0o711 if self.as_root else 0o700)
        return base

    def _check_stdlib(self, creds):
        """The sandbox uid must read the interpreter's standard library; expose it read-only if it is hidden."""
        probe = uids.probe_uid(creds[0])
        if probe == 2 and uids.expose_stdlib(self.libc, self.ns):
            probe = uids.probe_uid(creds[0])
        return (creds if probe in (0, 2) else None), probe == 0

    def _private_base(self):
        """Without namespaces, as root: a private mount namespace with a size-capped tmpfs for the work dirs."""
        return uids.private_tmpfs(self.libc, self.base)

    def _become_init(self):
        """Fork the process that serves jobs as PID 1 of the new PID namespace; this one waits and mirrors it."""
        pid = os.fork()
        if pid:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os._exit(max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), 0))
        harness._prctl(self.libc, harness.PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with its parent, and so do all
        isolation.mount_proc(self.libc)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # PID 1 gets only signals it handles: then none at all
        harness._prctl(self.libc, harness.PR_SET_DUMPABLE, 0)

    # -- cleanup --------------------------------------------------------------------------------------------
    @staticmethod
    def _reap():
        """Collect finished children; True when live children (survivors) remain."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True

    def _kill_all(self):
        if self.ns.get("pid_namespace"):
            try:
                os.kill(-1, signal.SIGKILL)  # PID 1: every other process of the namespace, atomically
            except ProcessLookupError:
                pass
        elif self.creds is not None:
            kill_uid(self.creds)
        else:
            kill_descendants(os.getpid())

    def _clean(self, deadline_s=10.0):
        """Kill and reap until no descendant is left; False if that failed (the worker then exits)."""
        end = time.monotonic() + deadline_s
        while self._reap():
            if time.monotonic() > end:
                return False
            self._kill_all()
            time.sleep(0.001)
        return True

    def _wipe_tmp(self):
        """Empty the private temporary directories between jobs (they belong to this worker alone)."""
        if self.ns.get("private_tmp"):
            for d in isolation.PRIVATE_TMP:
                for entry in os.scandir(d) if os.path.isdir(d) else ():
                    if not (self.base + "/").startswith(entry.path + "/"):
                        shutil.rmtree(entry.path, ignore_errors=True) if entry.is_dir(follow_symlinks=False) \
                            else os.unlink(entry.path)

    # -- the test runner --------------------------------------------------------------------------------------
    def _runner(self, lim):
        """The live test runner for these limits (spawned when missing, dead, or after RUNNER_JOBS jobs)."""
        key = (lim["memory_mb"], lim["nproc"], lim["max_file_mb"])
        r = self.runner
        if r is not None and r["key"] == key and r["jobs"] < RUNNER_JOBS:
            return r
        self._stop_runner()
        ctrl, ctrl_t = socket.socketpair()
        ver_r, ver_w = os.pipe()
        try:  # the runner writes its report without waking this process, which reads it when the program exits
            fcntl.fcntl(ver_w, F_SETPIPE_SZ, REPORT_PIPE_BYTES)
        except OSError:
            pass
        null = os.open(os.devnull, os.O_WRONLY)
        setup = (harness.rlimits(dict(lim, cpu_time_s=RUNNER_CPU_S)), self.base, null, (ver_w, ctrl_t.fileno()))
        pid = os.fork()
        if pid == 0:
            harness.forked(setup + self.confinement, harness.runner_loop, (4, 3, self.safe_builtins), runner=True)
        for fd in (ver_w, null):
            os.close(fd)
        ctrl_t.close()
        os.set_blocking(ver_r, False)
        self.runner = {"pid": pid, "ctrl": ctrl, "ver_r": ver_r, "key": key, "jobs": 0, "buf": bytearray(),
                       "pidfd": os.pidfd_open(pid)}
        return self.runner

    def _stop_runner(self, kill=False):
        r, self.runner = self.runner, None
        if r is None:
            return
        r["ctrl"].close()  # it exits when its control socket closes
        os.close(r["ver_r"])
        os.close(r["pidfd"])
        if kill:
            _kill_group(r["pid"])
        os.waitpid(r["pid"], 0)

    def _hand_over(self, lim, body, chan_t):
        """Give the job's body and the runner's end of the channel to the runner (respawned once if it died)."""
        for _ in range(2):
            r = self._runner(lim)
            try:
                sent = socket.send_fds(r["ctrl"], [len(body).to_bytes(8, "big"), body], [chan_t])
                if sent < 8 + len(body):
                    r["ctrl"].sendall(bytes(len(body).to_bytes(8, "big") + body)[sent:])
                r["jobs"] += 1
                return r
            except OSError:
                self._stop_runner(kill=True)
        raise RuntimeError("the test runner could not be started")

    # -- one job ---------------------------------------------------------------------------------------------
    def run(self, header, reader):
        self.counter += 1
        workdir = os.path.join(self.base, str(self.counter))  # a fresh, empty directory for every run
        os.mkdir(workdir, 0o700)
        if self.creds is not None:
            os.chown(workdir, *self.creds)
        out_r, out_w = os.pipe()
        chan_p, chan_t = (s.detach() for s in socket.socketpair())
        lim, t0 = header["limits"], time.monotonic()
        setup = (self._rlimits(lim), workdir, out_w, (chan_p,)) + self.confinement  # all built before the fork
        args = (3, self.safe_builtins, header["program"], header["mode"], self._planned(header.get("plan")),
                header.get("complete", False))
        pid_p = os.fork()
        if pid_p == 0:
            harness.forked(setup, harness.program_process, args)
        for fd in (chan_p, out_w):
            os.close(fd)
        body = reader.read(header["body_len"])  # only now: the program's process never held the tests
        try:
            runner = self._hand_over(lim, body, chan_t)
        finally:
            reader.wipe()
            os.close(chan_t)
        if self.previous is not None:  # removed while this program runs
            try:
                os.rmdir(self.previous)  # usually empty: one system call
            except OSError:
                shutil.rmtree(self.previous, ignore_errors=True)
        self.previous = workdir
        try:
            p, t, timed_out, report, output = self._wait(pid_p, runner, out_r, lim, t0)
        finally:
            os.close(out_r)
        duration = time.monotonic() - t0
        survivors = self._survivors()
        clean = True
        if survivors or timed_out or t is not None:  # kill everything (the runner too: a fresh one comes next)
            self._stop_runner(kill=True) if self.runner is not None else None
            clean = self._clean()
        if self.creds is not None:
            os.chown(workdir, 0, 0)  # 0700 root: the next program (same uid) cannot look inside
        self._wipe_tmp()
        result = verdict.verdict(header, p, t or (0, None), timed_out, survivors, report, output)
        result.update(duration_s=duration, cpu_s=p[1].ru_utime + p[1].ru_stime if p[1] else 0.0)
        return result, clean

    def _planned(self, text):
        """The planned calls ``[(name, args, kwargs)]`` of an encoded plan, decoded here (again only when the task
        changed, see :data:`PLANS_KEPT`): the program's process gets them ready-made (decoding there cost it about
        60 page faults, each a copy of a page shared with this process)."""
        hit = self.plans.pop(text, None)
        if hit is None:
            hit = [p[1:] for p in plan.decode(text)]
            if len(self.plans) >= PLANS_KEPT:
                self.plans.pop(next(iter(self.plans)))
        self.plans[text] = hit
        return hit

    def _rlimits(self, lim):
        """The rlimits of these limits, computed once (:func:`harness.rlimits`)."""
        key = (lim["cpu_time_s"], lim["memory_mb"], lim["max_file_mb"], lim["nproc"])
        hit = self.limits.get(key)
        if hit is None:
            hit = self.limits[key] = harness.rlimits(lim)
        return hit

    def _survivors(self):
        """Reap finished children; True when a process other than the runner is still alive."""
        self._reap()
        runner = self.runner["pid"] if self.runner else None
        try:  # raw reads: no file object per job
            fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
            try:
                data = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
            finally:
                os.close(fd)
            return any(int(pid) != runner for pid in data.split())
        except OSError:  # no CONFIG_PROC_CHILDREN: assume the worst, the runner is replaced
            self._stop_runner(kill=True)
            return self._reap()

    def _wait(self, pid_p, runner, out_r, lim, t0):
        """Wait until the program's process has exited, then until the runner has ended this job's report (one
        byte on the control socket, usually there already) or died, draining the output; then read the report.
        The runner writes its report without waking this process (which empties the verdict pipe every DRAIN_S
        while it waits), so a job usually costs one wake-up here. On timeout kill both."""
        pidfd = os.pidfd_open(pid_p)
        ctrl, ver_r, rpid = runner["ctrl"], runner["ver_r"], runner["pid"]
        poller = select.poll()
        for fd in (out_r, pidfd):  # the runner's byte and death matter once the program's process is gone
            poller.register(fd, select.POLLIN)
        report, output, timed_out, p, t, done = runner["buf"], bytearray(), False, None, None, False
        max_out, deadline = lim["max_output_bytes"], t0 + lim["timeout_s"]
        try:
            while p is None or not (done or t is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    _kill_group(pid_p)
                    _kill_group(rpid)
                    break
                events = poller.poll(max(1, int(min(left, DRAIN_S) * 1000)))
                for fd, _ in events:
                    if fd == pidfd:
                        p = _collect(pid_p)
                        if p is not None:
                            poller.unregister(fd)
                            poller.register(ctrl.fileno(), select.POLLIN)
                            poller.register(runner["pidfd"], select.POLLIN)
                    elif fd == runner["pidfd"]:
                        t = t or _collect(rpid)
                        if t is not None:
                            poller.unregister(fd)
                    elif fd == ctrl.fileno():
                        try:
                            data = ctrl.recv(64, socket.MSG_DONTWAIT)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            data = b""
                        if data:
                            done = True
                        poller.unregister(fd)
                    else:
                        data = os.read(fd, 1 << 16)
                        if not data:
                            poller.unregister(fd)
                        elif len(output) < max_out:
                            output += data[: max_out - len(output)]
                if done or not events or p is not None:
                    _drain(ver_r, report)
        finally:
            os.close(pidfd)
        if timed_out:
            p, t = p or os.wait4(pid_p, 0)[1:], t or os.wait4(rpid, 0)[1:]
        _drain(ver_r, report)
        if t is not None:
            self._forget_runner()
        end = _end(report)
        runner["buf"] = bytearray()
        return p, t, timed_out, bytes(report[:end] if end >= 0 else report), bytes(output)

    def _forget_runner(self):
        """The runner died (and was reaped): drop its handle."""
        if self.runner is not None:
            self.runner["ctrl"].close()
            os.close(self.runner["ver_r"])
            os.close(self.runner["pidfd"])
            self.runner = None

    def close(self):
        self._stop_runner()
        self._clean()
        if self.tmpfs:
            self.libc.umount2(self.base.encode(), 2)  # MNT_DETACH
        shutil.rmtree(self.base, ignore_errors=True)


def _high(fd):
    """``fd`` moved to 64 or above (None stays None): a forked process then moves its own descriptors to 3, 4, ...
    without a check."""
    if fd is None:
        return None
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    os.close(fd)
    return high


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _end(report):
    """Offset of the runner's ``E`` line (end of this job's report), or -1."""
    if report.startswith(b"E\n"):
        return 0
    i = report.find(b"\nE\n")
    return i + 1 if i >= 0 else -1


def _drain(fd, report):
    """Read what the (non-blocking) verdict pipe holds."""
    while len(report) < MAX_REPORT_BYTES:
        try:
            data = os.read(fd, 1 << 16)
        except (BlockingIOError, OSError):
            return
        if not data:
            return
        report += data


def _collect(pid):
    """``(wait status, rusage)`` of an exited child, or None while it runs."""
    done = os.wait4(pid, os.WNOHANG)
    return done[1:] if done[0] else None


class Reader:
    """Exact-length reads from stdin into one reusable buffer, wiped after each job (the program's process is
    forked from this process: no earlier job's tests may remain in its memory)."""

    def __init__(self, fd=0):
        self.fd, self.buf, self.used = fd, bytearray(1 << 16), 0

    def read(self, n):
        if n > len(self.buf):
            self.wipe()
            self.buf = bytearray(max(n, 2 * len(self.buf)))
        view = memoryview(self.buf)[:n]
        got = 0
        while got < n:
            k = os.readv(self.fd, [view[got:]])
            if k == 0:
                raise EOFError("stdin closed")
            got += k
        self.used = max(self.used, n)
        return view

    def wipe(self):
        self.buf[: self.used] = bytes(self.used)
        self.used = 0


def main():
    worker = Worker()
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    import gc

    gc.freeze()  # objects that exist now are never scanned by a child's collector (fewer copy-on-write faults)
    cleanup_uid = worker.creds[0] if worker.creds and not worker.ns.get("pid_namespace") else None
    _send({"hello": 1, "pid": os.getpid(), "uid": cleanup_uid,
           "subreaper": worker.subreaper, "base": worker.base, "stdlib_readable": worker.stdlib_readable,
           "python": sys.version.split()[0], "protections": worker.protections, "code": CODE})
    if "--probe" in sys.argv:
        worker.close()
        return
    reader = Reader()
    try:
        while True:
            try:
                sizes = PREFIX.unpack(reader.read(PREFIX.size))
                header = json.loads(bytes(reader.read(sizes[0])))
            except EOFError:
                break
            header["body_len"] = sizes[1]
            try:
                result, clean = worker.run(header, reader)
            except Exception as e:  # a bug or resource failure in the worker itself: a harness error
                result, clean = {"status": "error", "n_tests": header.get("n_tests", 0), "n_passed": 0,
                                 "failing_index": None, "message": f"sandbox worker error: {e!r}"[:300]}, False
            result["clean"] = clean
            _send(result)
            if not clean:
                break
    finally:
        worker.close()


def _send(obj):
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(1, data):]


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--kill-uid":  # used by the parent after killing a stuck worker
        kill_uid((int(sys.argv[2]), int(sys.argv[2])))
    else:
        main()
