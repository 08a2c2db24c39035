"""The child side of prmlab's sandbox: set up the forked process, then run program, test setup and tests.

Imported by :mod:`prmlab.sandbox_worker` (stdlib only, like it). Everything here runs in the forked child, after
``setsid`` and before/while untrusted code runs; see the worker's docstring for the whole protocol.
"""

import os
import resource
import signal

RESULT_FD = 3
"""File descriptor of the result pipe inside the child."""
MAX_OPEN_FILES = 256
SETUP_FAILED = 71
"""Exit status of a child whose sandbox setup failed before the program ran (72: the result pipe broke)."""
MSG_CHARS = 300
PR_SET_PDEATHSIG = 1

def _prctl(libc, option, value):
    return libc.prctl(option, value, 0, 0, 0) if libc is not None else -1


def _describe(e, type_=type, str_=str, base_exc=BaseException):
    """``Type: message (program line N)``, one line, at most MSG_CHARS characters."""
    try:
        text = type_(e).__name__ + ": " + str_(e)
    except base_exc:
        text = "exception (unprintable)"
    tb, line = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None:
        text += f" (program line {line})"
    return " ".join(text.split())[:MSG_CHARS] or "error"


def _run_stdin(text, code):
    """Run the program as a script with ``text`` as stdin; return what it printed (for stdin tasks)."""
    import builtins
    import io
    import sys

    old = sys.stdin, sys.stdout
    out = io.BytesIO()
    new = io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8"), io.TextIOWrapper(out, encoding="utf-8")
    sys.stdin, sys.stdout = new
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    finally:
        sys.stdin, sys.stdout = old
        new[1].flush()
    return out.getvalue().decode("utf-8", "replace")  # read while ``new`` still holds the wrappers open


def _harness(job, nonce, safe_builtins):
    """Run program, test setup and tests; report each step as ``<nonce> <pid> <kind> ...`` on RESULT_FD.

    Kinds: ``S`` (sandbox ready), ``P ok msg`` (program ran), ``T i ok msg`` (test i), ``D`` (done). Everything
    the harness needs is bound to locals before untrusted code runs, so a program that replaces builtins, closes
    fds 0-2 or raises SystemExit cannot forge a pass. ``safe_builtins`` is a copy of the builtins made by the
    worker before any program ran (made there once, because copying it in every child costs page faults).
    """
    import builtins

    describe, run_stdin = _describe, _run_stdin
    write, getpid, exit_ = os.write, os.getpid, os._exit
    base_exc, compile_, exec_, dict_, str_, len_ = BaseException, compile, exec, dict, str, len
    pid = getpid()

    def report(*parts):
        line = " ".join((nonce, str_(getpid())) + parts) + "\n"
        try:
            write(RESULT_FD, line.encode("utf-8", "replace"))
        except base_exc:
            exit_(SETUP_FAILED + 1)

    report("S")
    try:
        code = compile_(job["program"], "<program>", "exec", dont_inherit=True, optimize=0)
        ns = {"__name__": "__prmlab_program__", "__builtins__": builtins}
        if job.get("mode") == "stdin":
            ns = {"_prmlab_run_stdin": lambda text: run_stdin(text, code)}
        else:
            exec_(code, ns)
    except base_exc as e:
        report("P", "0", describe(e))
        report("D")
        exit_(0)
    report("P", "1", "")
    # Tests see the program's names but the real builtins (a program-defined ``type`` cannot fool them).
    tns = {k: v for k, v in ns.items() if k not in safe_builtins}
    tns["__builtins__"] = safe_builtins
    tns["__name__"] = "__prmlab_tests__"
    try:
        exec_(compile_(job["setup"], "<test_setup>", "exec", dont_inherit=True, optimize=0), tns)
    except base_exc as e:
        for i in range(len_(job["tests"])):
            report("T", str_(i), "0", "test setup raised " + describe(e))
        report("D")
        exit_(0)
    for i, test in enumerate(job["tests"]):
        try:
            exec_(compile_(test, f"<test {i}>", "exec", dont_inherit=True, optimize=0), dict_(tns))
            report("T", str_(i), "1", "")
        except base_exc as e:
            report("T", str_(i), "0", describe(e))
    if getpid() == pid:
        report("D")
    exit_(0)


def _child(job, nonce, res_w, out_w, workdir, creds, libc, safe_builtins):
    """Set up the sandboxed process (never returns)."""
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(res_w, RESULT_FD)
        os.closerange(RESULT_FD + 1, 1 << 16)
        os.chdir(workdir)  # HOME and TMPDIR are "." (set once in the worker: editing the environment here is slow)
        lim = job["limits"]
        mib = 1 << 20
        for res, soft, hard in ((resource.RLIMIT_CORE, 0, 0),
                                (resource.RLIMIT_CPU, lim["cpu_time_s"], lim["cpu_time_s"] + 1),
                                (resource.RLIMIT_AS, lim["memory_mb"] * mib, lim["memory_mb"] * mib),
                                (resource.RLIMIT_FSIZE, lim["max_file_mb"] * mib, lim["max_file_mb"] * mib),
                                (resource.RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES),
                                (resource.RLIMIT_NPROC, lim["nproc"], lim["nproc"])):
            resource.setrlimit(res, (soft, hard))
        if creds is not None:
            os.setgroups([])
            os.setgid(creds[1])
            os.setuid(creds[0])
        _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    except BaseException:
        os._exit(SETUP_FAILED)
    try:
        _harness(job, nonce, safe_builtins)
    finally:
        os._exit(SETUP_FAILED + 2)
