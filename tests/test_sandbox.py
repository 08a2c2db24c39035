"""Known-answer programs for every result type, the opt-in, batching, caching and worker respawn of the sandbox."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest

from prmlab.config import SandboxConfig
from prmlab.records import Task
from prmlab.sandbox import ExecutionNotAllowed, Sandbox, cache_key, make_job, run_program

CFG = SandboxConfig(allow_execution=True, timeout_s=1.5, cpu_time_s=1, workers=2)
TASK = Task(task_id="toy/inc", prompt="def inc(x):\n", entry_point="inc",
            tests=("_out = inc(1)\nassert type(_out) is int and _out == 2, _out",
                   "_out = inc(5)\nassert type(_out) is int and _out == 6, _out",
                   "_out = inc(-1)\nassert type(_out) is int and _out == 0, _out"),
            reference="    return x + 1\n")
GOOD = "def inc(x):\n    return x + 1\n"


@pytest.fixture(scope="module")
def sb():
    with Sandbox(CFG) as s:
        yield s


def test_execution_needs_opt_in():
    for call in (lambda: run_program(GOOD, TASK, SandboxConfig()), lambda: Sandbox(SandboxConfig())):
        with pytest.raises(ExecutionNotAllowed, match="docs/safety.md") as e:
            call()
        assert isinstance(e.value, RuntimeError)


def test_run_program_passes_reference():
    r = run_program(TASK.prompt + TASK.reference, TASK, CFG)
    assert (r.status, r.n_passed, r.n_tests, r.pass_fraction, r.cached) == ("passed", 3, 3, 1.0, False)


@pytest.mark.parametrize("program, status, n_passed, failing, message", [
    (GOOD, "passed", 3, None, None),
    ("def inc(x):\n    return x + 1 if x > 0 else 7\n", "failed", 2, 2, "AssertionError: 7"),
    ("def inc(x):\n    return float(x + 1)\n", "failed", 0, 0, "AssertionError: 2.0"),
    ("def inc(x):\n    return x + 1 + 0 // (x - 1)\n", "failed", 2, 0, "ZeroDivisionError"),
    ("def inc(x) return x\n", "failed", 0, None, "program raised SyntaxError"),
    ("import sys\ndef inc(x):\n    return x + 1\nsys.exit(0)\n", "failed", 0, None, "program raised SystemExit: 0"),
    ("def inc(x):\n    while True:\n        pass\n", "timed_out", 0, 0, "CPU time limit|wall-clock timeout"),
    ("import time\ndef inc(x):\n    time.sleep(60)\n", "timed_out", 0, 0, "wall-clock timeout"),
    ("import os\ndef inc(x):\n    os._exit(0)\n", "crashed", 0, 0, "exited with status 0"),
    ("import os, signal\ndef inc(x):\n    if x == 5:\n        os.kill(os.getpid(), signal.SIGSEGV)\n    return x + 1\n",
     "crashed", 1, 1, "killed by signal SIGSEGV"),
])
def test_known_answers(sb, program, status, n_passed, failing, message):
    r = sb.run(program, TASK)
    assert r.status == status, r
    assert r.n_tests == 3 and r.n_passed == n_passed, r
    assert r.failing_test == (TASK.tests[failing] if failing is not None else None), r
    assert (r.message is None) if message is None else any(m in (r.message or "") for m in message.split("|")), r


def test_program_line_in_message(sb):
    r = sb.run("def inc(x):\n    y = x + 1\n    return y / 0\n", TASK)
    assert r.status == "failed" and "ZeroDivisionError" in r.message and "program line 3" in r.message


def test_tests_run_in_separate_namespaces_after_setup(sb):
    task = dataclasses.replace(TASK, test_setup="OFFSET = inc(0) - 1\n",
                               tests=("LEAK = 1\nassert inc(OFFSET) == 1", "assert 'LEAK' not in globals()"))
    assert sb.run(GOOD, task).status == "passed"
    broken = dataclasses.replace(task, test_setup="OFFSET = undefined_name\n")
    r = sb.run(GOOD, broken)
    assert r.status == "failed" and r.n_passed == 0 and "test setup raised NameError" in r.message


def test_stdin_mode_runs_program_per_test(sb):
    task = Task(task_id="io/sum", prompt="", entry_point="__main__", meta={"io": "stdin"},
                tests=("assert _prmlab_run_stdin('1 2\\n').split() == ['3']",
                       "assert _prmlab_run_stdin('10 -4\\n').split() == ['6']"))
    assert sb.run("a, b = map(int, input().split())\nprint(a + b)\n", task).status == "passed"
    r = sb.run("a, b = map(int, input().split())\nprint(a - b)\n", task)
    assert r.status == "failed" and r.n_passed == 0


def test_run_many_preserves_order_and_deduplicates(sb):
    programs = [GOOD, "def inc(x):\n    return x\n", "import time\ndef inc(x):\n    time.sleep(0.3)\n    return x + 1\n",
                GOOD, "def inc(x):\n    return x - 1\n"] * 3
    before = dataclasses.replace(sb.stats)
    results = sb.run_many([(p, TASK) for p in programs])
    assert [r.status for r in results] == ["passed", "failed", "passed", "passed", "failed"] * 3
    assert sb.stats.executed - before.executed == 4  # four distinct programs
    assert sb.stats.duplicates - before.duplicates == 11


def test_cache_hits_and_reload(tmp_path):
    cfg = dataclasses.replace(CFG, workers=1)
    with Sandbox(cfg, cache_dir=tmp_path) as sb:
        first = sb.run_many([(GOOD, TASK), ("def inc(x):\n    return x\n", TASK)])
        again = sb.run_many([(GOOD, TASK), ("def inc(x):\n    return x\n", TASK)])
        assert [r.cached for r in first] == [False, False] and [r.cached for r in again] == [True, True]
        assert [dataclasses.replace(r, cached=False, duration_s=0) for r in again] == \
               [dataclasses.replace(r, duration_s=0) for r in first]
        assert sb.stats.cache_hits == 2 and sb.stats.executed == 2 and sb.stats.hit_rate == 0.5
    with Sandbox(cfg, cache_dir=tmp_path) as sb:  # a new session reads the file
        assert sb.run(GOOD, TASK).cached
        other_limits = Sandbox(dataclasses.replace(cfg, memory_mb=512), cache_dir=tmp_path)
        with other_limits:
            assert not other_limits.run(GOOD, TASK).cached  # limits are part of the key


def test_cache_key_covers_program_tests_and_limits():
    base = cache_key(make_job(GOOD, TASK, CFG))
    assert base == cache_key(make_job(GOOD, TASK, CFG))
    assert base != cache_key(make_job(GOOD + " ", TASK, CFG))
    assert base != cache_key(make_job(GOOD, dataclasses.replace(TASK, tests=TASK.tests[:2]), CFG))
    assert base != cache_key(make_job(GOOD, dataclasses.replace(TASK, test_setup="x = 1"), CFG))
    assert base != cache_key(make_job(GOOD, TASK, dataclasses.replace(CFG, timeout_s=4.0)))


def test_harness_errors_are_reported_and_never_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PRMLAB_SANDBOX_TMP", str(tmp_path / "does-not-exist"))
    # The warning names the cause the probe worker gave (it was "IndexError: list index out of range").
    with pytest.warns(UserWarning, match="without its report: FileNotFoundError.*does-not-exist"), \
            Sandbox(dataclasses.replace(CFG, workers=1), cache_dir=tmp_path / "cache") as sb:
        r = sb.run(GOOD, TASK)
        assert r.status == "error" and "failed to start" in r.message
        assert sb.run(GOOD, TASK).status == "error"
        assert sb.stats.errors == 2 and sb.stats.cache_hits == 0
    cache_file = tmp_path / "cache" / "sandbox_cache.jsonl"
    assert not cache_file.exists() or not cache_file.read_text().strip()


def test_worker_killed_mid_run_is_crashed_and_respawned():
    with Sandbox(dataclasses.replace(CFG, workers=1)) as sb:
        assert sb.run(GOOD, TASK).passed
        worker_pid = sb._workers[0].proc.pid
        killer = threading.Timer(0.3, os.kill, (worker_pid, signal.SIGKILL))
        killer.start()
        r = sb.run("import time\ndef inc(x):\n    time.sleep(1)\n", TASK)
        killer.join()
        assert r.status == "crashed" and "worker died" in r.message
        assert sb.run(GOOD, TASK).passed and sb._workers[0].proc.pid != worker_pid


def test_progress_bar_and_stats_dict(sb, capsys):
    results = sb.run_many([(GOOD + f"# {i}\n", TASK) for i in range(6)], progress=True)
    assert all(r.passed for r in results)
    stats = sb.stats.as_dict()
    assert stats["requests"] == stats["executed"] + stats["cache_hits"] + stats["duplicates"]
    assert 0 <= stats["hit_rate"] <= 1 and stats["time_s"] > 0


def test_closed_sandbox_refuses():
    sb = Sandbox(CFG)
    sb.close()
    with pytest.raises(RuntimeError, match="closed"):
        sb.run(GOOD, TASK)


def test_many_programs_on_all_workers(sb):
    start = time.perf_counter()
    results = sb.run_many([(GOOD + f"# {i}\n", TASK) for i in range(60)])
    assert all(r.passed for r in results) and time.perf_counter() > start


def test_plan_covers_a_prefix_of_single_call_tests():
    import builtins

    from prmlab.sandbox import plan as harness

    names = dict(builtins.__dict__)
    plan = harness.plan_calls("", TASK.tests, names)
    assert plan == [(0, "inc", (1,), {}), (1, "inc", (5,), {}), (2, "inc", (-1,), {})]
    he = ("assert candidate([1, 0 ** 0], k=3 * 19) == None, str(candidate(2))", "assert abs(candidate('a' + 'b') - 1) < 1e-6",
          "x = 3\nassert candidate(x) == 1", "assert candidate(4) == 2")
    assert harness.plan_calls("METADATA = {'a': 1}\ncandidate = f\n", he, names) == [
        (0, "f", ([1, 1],), {"k": 57}), (1, "f", ("ab",), {})]  # stops at the first test it cannot plan
    assert harness.plan_calls("OFFSET = inc(0) - 1\n", TASK.tests, names) == []  # the setup could call the program
    for test in ("assert inc(1) == inc(1)", "assert globals()['inc'](1) == 2", "assert True or inc(1) == 2",
                 "assert [inc(x) for x in (1, 2)] == [2, 3]", "g = inc\nassert g(1) == 2", "assert inc(1) == _out"):
        assert harness.plan_calls("", (test,), names) == [], test


STATEFUL = Task(task_id="toy/count", prompt="", entry_point="count",
                tests=("assert count(1) == 1, count(0)", "assert count(1) == 2", "_out = count(1)\nassert _out == 3",
                       "y = 1\nassert count(y) == 4", "assert count(1) == 5"))


def test_calls_reach_the_program_in_test_order(sb):
    """Planned (answered without waiting), unplanned and message calls interleave as one request per call would."""
    counter = "n = 0\ndef count(k):\n    global n\n    n += k\n    return n\n"
    r = sb.run(counter, STATEFUL)
    assert (r.status, r.n_passed) == ("passed", 5), r
    skips = "n = 0\ndef count(k):\n    global n\n    n += k\n    return n if n != 1 else -1\n"
    r = sb.run(skips, STATEFUL)  # test 0 fails; its message's call is served after the planned calls, once
    assert (r.status, r.n_passed, r.failing_test) == ("failed", 4, STATEFUL.tests[0]), r
    assert "AssertionError" in r.message


def test_result_that_is_not_plain_data_stops_the_plan(sb):
    task = Task(task_id="toy/obj", prompt="", entry_point="make",
                tests=("assert make(1).value == 1", "assert make(2).value == 2", "assert make(3) == 3"))
    program = "class Box:\n    def __init__(self, v):\n        self.value = v\ndef make(v):\n    return Box(v)\n"
    r = sb.run(program, task)
    assert (r.status, r.n_passed, r.failing_test) == ("failed", 2, task.tests[2]), r


def test_complete_plan_lets_the_program_exit_after_its_answers(sb):
    import builtins

    from prmlab.sandbox.plan import plan_job

    assert plan_job("", TASK.tests, builtins.__dict__)[1]  # every test planned, messages read only test variables
    assert not plan_job("", STATEFUL.tests, builtins.__dict__)[1]
    assert not plan_job("", ("assert inc(1) == 2, str(inc(1))",), builtins.__dict__)[1]
    r = sb.run(GOOD, TASK)  # the program's process exits on its own: still passed, exit status 0
    assert (r.status, r.n_passed) == ("passed", 3), r
    leaky = "import threading, time\ndef inc(x):\n    threading.Thread(target=time.sleep, args=(5,)).start()\n" \
            "    return x + 1\n"
    assert sb.run(leaky, TASK).passed  # its threads end with it


def test_jobs_queued_behind_a_dying_worker_run_on_a_fresh_one():
    """Each worker is sent its next job while it runs one: when it dies, the running job is crashed and the queued
    one, which never started, runs on a fresh worker."""
    with Sandbox(dataclasses.replace(CFG, workers=1)) as sb:
        assert sb.run(GOOD, TASK).passed
        worker_pid = sb._workers[0].proc.pid
        killer = threading.Timer(0.3, os.kill, (worker_pid, signal.SIGKILL))
        killer.start()
        slow, fast = sb.run_many([("import time\ndef inc(x):\n    time.sleep(1)\n", TASK), (GOOD + "# 2\n", TASK)])
        killer.join()
        assert slow.status == "crashed" and "worker died" in slow.message
        assert fast.passed and sb._workers[0].proc.pid != worker_pid


def test_the_protections_probe_leaves_no_directory(tmp_path, monkeypatch):
    from prmlab.sandbox import protections

    monkeypatch.setenv("PRMLAB_SANDBOX_TMP", str(tmp_path))
    os.chmod(tmp_path, 0o755)
    assert protections(refresh=True).mode != "unavailable"
    assert list(tmp_path.iterdir()) == []
