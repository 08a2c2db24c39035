"""Which interpreter runs the sandbox workers (``prmlab.sandbox.protections.worker_python``).

The choice is pure (:func:`pick_interpreter`, hand-made cases); the environment variable ``PRMLAB_SANDBOX_PYTHON``
overrides it; and a real Sandbox starts its workers with the chosen interpreter and runs programs that import the
standard library with it, also with ``current`` (this process's interpreter, which on this machine lives under
root's home, a directory the sandbox uid cannot read: the worker then exposes its standard library read-only).
"""

from __future__ import annotations

import os
import sys

import pytest

from prmlab.config import SandboxConfig
from prmlab.records import Task
from prmlab.sandbox import Sandbox
from prmlab.sandbox.protections import PYTHON_ENV, Interpreter, pick_interpreter, worker_python


def interp(path, version=(3, 11, 7), shared=False, debug=False, impl="cpython"):
    return Interpreter(path, impl, version, shared, debug)


SHARED = interp("/home/u/.pyenv/versions/3.11.7/bin/python3.11", shared=True)


def test_a_static_interpreter_is_kept():
    current = interp("/opt/python/bin/python3.11")
    assert pick_interpreter(current, [interp("/usr/bin/python3.11", (3, 11, 2))]) is current


def test_a_shared_interpreter_gives_way_to_a_static_build_of_the_same_version():
    static = interp("/usr/bin/python3.11", (3, 11, 2))
    assert pick_interpreter(SHARED, [static]) is static


@pytest.mark.parametrize("other", [
    interp("/usr/bin/python3.12", (3, 12, 1)),  # another minor version: programs could behave differently
    interp("/usr/bin/python3.11", (3, 11, 2), shared=True),  # no faster
    interp("/usr/bin/python3.11", (3, 11, 2), debug=True),  # a debug build is slower
    interp("/usr/bin/python3.11", (3, 11, 2), impl="pypy"),
])
def test_nothing_else_replaces_the_current_interpreter(other):
    assert pick_interpreter(SHARED, [other]) is SHARED


def test_the_first_suitable_build_wins():
    a, b = interp("/usr/bin/python3.11", (3, 11, 2)), interp("/usr/local/bin/python3.11", (3, 11, 9))
    assert pick_interpreter(SHARED, [interp("/x", (3, 10, 0)), a, b]) is a


def test_the_environment_variable_names_the_interpreter(monkeypatch):
    monkeypatch.setenv(PYTHON_ENV, "current")
    assert worker_python().path == sys.executable
    monkeypatch.setenv(PYTHON_ENV, "/nonexistent/python3")
    with pytest.raises(ValueError, match="does not run"):
        worker_python()


def test_another_python_version_is_refused(monkeypatch, tmp_path):
    other = tmp_path / "python-other"
    minor = sys.version_info[1] + 1
    other.write_text(f"#!/bin/sh\nexec {sys.executable} -c "
                     f"'print(\"[\\\"cpython\\\", [3, {minor}, 0], false, false]\")'\n")
    other.chmod(0o755)
    monkeypatch.setenv(PYTHON_ENV, str(other))
    with pytest.raises(ValueError, match=rf"3\.{minor}\.0.*must be cpython 3\.{sys.version_info[1]}"):
        worker_python()


TASK = Task(task_id="t", prompt="", entry_point="f", tests=("assert f([3, 1, 2]) == [1, 2, 3]",))
PROGRAM = "import json, typing, collections\ndef f(x):\n    return json.loads(json.dumps(sorted(x)))\n"


@pytest.mark.parametrize("choice", ["", "current"])
def test_workers_run_the_chosen_interpreter(monkeypatch, choice):
    if choice:
        monkeypatch.setenv(PYTHON_ENV, choice)
    else:
        monkeypatch.delenv(PYTHON_ENV, raising=False)
    chosen = worker_python()
    with Sandbox(SandboxConfig(allow_execution=True, workers=1, cache=False)) as sb:
        results = sb.run_many([(PROGRAM, TASK), ("def f(x):\n    return x\n", TASK)])
        exe = os.readlink(f"/proc/{sb._workers[0].proc.pid}/exe")
        assert sb.provenance()["interpreter"] == chosen.describe()
    assert [r.passed for r in results] == [True, False], [r.message for r in results]
    assert exe == os.path.realpath(chosen.path)
