"""The call plan: which calls into the program a task's tests will make, known before the program runs (stdlib only).

Computed by the parent (:mod:`prmlab.sandbox.pool`, once per task) and sent with each job: the program's process
gets the planned calls with the program (so it runs both without waiting for the test runner) and the runner gets
them with the tests (to take each planned answer only for the request it planned). See :func:`plan_calls`. Also
imported as a top-level module by :mod:`prmlab.sandbox.harness` in the worker.
"""

import ast
import base64
import pickle
import sys

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


def plan_job(setup, tests, builtin_names):
    """``(plan, complete)``: :func:`plan_calls`, and whether the program's process may exit right after answering
    the plan (every test planned, and no assert message that could call the program)."""
    plan = plan_calls(setup, tests, builtin_names)
    complete = len(plan) == len(tests) and all(_quiet_messages(t, setup, builtin_names) for t in tests)
    return plan, complete


def _quiet_messages(test, setup, builtin_names):
    """True when no assert message of ``test`` reads a name other than builtins and the test's own variables."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    own = {n.id for n in ast.walk(tree) if type(n) is ast.Name and type(n.ctx) is not ast.Load}
    for node in ast.walk(tree):
        if type(node) is ast.Assert and node.msg is not None:
            for n in ast.walk(node.msg):
                if type(n) is ast.Name and not (n.id in own or (n.id in builtin_names
                                                                and n.id not in UNPLANNABLE_BUILTINS)):
                    return False
                if type(n) in (ast.Lambda, ast.NamedExpr):
                    return False
    return True


def encode(plan):
    """The plan as text for a JSON message (a pickle of plain literals, from and to trusted processes only)."""
    return base64.b64encode(pickle.dumps(plan, protocol=5)).decode("ascii")


def decode(text):
    return pickle.loads(base64.b64decode(text)) if text else []
