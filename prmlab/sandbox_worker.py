"""The sandbox worker: a small, long-lived, stdlib-only interpreter that runs untrusted programs for prmlab.

:mod:`prmlab.sandbox` starts it with ``subprocess`` as ``python -I -S -B sandbox_worker.py`` (never a fork of the
caller, which may hold a model, CUDA or a Jupyter kernel). It imports nothing from prmlab and nothing heavy, so
forking it is cheap (well under a millisecond of copying). For every job it:

1. forks a fresh child, which calls ``setsid`` (own session and process group), moves into a fresh empty working
   directory, sets rlimits (CPU, AS, NPROC, FSIZE, NOFILE, CORE=0), and, when the worker runs as root, drops to
   an unprivileged uid/gid owned by this worker alone (so RLIMIT_NPROC applies and it cannot signal the worker);
2. the child runs the program, then ``test_setup``, then each test case in its own namespace, and reports every
   step on a dedicated pipe, each line tagged with a per-run random nonce and the child's pid;
3. the worker enforces the wall-clock timeout, drains the output pipe (keeping at most ``max_output_bytes``),
   and afterwards kills every process the program left (``kill(-1)`` as the sandbox uid; or, not as root, every
   descendant found in /proc, the worker being a child subreaper) and removes the working directory.

A run passes only on a positive signal: a nonce-tagged "done" line written by the child's own pid after the last
test, exit status 0, and no process left behind. Protocol: one JSON object per line, jobs on stdin, a ``hello``
line and then one result per job on stdout.
"""

import ctypes
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sandbox_harness import MSG_CHARS, SETUP_FAILED, _child, _prctl  # noqa: E402  (stdlib-only sibling module)

del sys.path[0]  # programs must not import prmlab's modules as top-level names

UID_BASE = 62000
"""First uid/gid tried for sandboxed programs; a worker locks one uid of [UID_BASE, UID_BASE + UID_RANGE)."""
UID_RANGE = 2000
LOCK_DIR = "/tmp/prmlab-sandbox-locks"
MAX_REPORT_BYTES = 4 << 20
"""At most this much of the result pipe is read (a program spamming it cannot exhaust the worker's memory)."""
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
WORK_TMPFS_MB = 256
"""Size of the private tmpfs holding the working directories (as root); files also obey RLIMIT_FSIZE."""
PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "random",
           "copy", "hashlib", "fractions", "statistics", "operator", "io")
"""Standard-library modules imported once by the worker, so that each forked program finds them in sys.modules
instead of importing them again (most HumanEval/MBPP programs and tests import some of them). Importing them
before any program runs has no effect a program could observe beyond timing."""



# ---------------------------------------------------------------------------------------------- worker side
class Worker:
    """One worker: its uid (root) or descendant tracking (not root), a base directory, and the job loop."""

    def __init__(self):
        self.libc = self._load_libc()
        self.subreaper = _prctl(self.libc, PR_SET_CHILD_SUBREAPER, 1) == 0
        self.lock_fd = None
        self.private_ns = None
        self.tmpfs = False
        self.stdlib_readable = True
        self.creds = self._acquire_uid() if os.geteuid() == 0 else None
        self.base = self._make_base()
        self.counter = 0
        self.previous = None
        import builtins

        self.safe_builtins = dict(builtins.__dict__)  # what tests see as builtins, whatever a program changes
        os.environ.clear()  # the child inherits this environment; changing it there would cost copy-on-write faults
        os.environ.update(HOME=".", TMPDIR=".", PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")  # "." = the run's dir
        _prctl(self.libc, PR_SET_NO_NEW_PRIVS, 1)  # inherited by every child: setuid binaries cannot raise privileges
        if self.creds is not None:
            self._kill_uid()  # leftovers of a worker that died while holding this uid

    @staticmethod
    def _load_libc():
        try:
            return ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None

    def _acquire_uid(self):
        """Lock a uid no other worker on this machine uses; None (descendant tracking) if setuid fails."""
        import pwd

        os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
        for uid in range(UID_BASE, UID_BASE + UID_RANGE):
            try:
                pwd.getpwuid(uid)
                continue  # a real user
            except KeyError:
                pass
            fd = os.open(os.path.join(LOCK_DIR, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.lock_fd = fd
            probe = self._probe_uid(uid)
            if probe == 2 and self._expose_stdlib():
                probe = self._probe_uid(uid)
            self.stdlib_readable = probe == 0
            return (uid, uid) if probe in (0, 2) else None
        return None

    @staticmethod
    def _probe_uid(uid):
        """0: the uid works and can read the stdlib; 2: it cannot read the stdlib; 1: setuid failed."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os._exit(0 if os.access(os.__file__, os.R_OK) else 2)
            except BaseException:
                os._exit(1)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def _expose_stdlib(self):
        """Make the interpreter's files readable to the sandbox uid when a private directory (e.g. /root) hides them.

        In a private mount namespace of this worker (and so of its children, never of the caller), an empty
        tmpfs covers the first ancestor of ``sys.base_prefix`` that others cannot traverse, and ``sys.base_prefix``
        is bind-mounted back, read-only, at its own path. Everything else in that directory stays hidden.
        """
        if self.libc is None:
            return False
        prefix = os.path.realpath(sys.base_prefix)
        parts = prefix.strip("/").split("/")
        hidden = next(("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)
                       if not os.stat("/" + "/".join(parts[:i])).st_mode & 0o001), None)
        if hidden is None:
            return False
        ms_rdonly, ms_remount, ms_bind, ms_rec = 1, 32, 4096, 16384
        if not self._private_mounts():
            return False
        src = os.open(prefix, os.O_PATH | os.O_DIRECTORY)  # opened inside the new namespace, before hiding
        try:
            if self.libc.mount(b"tmpfs", hidden.encode(), b"tmpfs", 0, b"mode=0755,size=1m") != 0:
                return False
            os.makedirs(prefix, 0o755, exist_ok=True)
            target = prefix.encode()
            if self.libc.mount(f"/proc/self/fd/{src}".encode(), target, None, ms_bind | ms_rec, None) != 0:
                return False
            self.libc.mount(None, target, None, ms_remount | ms_bind | ms_rdonly, None)
            self.libc.mount(None, hidden.encode(), None, ms_remount | ms_rdonly, None)
            return True
        finally:
            os.close(src)

    def _private_mounts(self):
        """Give this worker (and its children, never the caller) a private mount namespace; True on success."""
        if self.private_ns is None:
            ok = self.libc is not None and os.geteuid() == 0 and self.libc.unshare(0x00020000) == 0  # CLONE_NEWNS
            # MS_REC | MS_PRIVATE: nothing mounted here propagates back
            self.private_ns = ok and self.libc.mount(None, b"/", None, 16384 | (1 << 18), None) == 0
        return self.private_ns

    def _make_base(self):
        """The directory holding each run's working directory: a private, size-capped tmpfs when root (metadata
        operations on a shared disk can take milliseconds each), else a directory under /tmp."""
        root = os.environ.get("PRMLAB_SANDBOX_TMP") or "/tmp"
        base = os.path.join(root, f"prmlab-sandbox-{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(base, 0o711 if self.creds else 0o700)
        if self.creds is not None and self._private_mounts():
            opts = f"mode=0711,size={WORK_TMPFS_MB}m,nr_inodes=65536".encode()
            self.tmpfs = self.libc.mount(b"tmpfs", base.encode(), b"tmpfs", 2 | 4, opts) == 0  # MS_NOSUID|MS_NODEV
        return base

    # -- cleanup --------------------------------------------------------------------------------------------
    def _kill_uid(self):
        """SIGKILL every process of the sandbox uid, from a short-lived process running as that uid."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(self.creds[1])
                os.setuid(self.creds[0])
                os.kill(-1, signal.SIGKILL)  # every process of this uid except this one
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(pid, 0)

    def _kill_descendants(self):
        """Not root: SIGKILL every live descendant of the worker found in /proc (weaker: races with forks)."""
        parent = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        stat = f.read()
                    parent[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
                except (OSError, ValueError):
                    pass
        me, mine = os.getpid(), set()
        for pid in parent:
            p, seen = pid, 0
            while p in parent and p != me and seen < 1000:
                p, seen = parent[p], seen + 1
            if p == me and pid != me:
                mine.add(pid)
        for pid in mine:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

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

    def _clean(self, deadline_s=10.0):
        """Kill and reap until no descendant is left; False if that failed (the worker then exits)."""
        end = time.monotonic() + deadline_s
        while self._reap():
            if time.monotonic() > end:
                return False
            self._kill_uid() if self.creds is not None else self._kill_descendants()
            time.sleep(0.001)
        return True

    # -- one job ---------------------------------------------------------------------------------------------
    def run(self, job):
        self.counter += 1
        workdir = os.path.join(self.base, str(self.counter))  # a fresh, empty directory for every run
        os.mkdir(workdir, 0o700)
        if self.creds is not None:
            os.chown(workdir, *self.creds)
        nonce = os.urandom(16).hex()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(job, nonce, res_w, out_w, workdir, self.creds, self.libc, self.safe_builtins)
        os.close(res_w)
        os.close(out_w)
        if self.previous is not None:  # removed while this program runs (rmdir can take milliseconds)
            shutil.rmtree(self.previous, ignore_errors=True)
        self.previous = workdir
        try:
            status, rusage, timed_out, report, output = self._wait(pid, res_r, out_r, job["limits"], t0)
        finally:
            os.close(res_r)
            os.close(out_r)
        duration = time.monotonic() - t0
        survivors = self._reap()
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        clean = self._clean()
        if self.creds is not None:
            os.chown(workdir, 0, 0)  # 0700 root: the next program (same uid) cannot look inside
        result = _verdict(job, nonce, pid, status, rusage, timed_out, survivors, report, output)
        result.update(duration_s=duration, cpu_s=rusage.ru_utime + rusage.ru_stime if rusage else 0.0)
        return result, clean

    def _wait(self, pid, res_r, out_r, lim, t0):
        """Drain both pipes until the child exits or the wall clock runs out; kill the group on timeout."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        poller = select.poll()
        for fd in (res_r, out_r) + ((pidfd,) if pidfd is not None else ()):
            poller.register(fd, select.POLLIN)
        report, output, timed_out, exited = bytearray(), bytearray(), False, None
        deadline = t0 + lim["timeout_s"]
        try:
            while exited is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        os.kill(pid, signal.SIGKILL)
                    exited = os.wait4(pid, 0)
                    break
                wait_ms = left * 1000 if pidfd is not None else min(left * 1000, 2)
                for fd, _ in poller.poll(max(1, int(wait_ms))):
                    if fd == pidfd:
                        continue
                    data = os.read(fd, 1 << 16)
                    if not data:
                        poller.unregister(fd)
                    elif fd == res_r and len(report) < MAX_REPORT_BYTES:
                        report += data
                    elif fd == out_r and len(output) < lim["max_output_bytes"]:
                        output += data[: lim["max_output_bytes"] - len(output)]
                done = os.wait4(pid, os.WNOHANG)
                if done[0] != 0:
                    exited = done
        finally:
            if pidfd is not None:
                os.close(pidfd)
        os.set_blocking(res_r, False)
        try:
            while len(report) < MAX_REPORT_BYTES:
                data = os.read(res_r, 1 << 16)
                if not data:
                    break
                report += data
        except BlockingIOError:
            pass
        return exited[1], exited[2], timed_out, bytes(report), bytes(output)

    def close(self):
        self._clean()
        if self.tmpfs:
            self.libc.umount2(self.base.encode(), 2)  # MNT_DETACH; the files vanish with the tmpfs
        shutil.rmtree(self.base, ignore_errors=True)


def _parse(report, nonce, pid):
    """Lines of the report written by the child itself (right nonce and pid), split into fields."""
    prefix = f"{nonce} {pid} "
    out = []
    for line in report.decode("utf-8", "replace").split("\n"):
        if line.startswith(prefix):
            out.append(line[len(prefix):].split(" ", 3))
    return out


def _verdict(job, nonce, pid, status, rusage, timed_out, survivors, report, output):
    """Turn what the worker observed into a typed result (see prmlab.sandbox for the rules)."""
    n_tests = len(job["tests"])
    ready, program, tests, done = False, None, {}, False
    for f in _parse(report, nonce, pid):
        if f[0] == "S":
            ready = True
        elif f[0] == "P" and program is None and len(f) >= 2:
            program = (f[1] == "1", " ".join(f[2:]))
        elif f[0] == "T" and len(f) >= 3 and f[1].isdigit() and int(f[1]) < n_tests and int(f[1]) not in tests:
            tests[int(f[1])] = (f[2] == "1", f[3] if len(f) > 3 else "")
        elif f[0] == "D":
            done = True
    n_passed = sum(ok for ok, _ in tests.values())
    failing = next((i for i in range(n_tests) if not tests.get(i, (False,))[0]), None)
    code = os.waitstatus_to_exitcode(status)
    res = {"n_tests": n_tests, "n_passed": n_passed, "failing_index": None, "message": None}
    cpu = rusage.ru_utime + rusage.ru_stime if rusage else 0.0
    if not ready and code == SETUP_FAILED:
        return dict(res, status="error", n_passed=0, message="the sandbox could not set up the child process")
    if program is not None and not program[0]:
        res["message"] = "program raised " + program[1]
    elif failing is not None and program is not None:
        res["failing_index"] = failing
        res["message"] = tests[failing][1] if failing in tests else None
    if timed_out:
        return dict(res, status="timed_out", message=f"wall-clock timeout after {job['limits']['timeout_s']} s")
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= job["limits"]["cpu_time_s"]):
        return dict(res, status="timed_out", message=f"CPU time limit of {job['limits']['cpu_time_s']} s exceeded")
    if done and code == 0 and survivors:
        return dict(res, status="failed", n_passed=0,
                    message="the program left processes running after its tests (killed); this never passes")
    if done and code == 0:
        ok = program is not None and program[0] and n_passed == n_tests > 0
        return dict(res, status="passed" if ok else "failed")
    why = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    if code == SETUP_FAILED + 1:
        why = "closed or broke the sandbox's result pipe"
    last = output.decode("utf-8", "replace").strip().splitlines()[-1:] if output else []
    message = f"the program {'was ' if code < 0 else ''}{why} before its tests finished" + (f"; last output: {last[0][:MSG_CHARS]}" if last else "")
    return dict(res, status="crashed", message=message)


def main():
    worker = Worker()
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    import gc

    gc.freeze()  # objects that exist now are never scanned by a child's collector (fewer copy-on-write faults)
    hello = {"hello": 1, "pid": os.getpid(), "uid": worker.creds[0] if worker.creds else None,
             "subreaper": worker.subreaper, "base": worker.base, "stdlib_readable": worker.stdlib_readable, "python": sys.version.split()[0]}
    _send(hello)
    stdin = sys.stdin.buffer
    try:
        for line in stdin:
            job = json.loads(line)
            try:
                result, clean = worker.run(job)
            except Exception as e:  # a bug or resource failure in the worker itself: a harness error
                result, clean = {"status": "error", "n_tests": len(job.get("tests", ())), "n_passed": 0,
                                 "failing_index": None, "message": f"sandbox worker error: {e!r}"[:MSG_CHARS]}, True
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
        w = Worker.__new__(Worker)
        w.creds = (int(sys.argv[2]), int(sys.argv[2]))
        w._kill_uid()
    else:
        main()
