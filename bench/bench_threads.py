"""torch CPU threads for the tiny preset: the same RL stage with one and with two threads, side by side.

Runs ``prmlab rl --preset tiny --variant sparse --set rl.iterations=N --set model.num_threads=T`` for each T of
``--threads`` (default 1,2) in a fresh run directory each time, alternating ``--repeats`` times, and reports for
each T the median wall time (model loading included: what a user waits for), the ratio to the first T, and whether
every logged metric (``rl/sparse/metrics.jsonl``: pass rate, returns, losses, KL, ...) is identical between repeats
of one thread count, and the largest relative difference of a metric between thread counts (torch splits its
reductions differently with more threads, so the last bits move: measured, not assumed). ``--load L`` starts L busy-looping processes for the whole measurement (other jobs on the machine: that is
where extra threads can lose, since a thread that waits for a core holds up every matrix product).

    .venv/bin/python bench/bench_threads.py [--iterations 4] [--repeats 2] [--threads 1,2] [--load 0]

Writes runs/bench/threads.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRMLAB = Path(sys.executable).with_name("prmlab")


def burn() -> None:
    """A busy loop (another job on the machine)."""
    while True:
        pass


def one_run(threads: int, iterations: int) -> tuple[float, list[dict]]:
    """Wall seconds of one ``prmlab rl`` run and its logged metrics (they hold no timings)."""
    with tempfile.TemporaryDirectory(prefix="prmlab-threads-") as d:
        cmd = [str(PRMLAB), "rl", "--preset", "tiny", "--variant", "sparse", "--allow-execution", "--run-dir", d,
               "--set", f"rl.iterations={iterations}", "--set", f"model.num_threads={threads}"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        dt = time.perf_counter() - t0
        lines = Path(d, "rl", "sparse", "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return dt, [json.loads(x) for x in lines if x.strip()]


def largest_difference(a: list[dict], b: list[dict]) -> float:
    """max |x - y| / max(|x|, |y|) over every numeric metric of every iteration (inf if the runs differ in shape)."""
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        for k in x.keys() | y.keys():
            u, v = x.get(k), y.get(k)
            if isinstance(u, (int, float)) and isinstance(v, (int, float)) and u != v:
                worst = max(worst, abs(u - v) / max(abs(u), abs(v)))
            elif u != v and not (isinstance(u, (int, float)) and isinstance(v, (int, float))):
                return float("inf")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes beside the runs")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "threads.json"))
    a = ap.parse_args()
    counts = [int(x) for x in a.threads.split(",")]
    burners = [mp.Process(target=burn, daemon=True) for _ in range(a.load)]
    for p in burners:
        p.start()
    times: dict[int, list[float]] = {t: [] for t in counts}
    metrics: dict[int, list[dict]] = {}
    same_count, across = True, 0.0
    load0 = os.getloadavg()[0]
    try:
        for r in range(a.repeats):
            for t in counts:
                dt, m = one_run(t, a.iterations)
                times[t].append(dt)
                same_count &= m == metrics.setdefault(t, m)
                across = max(across, largest_difference(metrics[counts[0]], m))
                print(f"repeat {r}: {t} thread(s) {dt:6.1f} s", flush=True)
    finally:
        for p in burners:
            p.terminate()
    med = {t: statistics.median(v) for t, v in times.items()}
    print(f"\ncores {os.cpu_count()}, busy loops {a.load}, load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print("| threads | runs (s) | median (s) | vs first |\n|---|---|---|---|")
    for t in counts:
        print(f"| {t} | {', '.join(f'{x:.1f}' for x in times[t])} | {med[t]:.1f} | {med[t] / med[counts[0]]:.2f}x |")
    print(f"metrics identical between repeats with the same thread count: {same_count}; largest relative "
          f"difference of a metric between thread counts: {across:.2g} (0 = bit-identical)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"iterations": a.iterations, "load": a.load, "times": times, "median": med,
                                       "same_count_identical": same_count, "largest_relative_difference": across, "cores": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
