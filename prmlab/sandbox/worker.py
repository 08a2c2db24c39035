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
import verdict  # noqa: E402
import wire  # noqa: E402,F401  (imported here once, so each forked process finds it loaded)
import uids  # noqa: E402
from uids import kill_descendants, kill_uid  # noqa: E402

del sys.path[0]  # programs must not import prmlab's modules as top-level names

PREFIX = struct.Struct(">II")
MAX_REPORT_BYTES = 4 << 20
"""At most this much of the verdict pipe is read."""
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "random",
           "copy", "hashlib", "fractions", "statistics", "operator", "io", "pickle", "types", "decimal", "datetime")
"""Standard-library modules imported once by the worker, so that each forked process finds them in sys.modules
(most HumanEval/MBPP programs and tests import some of them)."""


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
        self.ruleset = isolation.landlock_ruleset(self.libc, self.abi, writable)
        self.protections = isolation.protection_flags(self.ns, self.abi, self.ruleset, self.as_root,
                                                      self.creds is not None)
        self.counter, self.previous = 0, None
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

    # -- one job ---------------------------------------------------------------------------------------------
    def run(self, header, reader):
        self.counter += 1
        workdir = os.path.join(self.base, str(self.counter))  # a fresh, empty directory for every run
        os.mkdir(workdir, 0o700)
        if self.creds is not None:
            os.chown(workdir, *self.creds)
        out_r, out_w = os.pipe()
        ver_r, ver_w = os.pipe()
        chan_p, chan_t = (s.detach() for s in socket.socketpair())
        lim, t0 = header["limits"], time.monotonic()
        setup = (lim, workdir, out_w)
        pid_p = os.fork()
        if pid_p == 0:
            self._child(setup, [chan_p], lambda: harness.program_process(3, self.safe_builtins))
        os.close(chan_p)
        body = reader.read(header["body_len"])  # only now: the program's process never held the tests
        pid_t = os.fork()
        if pid_t == 0:
            self._child(setup, [ver_w, chan_t], lambda: harness.runner_process(bytes(body), 4, 3, self.safe_builtins),
                        runner=True)
        reader.wipe()
        for fd in (out_w, ver_w, chan_t):
            os.close(fd)
        if self.previous is not None:  # removed while this program runs
            shutil.rmtree(self.previous, ignore_errors=True)
        self.previous = workdir
        try:
            p, t, timed_out, report, output = self._wait((pid_p, pid_t), ver_r, out_r, lim, t0)
        finally:
            os.close(ver_r)
            os.close(out_r)
        duration = time.monotonic() - t0
        survivors = self._reap()
        clean = self._clean()
        if self.creds is not None:
            os.chown(workdir, 0, 0)  # 0700 root: the next program (same uid) cannot look inside
        self._wipe_tmp()
        result = verdict.verdict(header, p, t, timed_out, survivors, report, output)
        result.update(duration_s=duration, cpu_s=sum(u.ru_utime + u.ru_stime for _, u in (p, t) if u))
        return result, clean

    def _child(self, setup, keep, main, runner=False):
        """In a forked process: set up (exit 71 on failure), then run ``main`` (never returns)."""
        try:
            harness.setup_process(*setup, keep, self.creds, self.libc, self.ruleset, self.ns.get("user_namespace"))
            if runner:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                harness._prctl(self.libc, harness.PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<pid>/fd or mem
        except BaseException:
            os._exit(harness.SETUP_FAILED)
        try:
            main()
        finally:
            os._exit(harness.SETUP_FAILED + 2)

    def _wait(self, pids, ver_r, out_r, lim, t0):
        """Drain both pipes until both processes exit or the wall clock runs out; on timeout kill everything."""
        pidfds = {}
        for pid in pids:
            try:
                pidfds[os.pidfd_open(pid)] = pid
            except (AttributeError, OSError):
                pass
        poller = select.poll()
        for fd in (ver_r, out_r, *pidfds):
            poller.register(fd, select.POLLIN)
        report, output, timed_out, exited = bytearray(), bytearray(), False, {}
        deadline = t0 + lim["timeout_s"]
        try:
            while len(exited) < len(pids):
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    for pid in pids:
                        if pid not in exited:
                            _kill_group(pid)
                            exited[pid] = os.wait4(pid, 0)[1:]
                    break
                wait_ms = left * 1000 if len(pidfds) == len(pids) else min(left * 1000, 2)
                for fd, _ in poller.poll(max(1, int(wait_ms))):
                    if fd in pidfds:
                        poller.unregister(fd)
                        continue
                    data = os.read(fd, 1 << 16)
                    if not data:
                        poller.unregister(fd)
                    elif fd == ver_r and len(report) < MAX_REPORT_BYTES:
                        report += data
                    elif fd == out_r and len(output) < lim["max_output_bytes"]:
                        output += data[: lim["max_output_bytes"] - len(output)]
                for pid in pids:
                    if pid not in exited:
                        done = os.wait4(pid, os.WNOHANG)
                        if done[0] != 0:
                            exited[pid] = done[1:]
        finally:
            for fd in pidfds:
                os.close(fd)
        report += _drain(ver_r, MAX_REPORT_BYTES - len(report))
        return exited[pids[0]], exited[pids[1]], timed_out, bytes(report), bytes(output)

    def close(self):
        self._clean()
        if self.tmpfs:
            self.libc.umount2(self.base.encode(), 2)  # MNT_DETACH
        shutil.rmtree(self.base, ignore_errors=True)


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _drain(fd, limit):
    os.set_blocking(fd, False)
    out = bytearray()
    try:
        while len(out) < limit:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            out += data
    except BlockingIOError:
        pass
    return bytes(out)


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
           "python": sys.version.split()[0], "protections": worker.protections})
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
