"""The two processes of one job: the program's process and the test runner (stdlib only).

Imported by :mod:`prmlab.sandbox.worker`. For every job the worker forks two fresh processes:

* the **program's process** (:func:`program_process`) receives the program's source from the runner, runs it and
  then serves the runner's requests: call this function, read that attribute. It never sees the tests: it is
  forked before the job is read, and the runner sends it only the program.
* the **test runner** (:func:`runner_loop`, one per worker, replaced after any timeout or leftover process) gets
  each job (program, test setup, tests) and its end of a fresh channel over its own Unix socket, runs the setup and
  each test in a fresh namespace whose program names are handles into the program's process
  (:mod:`prmlab.sandbox.wire`), and reports each step on the verdict pipe, which only it holds. It is not dumpable
  (the program cannot ptrace it or open its files through /proc) and, with Landlock ABI 6, outside the program's
  signal scope.

So the verdict comes from code the program cannot reach: replacing builtins, patching modules, walking frames or
``gc`` in its own process changes nothing the runner computes. What crosses from the program is plain data only.
Report lines (runner to worker): ``S`` (ready), ``P ok msg`` (program ran), ``T i ok msg`` (test i), ``D`` (done),
``E`` (end of this job's report).
"""

import os
import resource
import signal

import wire

SETUP_FAILED = 71
"""Exit status of a process whose sandbox setup failed (72: the program's process lost its channel)."""
MSG_CHARS = 300
MAX_OPEN_FILES = 256
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4


def _prctl(libc, option, value):
    return libc.prctl(option, value, 0, 0, 0) if libc is not None else -1


def setup_process(lim, workdir, out_w, keep, creds, libc, ruleset, userns):
    """Own session, stdin from /dev/null, stdout/stderr to the output pipe, ``keep`` fds moved to 3, 4, ..., all
    other fds closed, the work directory, rlimits, the sandbox uid (root), then :func:`isolation.confine`."""
    import fcntl

    import isolation

    os.setsid()
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in keep]  # out of the way of the targets 3, 4, ...
    ruleset = fcntl.fcntl(ruleset, fcntl.F_DUPFD, 64) if ruleset is not None else None
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
    os.chdir(workdir)  # HOME and TMPDIR are "." (set once in the worker)
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
    isolation.confine(libc, ruleset, userns)
    os.closerange(3 + len(keep), 1 << 16)
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it


def describe(e, type_=type, str_=str, base_exc=BaseException):
    """``Type: message (program line N)``, one line, at most MSG_CHARS characters."""
    try:
        text = type_(e).__name__ + ": " + str_(e)
    except base_exc:
        text = "exception (unprintable)"
    return " ".join(text.split())[:MSG_CHARS] or "error"


def _program_line(e):
    tb, line = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (program line {line})" if line is not None else ""


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
    return out.getvalue().decode("utf-8", "replace")


# ------------------------------------------------------------------------------------- the program's process
def program_process(chan, safe_builtins):
    """Run the program sent by the runner, then answer its requests until it says ``exit`` (never returns).

    Nothing here is trusted: the program can replace any of it. It is written so that an honest program is
    judged correctly; a dishonest one can at most send wrong values or break the channel (a failure or a crash).
    """
    import builtins
    import types

    send, recv, exit_ = wire.send, wire.recv, os._exit
    handles = {}

    def reply(message):
        try:
            send(chan, message, wire.ProgramPickler, handles)
        except OSError:
            exit_(SETUP_FAILED + 1)
        except BaseException as e:  # an unpicklable or too deep value
            send(chan, ("raise", type(e).__name__, str(e)[:MSG_CHARS]), wire.ProgramPickler, handles)

    try:
        _, program, mode = recv(chan, wire.ProgramUnpickler, handles)
    except BaseException:
        exit_(SETUP_FAILED + 1)
    ns, ran = {}, (True, "")
    try:
        code = compile(program, "<program>", "exec", dont_inherit=True, optimize=0)
        if mode == "stdin":
            ns = {"_prmlab_run_stdin": lambda text: _run_stdin(text, code)}
        else:
            ns = {"__name__": "__prmlab_program__", "__builtins__": builtins}
            exec(code, ns)
    except BaseException as e:
        ran = (False, describe(e) + _program_line(e))
    names = {k: v for k, v in ns.items() if not k.startswith("__") and k not in safe_builtins
             and not isinstance(v, types.ModuleType)}
    modules = {k: v.__name__ for k, v in ns.items() if isinstance(v, types.ModuleType) and not k.startswith("__")}
    reply(("ran", ran[0], ran[1], names if ran[0] else {}, modules if ran[0] else {}))
    ops = {"call": lambda o, a, k: o(*a, **k), "getattr": getattr, "list": list, "len": len,
           "getitem": lambda o, key: o[key]}
    while True:
        try:
            message = recv(chan, wire.ProgramUnpickler, handles)
        except BaseException:
            exit_(SETUP_FAILED + 1)
        if message[0] == "exit":
            exit_(0)
        try:
            result = ops[message[0]](handles[message[1][0]], *message[2:])
            args = message[2] if message[0] == "call" else ()
            changed = {i: a for i, a in enumerate(args) if type(a) in (list, dict, set, bytearray)}
            answer = ("ok", result, changed)
        except BaseException as e:
            answer = ("raise", type(e).__name__, (str(e) + _program_line(e))[:MSG_CHARS])
        reply(answer)


# --------------------------------------------------------------------------------------------- the test runner
def runner_loop(ctrl, verdict, safe_builtins):
    """The long-lived test runner of one worker: per job, read (body length, channel fd) and the body from ``ctrl``
    (a Unix socket to the worker), run it with :func:`run_job`, and end its report with ``E`` (never returns)."""
    import socket

    ctrl_sock = socket.socket(fileno=ctrl)
    write = os.write

    def report(*parts):
        write(verdict, (" ".join(parts) + "\n").encode("utf-8", "replace"))

    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctrl_sock, 8, 1)
            if len(data) < 8 or not fds:
                os._exit(0)  # the worker closed the control socket
            body = wire.read_exactly(ctrl, int.from_bytes(data, "big"))
        except (OSError, wire.ChannelClosed):
            os._exit(0)
        try:
            run_job(body, fds[0], report, safe_builtins)
        finally:
            os.close(fds[0])
        report("E")


def run_job(job, chan, report, safe_builtins):
    """Run the setup and tests of one job against the program's process behind ``chan``; ``report`` each step."""
    import json
    import sys

    base_exc, compile_, exec_, dict_, str_ = BaseException, compile, exec, dict, str
    job = json.loads(job)
    state = {"dead": False}

    rpc = _make_rpc(chan, state, safe_builtins)
    report("S")
    try:
        wire.send(chan, ("program", job["program"], job.get("mode")), wire.RunnerPickler)
        ran = wire.recv(chan, wire.RunnerUnpickler, rpc)
        kind, ok, message, names, modules = ran
        if kind != "ran" or type(names) is not dict or type(modules) is not dict:
            raise wire.ChannelClosed("protocol")
    except base_exc:
        return  # no "P" line: the program's process died or broke the channel before it ran
    if not ok:
        report("P", "0", str_(message)[:MSG_CHARS])
        return _finish(chan, report)
    report("P", "1", "")
    tns = {k: v for k, v in names.items() if type(k) is str and k.isidentifier() and not k.startswith("__")}
    for k, mod in modules.items():
        if type(k) is str and k.isidentifier() and type(mod) is str and mod.split(".")[0] in sys.stdlib_module_names:
            try:
                tns[k] = __import__(mod, fromlist=["_"])
            except base_exc:
                pass
    tns["__builtins__"] = safe_builtins
    tns["__name__"] = "__prmlab_tests__"
    try:
        exec_(compile_(job["setup"], "<test_setup>", "exec", dont_inherit=True, optimize=0), tns)
    except base_exc as e:
        if state["dead"]:
            return
        for i in range(len(job["tests"])):
            report("T", str_(i), "0", "test setup raised " + describe(e))
        return _finish(chan, report)
    for i, test in enumerate(job["tests"]):
        try:
            exec_(compile_(test, f"<test {i}>", "exec", dont_inherit=True, optimize=0), dict_(tns))
            outcome = ("1", "")
        except base_exc as e:
            outcome = ("0", describe(e))
        if state["dead"]:
            return  # the program's process is gone: no verdict for this test, and no "D"
        report("T", str_(i), *outcome)
    _finish(chan, report)


def _finish(chan, report):
    try:
        wire.send(chan, ("exit",), wire.RunnerPickler)
    except BaseException:
        pass
    report("D")


def _make_rpc(chan, state, safe_builtins):
    """The runner's side of a request: send it, read one reply of plain data, return it or raise its exception."""

    def rpc(op, hid, *args):
        if state["dead"]:
            raise wire.ChannelClosed("the program's process is gone")
        try:
            wire.send(chan, (op, hid) + args, wire.RunnerPickler)
        except OSError:
            state["dead"] = True
            raise wire.ChannelClosed("the program's process is gone") from None
        try:
            reply = wire.recv(chan, wire.RunnerUnpickler, rpc)
        except (wire.ChannelClosed, OSError, EOFError):
            state["dead"] = True
            raise wire.ChannelClosed("the program's process is gone") from None
        except Exception as e:  # a whole frame was read: the channel is still in step
            raise TypeError(f"the program returned something that is not plain data ({e})") from None
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "ok" and type(reply[2]) is dict:
            _write_back(args[0] if op == "call" else (), reply[2])
            return reply[1]
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "raise":
            raise _exception(str(reply[1]), str(reply[2]), safe_builtins)
        state["dead"] = True
        raise wire.ChannelClosed("protocol")

    return rpc


def _write_back(args, changed):
    """Containers the program's function mutated are updated in place, as if it had run here."""
    for i, new in changed.items():
        if type(i) is not int or not 0 <= i < len(args) or type(new) is not type(args[i]):
            continue
        old = args[i]
        if type(old) in (list, bytearray):
            old[:] = new
        else:
            old.clear()
            old.update(new)


def _exception(name, message, safe_builtins):
    """The program's exception as the runner raises it: the builtin class of that name, else a fresh class."""
    cls = safe_builtins.get(name)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = type(name if name.isidentifier() else "ProgramError", (Exception,), {})
    try:
        return cls(message)
    except BaseException:
        return Exception(f"{name}: {message}")
