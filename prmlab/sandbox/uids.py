"""Root-side helpers of the sandbox worker: a per-worker uid, the standard library made readable to it, and killing
what a program left behind without a PID namespace (stdlib + ctypes; imported by :mod:`prmlab.sandbox.worker`)."""

import fcntl
import os
import signal
import sys

UID_BASE = 62000
"""First uid/gid tried for sandboxed programs; a worker locks one uid of [UID_BASE, UID_BASE + UID_RANGE)."""
UID_RANGE = 2000
LOCK_DIR = "/tmp/prmlab-sandbox-locks"
WORK_TMPFS_MB = 256
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000


def acquire_uid():
    """Lock a uid no other worker on this machine uses: ``(lock fd, (uid, gid))``, or ``(None, None)``."""
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
        return fd, (uid, uid)
    return None, None


def probe_uid(uid):
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


def _private_mounts(libc, have_ns):
    """A private mount namespace for this worker (never the caller's); True on success."""
    if have_ns:
        return True
    return (libc is not None and libc.unshare(CLONE_NEWNS) == 0
            and libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0)


def expose_stdlib(libc, ns):
    """Make the interpreter's files readable to the sandbox uid when a private directory (e.g. /root) hides them.

    In the worker's private mount namespace an empty tmpfs covers the first ancestor of ``sys.base_prefix`` that
    others cannot traverse, and ``sys.base_prefix`` is bind-mounted back, read-only, at its own path.
    """
    if libc is None:
        return False
    prefix = os.path.realpath(sys.base_prefix)
    parts = prefix.strip("/").split("/")
    hidden = next(("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)
                   if not os.stat("/" + "/".join(parts[:i])).st_mode & 0o001), None)
    if hidden is None or not _private_mounts(libc, ns.get("mount_namespace")):
        return False
    src = os.open(prefix, os.O_PATH | os.O_DIRECTORY)  # opened before hiding
    try:
        if libc.mount(b"tmpfs", hidden.encode(), b"tmpfs", 0, b"mode=0755,size=1m") != 0:
            return False
        os.makedirs(prefix, 0o755, exist_ok=True)
        target = prefix.encode()
        if libc.mount(f"/proc/self/fd/{src}".encode(), target, None, MS_BIND | MS_REC, None) != 0:
            return False
        libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        libc.mount(None, hidden.encode(), None, MS_REMOUNT | MS_RDONLY, None)
        return True
    finally:
        os.close(src)


def private_tmpfs(libc, base):
    """Without namespaces, as root: a size-capped tmpfs on ``base`` in a private mount namespace (metadata
    operations on a shared disk can take milliseconds each). True when mounted."""
    if not _private_mounts(libc, False):
        return False
    opts = f"mode=0711,size={WORK_TMPFS_MB}m,nr_inodes=65536".encode()
    return libc.mount(b"tmpfs", base.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0


def kill_uid(creds):
    """SIGKILL every process of the sandbox uid, from a short-lived process running as that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(creds[1])
            os.setuid(creds[0])
            os.kill(-1, signal.SIGKILL)  # every process of this uid except this one
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def kill_descendants(me):
    """Not root, no PID namespace: SIGKILL every live descendant of ``me`` found in /proc (races with forks)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                parent[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    mine = set()
    for pid in parent:
        p, seen = pid, 0
        while p in parent and p != me and seen < 1000:
            p, seen = parent[p], seen + 1
        if p == me and pid != me:
            mine.add(pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
