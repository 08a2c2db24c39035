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
    """Run the program sent by the runner, answer the calls it planned, then serve its requests until it says
    ``exit`` (never returns).

    Nothing here is trusted: the program can replace any of it. It is written so that an honest program is
    judged correctly; a dishonest one can at most send wrong values or break the channel (a failure or a crash).
    """
    import builtins
    import types

    send, exit_, plain, class_ids = wire.send, os._exit, wire.PLAIN, wire.CLASS_IDS
    channel = wire.Channel(chan)
    handles = {}

    def reply(message):
        """Send one message; returns how many handles it made (0 when the message held plain data only)."""
        try:
            return send(chan, message, wire.ProgramPickler, handles).made
        except OSError:
            exit_(SETUP_FAILED + 1)
        except BaseException as e:  # an unpicklable or too deep value
            send(chan, ("raise", type(e).__name__, str(e)[:MSG_CHARS]), wire.ProgramPickler, handles)
            return 0

    def call(fn, args, kwargs):
        try:
            result = fn(*args, **kwargs)
            changed = {i: a for i, a in enumerate(args) if type(a) in (list, dict, set, bytearray)}
            return ("ok", result, changed)
        except BaseException as e:
            return ("raise", type(e).__name__, (str(e) + _program_line(e))[:MSG_CHARS])

    try:
        _, program, mode, planned = channel.recv(wire.ProgramUnpickler, handles)
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
    # The planned calls (see plan_calls), in order, one message each, without waiting for the runner: stop (with
    # a "stop" message) at a name that is not a function here, or after a result that holds a handle (the runner
    # may use it before the next call).
    for k, (name, args, kwargs) in enumerate(planned if ran[0] else ()):
        fn = names.get(name)
        if fn is None or type(fn) in plain or id(fn) in class_ids:
            reply(("stop",))
            break
        if reply(call(fn, args, kwargs)) and k + 1 < len(planned):
            reply(("stop",))
            break
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
        reply(answer)


# --------------------------------------------------------------------------------------------- the test runner
PREPARED_MAX = 256
"""Tasks whose compiled setup, tests and call plan the runner keeps (most programs share their task with others)."""
_prepared_cache = {}


def runner_loop(ctrl, verdict, safe_builtins):
    """The long-lived test runner of one worker: per job, read (body length, channel fd) and the body from ``ctrl``
    (a Unix socket to the worker), run it with :func:`run_job`, and end its report with ``E`` (never returns).

    The report's last lines (``D`` and ``E``, or ``E``) go out in one write before the program's process is told
    to exit, so that the worker, woken by that exit, finds the whole report."""
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
            if done:
                try:
                    wire.send(fds[0], ("exit",), wire.RunnerPickler)
                except BaseException:
                    pass
            os.close(fds[0])


def _prepare(setup, tests, safe_builtins):
    """(setup code, test codes, call plan) of a task, compiled once per runner (a compile error is kept as
    ``(exception,)`` and reported where the original raised it)."""
    key = (setup, tuple(tests))
    hit = _prepared_cache.pop(key, None)
    if hit is None:
        def comp(src, name):
            try:
                return compile(src, name, "exec", dont_inherit=True, optimize=0)
            except BaseException as e:
                return (e,)

        hit = (comp(setup, "<test_setup>"), [comp(t, f"<test {i}>") for i, t in enumerate(tests)],
               plan_calls(setup, tests, safe_builtins))
        if len(_prepared_cache) >= PREPARED_MAX:
            _prepared_cache.pop(next(iter(_prepared_cache)))
    _prepared_cache[key] = hit
    return hit


def run_job(job, chan, report, safe_builtins):
    """Run the setup and tests of one job against the program's process behind ``chan``; ``report`` each step.
    True when the job ended normally (then the runner reports ``D`` and tells the program's process to exit)."""
    import collections
    import json
    import sys

    base_exc, exec_, dict_, str_, type_, tuple_ = BaseException, exec, dict, str, type, tuple
    job = json.loads(job)
    setup_code, test_codes, plan = _prepare(job["setup"], job["tests"], safe_builtins)
    state = {"dead": False, "test": -1, "plan": collections.deque(), "hids": {}}
    rpc, drain = _make_rpc(chan, wire.Channel(chan), state, safe_builtins)
    report("S")
    try:
        wire.send(chan, ("program", job["program"], job.get("mode"), [p[1:] for p in plan]), wire.RunnerPickler)
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


# ------------------------------------------------------------------------------------------- the call plan
UNPLANNABLE_BUILTINS = frozenset({"globals", "locals", "vars", "eval", "exec", "compile", "__import__", "breakpoint",
                                  "input", "help"})
"""Builtins through which a test could reach the program's names without naming them: a test that uses one is
never planned."""
FOLD_LIMIT = 10 ** 4
"""Largest string or sequence, and bit length of an int, that folding constant arithmetic may build."""


def plan_calls(setup, tests, builtin_names):
    """The calls into the program that the tests will make, known before the program runs:
    ``[(test index, program name, args, kwargs)]`` for a prefix of the tests, one call each.

    A test is planned when it names the program exactly once (an assert's message, evaluated only when the test
    has already failed, does not count): as the function of a call whose arguments are literals (or constant
    arithmetic), in a position of a top-level statement that is always evaluated when the test passes; the
    function is a name of the program, directly or through a plain ``candidate = name`` in the setup. Every other
    name the test reads is a builtin (never ``globals``, ``eval`` and the like), a literal of the setup, a
    standard-library module it imports, or a variable it assigned before. The setup must consist of such
    assignments only (it then cannot call the program). Planning stops at the first test that does not qualify.

    So for a job whose tests pass, the program receives exactly the calls, in the same order, that one request
    per call would make. The program's process makes the planned calls right after the program ran and sends each
    answer without waiting for the runner (one round trip per program instead of one per call); the runner takes
    an answer only for the request it planned (same function, equal arguments, same test; the program's process
    stops the plan at a result that is not plain data). A test that fails before it reaches its call leaves that
    answer unused; a request off the plan (an assert's message) is served after the planned calls."""
    import ast

    try:
        setup_body = ast.parse(setup).body
        bodies = [ast.parse(t).body for t in tests]
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return []
    bound, alias = set(), {}
    for st in setup_body:
        if type(st) is ast.Assign and all(type(t) is ast.Name for t in st.targets):
            if type(st.value) is ast.Name and st.value.id not in bound and st.value.id not in builtin_names:
                target = alias.get(st.value.id, st.value.id)
                for t in st.targets:
                    alias[t.id] = target
                    bound.discard(t.id)
            elif _value(st.value) is not _NO:
                for t in st.targets:
                    bound.add(t.id)
                    alias.pop(t.id, None)
            else:
                return []
        elif not (type(st) is ast.Pass or (type(st) is ast.Expr and type(st.value) is ast.Constant)):
            return []
    safe = {n for n in builtin_names if n not in alias and n not in bound and n not in UNPLANNABLE_BUILTINS}
    plan = []
    for i, body in enumerate(bodies):
        entry = _plan_test(body, bound | safe, alias)
        if entry is None:
            break
        plan.append((i,) + entry)
    return plan


def _plan_test(body, known, alias):
    """``(program name, args, kwargs)`` of a test's single call (see :func:`plan_calls`), or None."""
    import ast
    import sys

    defined, found = set(), None
    for st in body:
        t = type(st)
        if t in (ast.Import, ast.ImportFrom):
            mods = [a.name for a in st.names] if t is ast.Import else [st.module or ""]
            if st.__dict__.get("level") or any(m.split(".")[0] not in sys.stdlib_module_names for m in mods) \
                    or any(a.name == "*" for a in st.names):
                return None
            defined.update((a.asname or a.name).split(".")[0] for a in st.names)
            continue
        if t is ast.Assign:
            main, stores = st.value, st.targets
        elif t is ast.Expr:
            main, stores = st.value, []
        elif t is ast.Assert:
            main, stores = st.test, []
        elif t in (ast.Pass, ast.For, ast.While, ast.If, ast.With, ast.Try):
            main, stores = None, [st]
        else:
            return None
        loads = []
        if main is not None and not _loads(main, set(), loads):
            return None
        if main is None and not _loads(st, set(), loads):
            return None
        for target in stores if main is not None else ():
            if not _loads(target, set(), loads):
                return None
        if any(n.id in UNPLANNABLE_BUILTINS for n in loads):
            return None
        program = [n for n in loads if n.id not in defined and n.id not in known]
        if program:
            if found is not None or len(program) != 1 or main is None:
                return None
            call = _unconditional_call(main, program[0])
            if call is None:
                return None
            args = tuple(_value(a) for a in call.args)
            kwargs = {k.arg: _value(k.value) for k in call.keywords}
            if _NO in args or _NO in kwargs.values():
                return None
            found = (alias.get(call.func.id, call.func.id), args, kwargs)
        for target in stores:
            defined.update(n.id for n in ast.walk(target) if type(n) is ast.Name and type(n.ctx) is not ast.Load)
    return found


def _loads(node, local, out):
    """Append to ``out`` the names ``node`` reads (not those bound by its own comprehensions, nor an assert's
    message); False when it holds something that hides reads (a lambda, a nested function or class, a walrus,
    ``global``)."""
    import ast

    t = type(node)
    if t in (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.NamedExpr, ast.Global,
             ast.Nonlocal, ast.Await, ast.Yield, ast.YieldFrom, ast.Import, ast.ImportFrom):
        return False
    if t is ast.Name:
        if type(node.ctx) is ast.Load and node.id not in local:
            out.append(node)
        return True
    if t is ast.Assert:
        return _loads(node.test, local, out)
    if t in (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp):
        inner = set(local)
        for k, gen in enumerate(node.generators):
            if not _loads(gen.iter, local if k == 0 else inner, out):
                return False
            inner |= {n.id for n in ast.walk(gen.target) if type(n) is ast.Name}
            if not all(_loads(c, inner, out) for c in gen.ifs):
                return False
        elts = [node.key, node.value] if t is ast.DictComp else [node.elt]
        return all(_loads(e, inner, out) for e in elts)
    return all(_loads(c, local, out) for c in ast.iter_child_nodes(node))


def _unconditional_call(node, name):
    """The call whose function is the Name node ``name``, if it lies on a path of ``node`` that is always
    evaluated when ``node`` evaluates without raising; else None."""
    import ast

    t = type(node)
    if t is ast.Call:
        if node.func is name:
            return node
        children = [node.func, *node.args, *(k.value for k in node.keywords)]
    elif t is ast.Compare:
        children = [node.left, node.comparators[0]]
    elif t is ast.BinOp:
        children = [node.left, node.right]
    elif t in (ast.UnaryOp,):
        children = [node.operand]
    elif t is ast.BoolOp:
        children = [node.values[0]]
    elif t in (ast.Attribute, ast.Starred, ast.FormattedValue):
        children = [node.value]
    elif t is ast.Subscript:
        children = [node.value, node.slice]
    elif t is ast.IfExp:
        children = [node.test]
    elif t in (ast.Tuple, ast.List, ast.Set):
        children = node.elts
    elif t is ast.Dict:
        children = [c for c in (*node.keys, *node.values) if c is not None]
    elif t is ast.JoinedStr:
        children = node.values
    else:
        return None
    for c in children:
        found = _unconditional_call(c, name)
        if found is not None:
            return found
    return None


class _No:
    """Marks an expression that is not a literal."""


_NO = _No()


def _value(node):
    """The value of a literal expression (``ast.literal_eval``, plus constant arithmetic with + - * ** on small
    ints and + * on strings), or ``_NO``."""
    import ast

    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if type(node) in (ast.List, ast.Tuple):
        items = [_value(e) for e in node.elts]
        return _NO if any(v is _NO for v in items) else (items if type(node) is ast.List else tuple(items))
    if type(node) is not ast.BinOp or type(node.op) not in (ast.Add, ast.Sub, ast.Mult, ast.Pow):
        return _NO
    a, b = _value(node.left), _value(node.right)
    if a is _NO or b is _NO:
        return _NO
    ta, tb = type(a), type(b)
    if ta is int and tb is int:
        if a.bit_length() > FOLD_LIMIT or b.bit_length() > FOLD_LIMIT:
            return _NO
        if type(node.op) is ast.Pow:
            return a ** b if 0 <= b <= 64 and a.bit_length() * b <= FOLD_LIMIT else _NO
        return a + b if type(node.op) is ast.Add else a - b if type(node.op) is ast.Sub else a * b
    if type(node.op) is ast.Add and ta is tb and ta in (str, bytes, list, tuple) and len(a) + len(b) <= FOLD_LIMIT:
        return a + b
    if type(node.op) is ast.Mult and {ta, tb} <= {int, str, bytes, list, tuple} and (ta is int) != (tb is int):
        seq, k = (b, a) if ta is int else (a, b)
        if len(seq) * max(k, 0) <= FOLD_LIMIT:
            return seq * k
    return _NO


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
