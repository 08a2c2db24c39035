"""Kernel isolation of the sandbox worker: namespaces, read-only mounts, Landlock and capabilities (stdlib + ctypes).

Imported by :mod:`prmlab.sandbox.worker` as a top-level module (no prmlab imports). The worker calls
:func:`enter_namespaces` once, before it forks the process that serves jobs; every program's process then calls
:func:`confine` before any untrusted code runs. What the kernel refused is recorded, never hidden: the worker
reports :func:`protection_flags` in its ``hello`` line and the parent turns them into
:class:`prmlab.sandbox.protections.Protections`.

* **Namespaces.** Not root: an unprivileged user namespace (the user's own uid and gid mapped to themselves) with
  private mount, PID and network namespaces. Root: the same mount, PID and network namespaces without a user
  namespace (programs then also drop to a per-worker uid). Inside: every mount is made read-only (recursively,
  ``mount_setattr``), ``/tmp``, ``/var/tmp`` and ``/dev/shm`` become small private tmpfs mounts, ``/run`` an empty
  read-only one (it holds the user's and the system's Unix sockets), and the worker's base directory a private
  tmpfs. The network namespace has only a loopback interface that is down: nothing is reachable, not even
  127.0.0.1, and abstract Unix sockets of the host are invisible.
* **Landlock** (any uid, ABI >= 1): a ruleset built once by the worker; writes are allowed only beneath the
  worker's base directory (and the private temporary directories when the mount namespace made them), TCP bind
  and connect are denied (ABI >= 4), and signals and abstract Unix sockets are scoped to the program's own
  processes (ABI >= 6). Each process enters its own Landlock domain, so the program cannot signal the process that
  judges its tests.
"""

import ctypes
import os

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, SYS_LANDLOCK_CREATE, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT = 442, 444, 445, 446
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1
PR_SET_DUMPABLE = 4
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
"""Directories that get a private, writable tmpfs of their own inside the mount namespace."""
HIDDEN = ("/run",)
"""Directories covered by an empty read-only tmpfs (Unix sockets of the user's session and of system daemons)."""
TMPFS_MB = 256
"""Size of each private tmpfs (files also obey RLIMIT_FSIZE)."""
FS_WRITE_RIGHTS = {1: 0b1_1111_1111_0010, 2: 1 << 13, 3: 1 << 14}
"""Landlock write-type filesystem rights by the ABI that introduced them (write_file, remove_*, make_*; refer;
truncate). Reading and executing are not restricted."""
FILE_RIGHTS = (1 << 1) | (1 << 14)
"""Rights that may be granted on a single file (write_file, truncate)."""
NET_TCP = 0b11
"""bind_tcp | connect_tcp (ABI 4)."""
SCOPE_ALL = 0b11
"""abstract Unix sockets | signals (ABI 6)."""
WRITABLE_DEVICES = ("/dev/null", "/dev/zero")


def load_libc():
    """glibc through ctypes, or None."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def disabled():
    """Protections switched off by ``PRMLAB_SANDBOX_DISABLE`` (comma list of ``namespaces``, ``landlock``): used by
    the tests and the self-test to measure the weaker modes; never set it otherwise."""
    return {s.strip() for s in os.environ.get("PRMLAB_SANDBOX_DISABLE", "").split(",") if s.strip()}


def _mount(libc, src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    return libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) == 0


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces(libc, base, as_root):
    """Move this process into fresh mount, PID (for its children) and network namespaces, plus a user namespace when
    not root; make the file system read-only except private tmpfs mounts. Returns the flags that took effect
    (empty when the namespaces are unavailable, then nothing was changed)."""
    if libc is None or "namespaces" in disabled():
        return {}
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | (0 if as_root else CLONE_NEWUSER)
    if libc.unshare(flags) != 0:
        return {}
    got = {"user_namespace": not as_root, "mount_namespace": True, "pid_namespace": True, "network_namespace": True}
    if not as_root:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    if not _mount(libc, None, "/", None, MS_REC | MS_PRIVATE):
        raise OSError(ctypes.get_errno(), "could not make the mount namespace private")
    got["read_only_root"] = _read_only_recursive(libc, "/")
    got["private_tmp"] = all(_tmpfs(libc, d, 0o1777) for d in PRIVATE_TMP if _real_dir(d))
    got["hidden_run"] = all(_tmpfs(libc, d, 0o755, read_only=True) for d in HIDDEN if _real_dir(d))
    os.makedirs(base, mode=0o711, exist_ok=True)
    if not _tmpfs(libc, base, 0o711):
        raise OSError(ctypes.get_errno(), "could not mount the work directory's tmpfs")
    return got


def _real_dir(path):
    return os.path.isdir(path) and not os.path.islink(path)


def _tmpfs(libc, path, mode, read_only=False):
    opts = f"mode={mode:o},size={4 if read_only else TMPFS_MB << 10}k,nr_inodes=65536"
    flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    return _mount(libc, b"tmpfs", path, b"tmpfs", flags, opts)


def _read_only_recursive(libc, path):
    """Every mount at and below ``path`` read-only (mount_setattr, Linux 5.12+)."""

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    return libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr),
                        ctypes.sizeof(attr)) == 0


def mount_proc(libc):
    """A fresh /proc for the new PID namespace (called by its first process): only the sandbox's processes show."""
    return _mount(libc, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


# ------------------------------------------------------------------------------------------------- Landlock
def landlock_abi(libc):
    """The kernel's Landlock ABI version, 0 when unavailable or disabled."""
    if libc is None or "landlock" in disabled():
        return 0
    abi = libc.syscall(SYS_LANDLOCK_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(abi), 0)


def landlock_ruleset(libc, abi, writable):
    """A ruleset fd allowing writes only beneath ``writable`` directories (and to /dev/null), denying TCP and scoping
    signals when the ABI allows; None without Landlock. Built once; each process applies it with :func:`confine`."""
    if abi < 1:
        return None
    fs = sum(bits for v, bits in FS_WRITE_RIGHTS.items() if v <= abi)
    net = NET_TCP if abi >= 4 else 0
    scope = SCOPE_ALL if abi >= 6 else 0
    attr = (ctypes.c_uint64 * 3)(fs, net, scope)
    size = 8 * (3 if abi >= 6 else 2 if abi >= 4 else 1)
    fd = libc.syscall(SYS_LANDLOCK_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return None
    for path, rights in [(d, fs) for d in writable] + [(d, fs & FILE_RIGHTS) for d in WRITABLE_DEVICES]:
        _landlock_allow(libc, fd, path, rights)
    os.set_inheritable(fd, False)
    return fd


def _landlock_allow(libc, ruleset, path, rights):
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    buf = (ctypes.c_char * 12).from_buffer_copy(rights.to_bytes(8, "little") + target.to_bytes(4, "little", signed=True))
    try:
        libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(buf), 0)  # LANDLOCK_RULE_PATH_BENEATH
    finally:
        os.close(target)


# -------------------------------------------------------------------------------------------- per process
def confinement(libc, ruleset, userns):
    """The system calls that confine one process, prepared once by the worker: ``((function, args, what), ...)``
    that drop every capability (in a user namespace the worker holds all of them there; with a non-zero uid,
    ``execve`` cannot give them back, and NO_NEW_PRIVS blocks setuid and file caps) and enter a new Landlock domain.
    Each forked process applies them with :func:`confine`; building the ``ctypes`` arguments there would cost it
    copied pages."""
    calls = []
    if userns:
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # no capability in any set
        capset = libc.capset if libc is not None else _unavailable
        calls.append((capset, (ctypes.byref(header), ctypes.byref(data)), "capset failed"))
    if ruleset is not None:
        calls.append((libc.syscall, (SYS_LANDLOCK_RESTRICT, ruleset, 0), "landlock_restrict_self failed"))
    return tuple(calls)


def _unavailable(*args):
    return -1


def confine(calls, get_errno=ctypes.get_errno):
    """Apply the per-process protections the worker prepared (:func:`confinement`). Raises OSError when one cannot
    be applied (the process then reports a setup failure rather than run unprotected)."""
    for call, args, what in calls:
        if call(*args) != 0:
            raise OSError(get_errno(), what)


def protection_flags(ns, abi, ruleset, as_root, uid_isolation):
    """What the worker achieved, as plain JSON-able flags (see prmlab.sandbox.protections)."""
    return {"as_root": as_root, "uid_isolation": uid_isolation, "user_namespace": ns.get("user_namespace", False),
            "mount_namespace": ns.get("mount_namespace", False), "pid_namespace": ns.get("pid_namespace", False),
            "network_namespace": ns.get("network_namespace", False),
            "read_only_root": ns.get("read_only_root", False), "private_tmp": ns.get("private_tmp", False),
            "hidden_run": ns.get("hidden_run", False), "landlock_abi": abi if ruleset is not None else 0,
            "landlock_fs": ruleset is not None, "landlock_net": ruleset is not None and abi >= 4,
            "landlock_scope": ruleset is not None and abi >= 6}
