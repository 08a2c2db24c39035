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

import builtins
import fcntl
import os
import resource
import signal
import types

import isolation
import plan as plan_module
import wire

SETUP_FAILED = 71
"""Exit status of a process whose sandbox setup failed (72: the program's process lost its channel)."""
MSG_CHARS = 300
MAX_OPEN_FILES = 256
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
_setsid, _dup2, _chdir, _setrlimit, _closerange = os.setsid, os.dup2, os.chdir, resource.setrlimit, os.closerange
_setgroups, _setgid, _setuid, _confine, _SIGKILL = os.setgroups, os.setgid, os.setuid, isolation.confine, signal.SIGKILL
"""Bound once at import for :func:`setup_process`: in a forked process every ``module.name`` goes through the type
attribute cache, whose misses write (and so copy) its pages."""


def _prctl(libc, option, value):
    return libc.prctl(option, value, 0, 0, 0) if libc is not None else -1


def rlimits(lim):
    """The ``(resource, (soft, hard))`` pairs of a job's limits, computed by the worker once per set of limits: each
    forked process then only makes the system calls (every object it builds or touches costs it copied pages)."""
    mib, cpu = 1 << 20, lim["cpu_time_s"]
    return ((resource.RLIMIT_CORE, (0, 0)),
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),
            (resource.RLIMIT_AS, (lim["memory_mb"] * mib, lim["memory_mb"] * mib)),
            (resource.RLIMIT_FSIZE, (lim["max_file_mb"] * mib, lim["max_file_mb"] * mib)),
            (resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES)),
            (resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"])))


def setup_process(limits, workdir, out_w, keep, creds, calls, prctl, null):
    """Own session, stdin from /dev/null, stdout/stderr to the output pipe, ``keep`` fds moved to 3, 4, ..., all
    other fds closed, the work directory, rlimits (:func:`rlimits`), the sandbox uid (root), the confining system
    calls (:func:`isolation.confinement`), then the parent-death signal (``prctl`` is libc's, None without libc).
    The worker opened ``null`` and the Landlock ruleset at 64 or above, out of the way of the targets. This runs in
    every forked process, where each object touched costs a copied page: plain statements, no comprehensions,
    everything computable in advance computed by the worker."""
    _setsid()
    if len(keep) > 1:  # the runner's two fds: one could be the other's target
        keep = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in keep]
    _dup2(null, 0)
    _dup2(out_w, 1)
    _dup2(out_w, 2)
    target = 3
    for fd in keep:
        _dup2(fd, target)
        target += 1
    _chdir(workdir)  # HOME and TMPDIR are "." (set once in the worker)
    for res, values in limits:
        _setrlimit(res, values)
    if creds is not None:
        _setgroups(())
        _setgid(creds[1])
        _setuid(creds[0])
    _confine(calls)
    _closerange(target, 1 << 16)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)  # after setuid, which clears it


def forked(setup, main, args, runner=False):
    """The body of a process the worker just forked: set up (exit 71 on failure), then ``main(*args)`` (never
    returns). A module-level function called straight after ``fork``, so that the forked process builds no closure
    and runs no code the worker itself runs (its objects would be copied)."""
    try:
        setup_process(*setup)
        if runner:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            prctl = setup[6]  # (limits, workdir, out_w, keep, creds, calls, prctl, null)
            if prctl is not None:
                prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace, no /proc/<pid>/fd or mem
    except BaseException:
        os._exit(SETUP_FAILED)
    try:
        main(*args)
    finally:
        os._exit(SETUP_FAILED + 2)


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
def program_process(chan, safe_builtins, program, mode, planned, complete):
    """Run the program, answer the planned calls (``[(name, args, kwargs)]``, see :mod:`prmlab.sandbox.plan`),
    then serve the runner's requests until it says ``exit`` (never returns); exit at once after the plan when it
    is ``complete`` and every answer was plain data.

    Nothing here is trusted: the program can replace any of it. It is written so that an honest program is
    judged correctly; a dishonest one can at most send wrong values or break the channel (a failure or a crash).
    """
    exit_, plain, class_ids, new_channel = os._exit, wire.PLAIN, wire.CLASS_IDS, wire.Channel
    reply, call = _reply, _call
    handles = {}
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
    names, modules, module_type = {}, {}, types.ModuleType  # one plain loop: no comprehension to build here
    for k, v in ns.items():
        if k.startswith("__"):
            continue
        if isinstance(v, module_type):
            modules[k] = v.__name__
        elif k not in safe_builtins:
            names[k] = v
    reply(chan, handles, ("ran", ran[0], ran[1], names if ran[0] else {}, modules if ran[0] else {}))
    # The planned calls (prmlab.sandbox.plan), in order, one message each, without waiting for the runner: stop (with
    # a "stop" message) at a name that is not a function here, or after a result that holds a handle (the runner
    # may use it before the next call).
    plain_answers = ran[0]
    for k, (name, args, kwargs) in enumerate(planned if ran[0] else ()):
        fn = names.get(name)
        if fn is None or type(fn) in plain or id(fn) in class_ids:
            reply(chan, handles, ("stop",))
            plain_answers = False
            break
        if reply(chan, handles, call(fn, args, kwargs)):
            plain_answers = False
            if k + 1 < len(planned):
                reply(chan, handles, ("stop",))
            break
    if complete and plain_answers:
        exit_(0)  # nothing more will be asked: the runner judges from the answers it has
    channel = new_channel(chan)  # only now: most programs' processes never read a request (a copied page less)
    ops = {"getattr": getattr, "list": list, "len": len, "getitem": lambda o, key: o[key]}
    while True:
        try:
            message = channel.recv(wire.ProgramUnpickler, handles)
        except BaseException:
            exit_(SETUP_FAILED + 1)
        if message[0] == "exit":
            exit_(0)
        try:
            obj = handles[message[1][0]]
            answer = call(obj, *message[2:]) if message[0] == "call" else ("ok", ops[message[0]](obj, *message[2:]), {})
        except BaseException as e:
            answer = ("raise", type(e).__name__, (str(e) + _program_line(e))[:MSG_CHARS])
        reply(chan, handles, answer)


def _reply(chan, handles, message, send=wire.send, pickler=wire.ProgramPickler, exit_=os._exit):
    """The program's process sends one message; returns how many handles it made (0 when the message held plain
    data only). Module-level with its helpers bound here, so that each process creates no closure."""
    try:
        return send(chan, message, pickler, handles).made
    except OSError:
        exit_(SETUP_FAILED + 1)
    except BaseException as e:  # an unpicklable or too deep value
        send(chan, ("raise", type(e).__name__, str(e)[:MSG_CHARS]), pickler, handles)
        return 0


def _call(fn, args, kwargs):
    """One call into the program, as the message that answers it."""
    try:
        result = fn(*args, **kwargs)
        changed = {i: a for i, a in enumerate(args) if type(a) in (list, dict, set, bytearray)}
        return ("ok", result, changed)
    except BaseException as e:
        return ("raise", type(e).__name__, (str(e) + _program_line(e))[:MSG_CHARS])


# --------------------------------------------------------------------------------------------- the test runner
PREPARED_MAX = 256
"""Job bodies whose parsed and compiled setup, tests and plan the runner keeps (a task's programs share one body)."""
_prepared_cache = {}


def runner_loop(ctrl, verdict, safe_builtins):
    """The long-lived test runner of one worker: per job, read (body length, channel fd) and the body from ``ctrl``
    (a Unix socket to the worker), run it with :func:`run_job`, and end its report with ``E`` (never returns).

    Report lines go to the verdict pipe as they happen, without waking the worker; at the end of a job the last
    lines (``D`` and ``E``, or ``E``) go out in one write, then one byte on ``ctrl`` wakes the worker, and only then
    is the program's process told to exit."""
    import socket

    ctrl_sock = socket.socket(fileno=ctrl)
    write = os.write

    def report(*parts):
        write(verdict, (" ".join(parts) + "\n").encode("utf-8", "replace"))

    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctrl_sock, 1 << 16, 1)
            if len(data) < 8 or not fds:
                os._exit(0)  # the worker closed the control socket
            n = int.from_bytes(data[:8], "big")
            body = data[8:] + (wire.read_exactly(ctrl, n - (len(data) - 8)) if len(data) - 8 < n else b"")
        except (OSError, wire.ChannelClosed):
            os._exit(0)
        done = False
        try:
            done = run_job(body, fds[0], report, safe_builtins)
        finally:
            write(verdict, b"D\nE\n" if done else b"E\n")
            try:
                ctrl_sock.send(b"E")  # wakes the worker, which reads the report now
            except OSError:
                pass
            if done:
                try:
                    wire.send(fds[0], ("exit",), wire.RunnerPickler)
                except BaseException:
                    pass
            os.close(fds[0])


def _prepare(body):
    """(setup code, test codes, planned calls) of a job's body, parsed and compiled once per runner and task (the
    body's bytes are the key: every program of a task has the same body). A compile error is kept as
    ``(exception,)`` and reported where the original raised it."""
    hit = _prepared_cache.pop(body, None)
    if hit is None:
        import json

        job = json.loads(body)

        def comp(src, name):
            try:
                return compile(src, name, "exec", dont_inherit=True, optimize=0)
            except BaseException as e:
                return (e,)

        hit = (comp(job["setup"], "<test_setup>"), [comp(t, f"<test {i}>") for i, t in enumerate(job["tests"])],
               plan_module.decode(job.get("plan")))
        if len(_prepared_cache) >= PREPARED_MAX:
            _prepared_cache.pop(next(iter(_prepared_cache)))
    _prepared_cache[body] = hit
    return hit


def run_job(job, chan, report, safe_builtins):
    """Run the setup and tests of one job against the program's process behind ``chan``; ``report`` each step.
    True when the job ended normally (then the runner reports ``D`` and tells the program's process to exit)."""
    import collections
    import sys

    base_exc, exec_, dict_, str_, type_, tuple_ = BaseException, exec, dict, str, type, tuple
    setup_code, test_codes, plan = _prepare(bytes(job))
    state = {"dead": False, "test": -1, "plan": collections.deque(), "hids": {}}
    rpc, drain = _make_rpc(chan, wire.Channel(chan), state, safe_builtins)
    report("S")
    try:
        ran = drain.read()
        kind, ok, message, names, modules = ran
        if kind != "ran" or type(names) is not dict or type(modules) is not dict:
            raise wire.ChannelClosed("protocol")
    except base_exc:
        return False  # no "P" line: the program's process died or broke the channel before it ran
    if not ok:
        report("P", "0", str_(message)[:MSG_CHARS])
        return True
    state["plan"].extend([list(p) + [None] for p in plan])
    state["hids"] = {k: v._hid for k, v in names.items() if type_(k) is str_ and type_(v) is wire.Remote}
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
        if type_(setup_code) is tuple_:
            raise setup_code[0]
        exec_(setup_code, tns)
    except base_exc as e:
        if state["dead"]:
            return False
        drain()
        if state["dead"]:
            return False
        for i in range(len(test_codes)):
            report("T", str_(i), "0", "test setup raised " + describe(e))
        return True
    for i, code in enumerate(test_codes):
        state["test"] = i
        try:
            if type_(code) is tuple_:
                raise code[0]
            exec_(code, dict_(tns))
            outcome = ("1", "")
        except base_exc as e:
            outcome = ("0", describe(e))
        if state["dead"]:
            return False  # the program's process is gone: no verdict for this test, and no "D"
        report("T", str_(i), *outcome)
        drain(i)  # a planned call this test did not make (it failed before): its answer is read and dropped
    drain()
    return not state["dead"]


def _make_rpc(chan, channel, state, safe_builtins):
    """The runner's side of a request: the planned answer when the request is the next planned call, else send
    the request (after reading the planned answers still due: the channel is in order) and read its reply; return
    the value or raise the program's exception. Also returns ``drain(upto=None)``, which drops the planned answers
    of tests up to ``upto`` (all when None), reading them as needed, and ``drain.read()``, one message."""
    plan = state["plan"]  # deque of [test index, name, args, kwargs, answer (None until read)]

    def read():
        try:
            return channel.recv(wire.RunnerUnpickler, rpc)
        except (wire.ChannelClosed, OSError, EOFError):
            state["dead"] = True
            plan.clear()
            raise wire.ChannelClosed("the program's process is gone") from None
        except Exception as e:  # a whole frame was read: the channel is still in step
            return ("bad", f"the program returned something that is not plain data ({e})")

    def fill(k):
        """Read the answers of the first ``k`` planned calls that are still unread (a "stop" ends the plan)."""
        for n, entry in enumerate(list(plan)[:k]):
            if entry[4] is None:
                answer = read()
                if _is_stop(answer):
                    while len(plan) > n:
                        plan.pop()
                    return
                entry[4] = answer

    def drain(upto=None):
        while plan and (upto is None or plan[0][0] <= upto):
            try:
                fill(1)
            except wire.ChannelClosed:
                return
            if plan:
                plan.popleft()

    def rpc(op, hid, *args):
        if state["dead"]:
            raise wire.ChannelClosed("the program's process is gone")
        reply = None
        if plan:
            i, name, pargs, pkwargs, _ = plan[0]
            if op == "call" and i == state["test"] and hid == state["hids"].get(name) and _same(args[0], pargs) \
                    and _same(args[1], pkwargs):
                fill(1)
                if plan:
                    reply = plan.popleft()[4]
            else:
                fill(len(plan))  # off plan: the answers due come first on the channel; they stay for their tests
        if reply is None:
            try:
                wire.send(chan, (op, hid) + args, wire.RunnerPickler)
            except OSError:
                state["dead"] = True
                raise wire.ChannelClosed("the program's process is gone") from None
            reply = read()
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "ok" and type(reply[2]) is dict:
            _write_back(args[0] if op == "call" else (), reply[2])
            return reply[1]
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "raise":
            raise _exception(str(reply[1]), str(reply[2]), safe_builtins)
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "bad":
            raise TypeError(reply[1])
        state["dead"] = True
        plan.clear()
        raise wire.ChannelClosed("protocol")

    drain.read = read
    return rpc, drain


def _is_stop(reply):
    return type(reply) is tuple and len(reply) == 1 and type(reply[0]) is str and reply[0] == "stop"


def _same(a, b):
    """``a`` and ``b`` are the same plain literal value, types included (the check that a request is the planned
    call: anything unexpected only makes the runner fall back to one request per call)."""
    t = type(a)
    if t is not type(b):
        return False
    if t is list or t is tuple:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if t is dict:
        return len(a) == len(b) and _same(list(a.items()), list(b.items()))
    if t is float or t is complex or t is set or t is frozenset:
        return repr(a) == repr(b)
    if t in (int, str, bytes, bool, type(None), type(Ellipsis)):
        return a == b
    return False


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
