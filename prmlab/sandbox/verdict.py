"""From what the worker observed to a typed result (stdlib only; imported by :mod:`prmlab.sandbox.worker`).

Inputs: the test runner's report lines (``S``, ``P ok msg``, ``T i ok msg``, ``D``; see
:mod:`prmlab.sandbox.harness`), the exit status and resource usage of the program's process and of the runner,
whether the wall clock ran out, and whether any process was left behind. A run passes only on a positive signal:
the runner reported ``D`` after every test passed, both processes exited with status 0, and nothing survived.
"""

import os
import signal

SETUP_FAILED = 71
MSG_CHARS = 300


def parse(report):
    """Report lines split into fields (the runner alone writes this pipe; nothing else can)."""
    return [line.split(" ", 3) for line in report.decode("utf-8", "replace").split("\n") if line]


def _steps(report, n_tests):
    ready, program, tests, done = False, None, {}, False
    for f in parse(report):
        if f[0] == "S":
            ready = True
        elif f[0] == "P" and program is None and len(f) >= 2:
            program = (f[1] == "1", " ".join(f[2:]))
        elif f[0] == "T" and len(f) >= 3 and f[1].isdigit() and int(f[1]) < n_tests and int(f[1]) not in tests:
            tests[int(f[1])] = (f[2] == "1", f[3] if len(f) > 3 else "")
        elif f[0] == "D":
            done = True
    return ready, program, tests, done


def _cpu(rusage):
    return rusage.ru_utime + rusage.ru_stime if rusage else 0.0


def _why(code, who):
    if code == SETUP_FAILED + 1:
        return f"{who} closed or broke the sandbox's channel"
    return f"{who} was killed by signal {signal.Signals(-code).name}" if code < 0 else f"{who} exited with status {code}"


def verdict(header, p, t, timed_out, survivors, report, output):
    """``p`` and ``t``: ``(wait status, rusage)`` of the program's process and of the test runner."""
    n_tests, lim = header["n_tests"], header["limits"]
    ready, program, tests, done = _steps(report, n_tests)
    n_passed = sum(ok for ok, _ in tests.values())
    failing = next((i for i in range(n_tests) if not tests.get(i, (False,))[0]), None)
    code, tcode = os.waitstatus_to_exitcode(p[0]), os.waitstatus_to_exitcode(t[0])
    res = {"n_tests": n_tests, "n_passed": n_passed, "failing_index": None, "message": None}
    if SETUP_FAILED in (code, tcode) and program is None:
        return dict(res, status="error", n_passed=0, message="the sandbox could not set up the child processes")
    if program is not None and not program[0]:
        res["message"] = "program raised " + program[1]
    elif failing is not None and program is not None:
        res["failing_index"] = failing
        res["message"] = tests[failing][1] if failing in tests else None
    if timed_out:
        return dict(res, status="timed_out", message=f"wall-clock timeout after {lim['timeout_s']} s")
    for c, usage in ((code, p[1]), (tcode, t[1])):
        if c == -signal.SIGXCPU or (c == -signal.SIGKILL and _cpu(usage) >= lim["cpu_time_s"]):
            return dict(res, status="timed_out", message=f"CPU time limit of {lim['cpu_time_s']} s exceeded")
    if done and code == 0 and tcode == 0 and survivors:
        return dict(res, status="failed", n_passed=0,
                    message="the program left processes running after its tests (killed); this never passes")
    if done and code == 0 and tcode == 0:
        ok = program is not None and program[0] and n_passed == n_tests > 0
        return dict(res, status="passed" if ok else "failed")
    why = _why(code, "the program") if code != 0 or tcode == 0 else _why(tcode, "the test runner")
    last = output.decode("utf-8", "replace").strip().splitlines()[-1:] if output else []
    message = f"{why} before its tests finished" + (f"; last output: {last[0][:MSG_CHARS]}" if last else "")
    return dict(res, status="crashed", message=message)
