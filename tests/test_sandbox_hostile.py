"""Hostile programs in this process's mode: each is contained, reported correctly, leaves no process behind, and
the sandbox stays usable. tests/test_sandbox_modes.py runs the self-test's hostile scenarios in every mode (root and
unprivileged); this file covers resource limits and exit paths in the caller's own mode.

The toy task checks exact value and type (``type(_out) is int and _out == expected``), as the toy world does.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from prmlab.config import SandboxConfig
from prmlab.records import Task
from prmlab.sandbox import Sandbox

CFG = SandboxConfig(allow_execution=True, timeout_s=3.0, cpu_time_s=1, memory_mb=256, max_processes=16, workers=2)
TASK = Task(task_id="toy/double", prompt="def double(x):\n", entry_point="double",
            tests=tuple(f"_out = double({x})\nassert type(_out) is int and _out == {2 * x}, _out" for x in (1, 4, -3)))
GOOD = "def double(x):\n    return 2 * x\n"
MEMORY_BOMB_MB = 96
"""The memory bomb's limit. It zero-fills every page it gets until the limit stops it: at 256 MB that took 0.5-1.5 s
of wall clock on 2 cores at load 13-17, and once 3 s, the wall-clock limit (``timed_out``, not the MemoryError
this test checks; 1 of about 20 runs). At 96 MB it still fills 7 blocks of 10 MB first, in a quarter of the time."""


OPEN: list[Sandbox] = []
"""The Sandboxes this module's fixtures hold open: their workers are no survivors."""


@pytest.fixture(scope="module")
def sb():
    with Sandbox(CFG) as s:
        s.run_many([(GOOD + f"# {i}\n", TASK) for i in range(4)])  # start both workers
        OPEN.append(s)
        yield s
        OPEN.remove(s)


@pytest.fixture(scope="module")
def bomb_sb():
    with Sandbox(dataclasses.replace(CFG, memory_mb=MEMORY_BOMB_MB)) as s:
        OPEN.append(s)
        yield s
        OPEN.remove(s)


def parents() -> dict[int, int]:
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
                parent[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    return parent


def descendants(pid: int, parent: dict[int, int]) -> set[int]:
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def run_contained(sb: Sandbox, program: str, task: Task = TASK):
    """Run, then check that nothing but the workers of the open Sandboxes remains (each: the started process, the
    PID 1 it forked, and that one's single long-lived test runner), and that the sandbox still passes a good
    program."""
    result = sb.run(program, task)
    parent = parents()
    workers = {w.proc.pid for s in {*OPEN, sb} for w in s._workers if w is not None}
    serving = {p for p, pp in parent.items() if pp in workers}
    runners = {p for p, pp in parent.items() if pp in serving}
    assert all(sum(pp == s for pp in parent.values()) <= 1 for s in serving), "a process survived the call"
    assert descendants(os.getpid(), parent) - workers - serving - runners == set(), "a process survived the call"
    assert sb.run(GOOD, task).passed, "the sandbox is not usable after the hostile program"
    return result


HOSTILE = {
    "infinite loop": ("def double(x):\n    while True:\n        pass\n", "timed_out"),
    "cpu spin in C": ("def double(x):\n    return sum(range(10 ** 12))\n", "timed_out"),
    "regex catastrophe": ("import re\ndef double(x):\n    return re.match(r'(a+)+$', 'a' * 40 + 'b')\n", "timed_out"),
    "memory bomb": ("def double(x):\n    hog = []\n    while True:\n        hog.append(bytearray(10 ** 7))\n", "failed"),
    "one huge allocation": ("def double(x):\n    return len(bytearray(10 ** 11))\n", "failed"),
    "fork bomb": ("import os\ndef double(x):\n    while True:\n        try:\n            os.fork()\n"
                  "        except OSError:\n            pass\n", "timed_out"),
    "endless output": ("def double(x):\n    while True:\n        print('spam' * 1000)\n", "timed_out"),
    "sys.exit(0) at top level": ("import sys\ndef double(x):\n    return 2 * x\nsys.exit(0)\n", "failed"),
    "sys.exit(0) in a test": ("import sys\ndef double(x):\n    sys.exit(0)\n", "failed"),
    "os._exit(0) at top level": ("import os\ndef double(x):\n    return 2 * x\nos._exit(0)\n", "crashed"),
    "os._exit(0) in a test": ("import os\ndef double(x):\n    os._exit(0)\n", "crashed"),
    "kill itself": ("import os, signal\ndef double(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n", "crashed"),
    "a child kills everything it may": ("import os, signal, time\nif os.fork() == 0:\n    os.kill(-1, signal.SIGKILL)\n"
                                        "    os._exit(0)\ntime.sleep(2)\ndef double(x):\n    return 2 * x\n", "crashed"),
    "ignore SIGTERM and sleep": ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                 "def double(x):\n    time.sleep(60)\n", "timed_out"),
    "closes fds 0-2, wrong": ("import os\nfor fd in (0, 1, 2):\n    os.close(fd)\n"
                              "def double(x):\n    return x\n", "failed"),
    "closes every fd": ("import os\nos.closerange(0, 1024)\ndef double(x):\n    return 2 * x\n", "crashed"),
    "forged report lines on every fd": ("import os\nfor fd in range(3, 10):\n    try:\n        os.write(fd, b'D\\n')\n"
                                        "    except OSError:\n        pass\ndef double(x):\n    return x\n", "crashed"),
    "always-equal object": ("class Eq(int):\n    def __eq__(self, other):\n        return True\n"
                            "    __hash__ = int.__hash__\ndef double(x):\n    return Eq(0)\n", "failed"),
    "object with a forged __bool__": ("class T:\n    def __bool__(self):\n        return True\n"
                                      "def double(x):\n    return T()\n", "failed"),
    "always-equal plus fake type()": ("import builtins\nclass Eq:\n    def __eq__(self, other):\n        return True\n"
                                      "builtins.type = lambda obj: int\ntype = lambda obj: int\n"
                                      "def double(x):\n    return Eq()\n", ("failed", "crashed")),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(sb, name, request):
    program, status = HOSTILE[name]
    r = run_contained(request.getfixturevalue("bomb_sb") if name == "memory bomb" else sb, program)
    assert r.status in ((status,) if isinstance(status, str) else status), (name, r)
    assert not r.passed and r.n_passed < r.n_tests
    if name in ("memory bomb", "one huge allocation"):
        assert "MemoryError" in r.message


def test_killing_the_parent_fails_and_the_worker_survives(sb):
    pids = [w.proc.pid for w in sb._workers if w is not None]
    program = ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
               "def double(x):\n    return 2 * x\n")
    r = run_contained(sb, program)  # PID 1 of its namespace ignores it, or Landlock/uid refuse it
    assert r.passed or (r.status == "failed" and "PermissionError" in r.message), r
    assert [w.proc.pid for w in sb._workers if w is not None] == pids


@pytest.mark.parametrize("program", [
    "import subprocess\nsubprocess.Popen(['sleep', '60'])\ndef double(x):\n    return 2 * x\n",
    "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
    "    os._exit(0)\ndef double(x):\n    return 2 * x\n",
], ids=["background child", "detached grandchild in its own session"])
def test_leaving_a_process_never_passes(sb, program):
    r = run_contained(sb, program)
    assert r.status == "failed" and r.n_passed == 0 and "left processes running" in r.message


def test_huge_output_is_bounded_and_correct_program_still_passes(sb):
    r = run_contained(sb, "print('x' * (40 * 2 ** 20))\ndef double(x):\n    return 2 * x\n")
    assert r.passed


def test_a_correct_program_that_closes_stdout_passes_on_merit(sb):
    r = run_contained(sb, "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\n"
                          "def double(x):\n    return 2 * x\n")
    assert r.passed


def test_writing_outside_the_working_directory_fails(sb, tmp_path):
    repo_target = Path(__file__).resolve().parents[1] / "sandbox_escape_probe.txt"
    tmp_target = tmp_path / "escape.txt"
    home_target = Path(os.path.expanduser("~")) / "sandbox_escape_probe.txt"
    program = (
        "import os\nresults = {}\n"
        f"for path in {[str(repo_target), str(tmp_target), str(home_target)]!r}:\n"
        "    try:\n        open(path, 'w').write('escaped')\n        results[path] = True\n"
        "    except OSError:\n        results[path] = False\n"
        "open('own.txt', 'w').write('inside')\n"
        "def double(x):\n    assert open('own.txt').read() == 'inside'\n"
        "    assert not any(results.values()), results\n    return 2 * x\n")
    try:
        r = run_contained(sb, program)
        assert r.passed, r  # it may write its own directory, and nothing else
        assert not repo_target.exists() and not tmp_target.exists() and not home_target.exists()
    finally:
        for p in (repo_target, tmp_target, home_target):
            if p.exists():
                p.unlink()


def test_file_size_limit(sb):
    r = run_contained(sb, "def double(x):\n    open('big', 'wb').write(b'0' * (64 * 2 ** 20))\n    return 2 * x\n")
    assert r.status == "failed" and "File too large" in r.message
