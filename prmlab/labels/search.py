"""Line labels by binary search with best-of-K completions (the paper's labelling), and the Monte-Carlo baseline.

A *step* is one line of the response. A prefix of m lines is **recoverable** when at least one of K completions,
sampled by the policy itself from that prefix, passes every unit test (the best-of-K oracle):

    rec(m) = 1[ max_{j=1..K} pass(x, y<=m + c_j) = 1 ],   c_j ~ pi(. | x, y<=m)

Assuming monotonicity (rec(m) = 0 implies rec(m') = 0 for every m' > m) and rec(0) = 1 (the policy can solve the
task from scratch), binary search finds the last recoverable line

    m* = max{ m in 0..T : rec(m) = 1 }

with ceil(log2(T + 1)) <= ceil(log2 T) + 1 oracle checks instead of T (or, probing the first line before
bisecting, one check for a response that is wrong from its first line and at most ceil(log2 T) + 1 in general).
Labels (line i, 1-based):

    label_i = +1 if i <= m*,  -1 if i > m*,  0 if line i is neutral (comment or blank) and neutral comments are on

Response categories: *correct* (the response passes), *revised* (fails, m* >= 1), *wrong* (fails, m* = 0).

Only code lines are searched: a prefix ending in a comment or blank line is the same program as the prefix before
it, so the driver searches over the S code-line positions and maps the result back to line numbers.

The Monte-Carlo (Math-Shepherd) baseline samples K completions at *every* code line: the hard label is
1[any passes], the soft label the fraction passing, and the reviewers' *marginal progress* label is the soft label
after a line minus the soft label before it.

This module is pure (no models, no execution); :mod:`prmlab.labels.driver` runs it on many responses in batches and
:mod:`prmlab.labels.stage` is the stage (sample, execute, label a run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

POSITIVE, NEUTRAL, NEGATIVE = 1.0, 0.0, -1.0


class PrefixOracle(Protocol):
    """``oracle(m) -> bool``: can the policy still finish the first m steps into a passing program?"""

    def __call__(self, m: int) -> bool: ...


# --------------------------------------------------------------------------------------------------------------
# The best-of-K oracle for one prefix


@dataclass(frozen=True)
class OracleResult:
    """Outcome and cost of one best-of-K check of a prefix."""

    recoverable: bool
    completions: int
    """Completions actually generated (fewer than K when sampling stopped at the first pass)."""
    executions: int
    """Programs judged against the tests (one per completion)."""
    cache_hits: int = 0
    """Judgements answered by the execution cache (or a duplicate program) instead of a new process."""


class BestOfK:
    """State of one best-of-K check, sampled in chunks so that it can stop at the first passing completion.

    ``want()`` is how many completions to generate next (0 when decided); ``update(passes)`` records their
    verdicts. Drivers advance many of these in lockstep so one generation call serves many prefixes.
    """

    def __init__(self, k: int, chunk: int | None = None, early_stop: bool = True):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.chunk = k if (chunk is None or not early_stop) else max(1, min(chunk, k))
        self.early_stop = early_stop
        self.generated = 0
        self.n_passing = 0
        self.cache_hits = 0

    @property
    def done(self) -> bool:
        return self.generated >= self.k or (self.early_stop and self.n_passing > 0)

    @property
    def recoverable(self) -> bool:
        return self.n_passing > 0

    def want(self) -> int:
        return 0 if self.done else min(self.chunk, self.k - self.generated)

    def update(self, passes: Sequence[bool], cache_hits: int = 0) -> None:
        if len(passes) > self.want():
            raise ValueError(f"got {len(passes)} verdicts, wanted at most {self.want()}")
        self.generated += len(passes)
        self.n_passing += sum(bool(p) for p in passes)
        self.cache_hits += cache_hits

    def result(self) -> OracleResult:
        return OracleResult(self.recoverable, self.generated, self.generated, self.cache_hits)


def best_of_k(sample: Callable[[int], Sequence[str]], judge: Callable[[Sequence[str]], Sequence[bool]], k: int,
              chunk: int | None = None, early_stop: bool = True) -> OracleResult:
    """Best-of-K check of one prefix: rec = 1[any of K completions passes].

    ``sample(n)`` returns n completions of the prefix, ``judge(completions)`` their pass/fail verdicts. With
    ``early_stop`` completions are drawn ``chunk`` at a time and sampling stops once one passes; the result counts
    what was actually generated and executed.
    """
    state = BestOfK(k, chunk, early_stop)
    while (n := state.want()) > 0:
        completions = list(sample(n))
        state.update(list(judge(completions)))
    return state.result()


# --------------------------------------------------------------------------------------------------------------
# Binary search for the last recoverable step


class BinarySearch:
    """Binary search for m* = max{m in 0..T : rec(m)}, one oracle check at a time (so drivers can batch them).

    Invariant, true before and after every check:

        rec(lo) = 1           (lo = 0 by assumption: the task is solvable from the empty prefix)
        rec(m)  = 0 for every m >= hi   (hi = T + 1 is a sentinel: vacuously true at the start)

    Each check of mid = (lo + hi) // 2 halves the open interval (lo, hi); the search ends when hi = lo + 1, and then
    m* = lo. Under a monotone oracle this is exactly the boundary an exhaustive scan finds, after
    ceil(log2(T + 1)) checks (<= ceil(log2 T) + 1).

    With ``probe_first`` the first check is m = 1 instead of the midpoint (any m in (lo, hi) keeps the invariant):
    rec(1) = 0 ends the search at once (a *Wrong* response, one check); otherwise bisection of (1, T + 1) follows,
    ceil(log2 T) more checks, so never more than ceil(log2 T) + 1 in all.
    """

    def __init__(self, T: int, probe_first: bool = False):
        if T < 0:
            raise ValueError(f"T must be >= 0, got {T}")
        self.T = T
        self.probe_first = probe_first
        self.lo, self.hi = 0, T + 1
        self.trace: list[tuple[int, bool]] = []
        """Every check as (m, recoverable), in order: where the search looked and what it saw."""

    @property
    def done(self) -> bool:
        return self.hi - self.lo <= 1

    def query(self) -> int | None:
        """The prefix length to check next, or None when the search is over."""
        if self.done:
            return None
        if self.probe_first and not self.trace:
            return 1  # probe the first step: one check settles a Wrong response
        return (self.lo + self.hi) // 2  # mid

    def update(self, recoverable: bool) -> None:
        mid = self.query()
        if mid is None:
            raise RuntimeError("the search is already over")
        self.trace.append((mid, bool(recoverable)))
        if recoverable:
            self.lo = mid  # rec(mid) = 1 keeps rec(lo) = 1
        else:
            self.hi = mid  # rec(mid) = 0 and monotonicity give rec(m) = 0 for m >= mid

    @property
    def result(self) -> int:
        if not self.done:
            raise RuntimeError("the search is not over yet")
        return self.lo

    @property
    def n_checks(self) -> int:
        return len(self.trace)


def binary_search_last_recoverable(check: PrefixOracle, T: int, probe_first: bool = False) -> tuple[int, int]:
    """``(m*, n_checks)``: the last recoverable step of T steps, by binary search (see :class:`BinarySearch`)."""
    search = BinarySearch(T, probe_first)
    while (m := search.query()) is not None:
        search.update(check(m))
    return search.result, search.n_checks


def max_checks(T: int, probe_first: bool = False) -> int:
    """Most oracle checks binary search makes on T steps: ceil(log2(T + 1)); 1 + ceil(log2 T) when probing first."""
    if T <= 0:
        return 0
    return 1 + math.ceil(math.log2(T)) if probe_first else math.ceil(math.log2(T + 1))


def exhaustive_last_recoverable(check: PrefixOracle, T: int) -> int:
    """Reference scan: the last m before the first unrecoverable prefix (T when every prefix is recoverable)."""
    for m in range(1, T + 1):
        if not check(m):
            return m - 1
    return T


# --------------------------------------------------------------------------------------------------------------
# Lines, labels and categories


def neutral_flags(lines: Sequence[str]) -> list[bool]:
    """Whether each line is neutral (comment or blank), by :func:`prmlab.lines.is_neutral`."""
    from prmlab.lines import is_neutral

    return [bool(is_neutral(line)) for line in lines]


def step_positions(neutral: Sequence[bool]) -> list[int]:
    """1-based line numbers of the code (non-neutral) lines: the steps binary search runs over."""
    return [i + 1 for i, n in enumerate(neutral) if not n]


def labels_from_boundary(lines: Sequence[str], m: int, neutral_comments: bool = True,
                         neutral: Sequence[bool] | None = None) -> list[float]:
    """Labels of a response whose last recoverable line is m (0..T, in lines).

        label_i = +1 if i <= m, else -1;   label_i = 0 for a neutral line when ``neutral_comments``

    Without ``neutral_comments`` a neutral line takes the label of the line before it (+1 at the start), because
    a prefix ending in a comment is the same program as the prefix before it. A passing response has m = T.
    """
    flags = list(neutral) if neutral is not None else neutral_flags(lines)
    if len(flags) != len(lines):
        raise ValueError(f"{len(lines)} lines but {len(flags)} neutral flags")
    if not 0 <= m <= len(lines):
        raise ValueError(f"m must be in 0..{len(lines)}, got {m}")
    labels: list[float] = []
    previous = POSITIVE
    for i, is_neutral in enumerate(flags, start=1):
        if is_neutral:
            labels.append(NEUTRAL if neutral_comments else previous)
        else:
            previous = POSITIVE if i <= m else NEGATIVE
            labels.append(previous)
    return labels


def category_of(passed: bool, m_steps: int) -> str:
    """``correct`` if the response passes; else ``revised`` if some non-empty prefix is recoverable (m* >= 1
    code lines), else ``wrong``."""
    if passed:
        return "correct"
    return "revised" if m_steps >= 1 else "wrong"


def first_negative(labels: Sequence[float]) -> int | None:
    """0-based index of the first line labelled below 0 (the first -1), or None when there is none."""
    return next((i for i, v in enumerate(labels) if v < 0), None)


def is_monotone(labels: Sequence[float]) -> bool:
    """True when no +1 follows a -1 (neutral 0 labels ignored): the monotonicity binary search assumes."""
    seen_negative = False
    for v in labels:
        if v < 0:
            seen_negative = True
        elif v > 0 and seen_negative:
            return False
    return True


# --------------------------------------------------------------------------------------------------------------
# Monte-Carlo labels (Math-Shepherd) and marginal progress


def monte_carlo_labels(n_passing: Sequence[int | None], k: int, neutral: Sequence[bool],
                       neutral_comments: bool = True, soft0: float = 1.0) -> tuple[list[float], list[float]]:
    """``(hard, soft)`` labels from K completions sampled at every code line.

        soft_i = n_passing_i / K                      (fraction of completions of y<=i that pass)
        hard_i = +1 if n_passing_i > 0 else -1        (0 for neutral lines when ``neutral_comments``)

    ``n_passing[i]`` is ignored for neutral lines (None is fine there): their prefix is the previous line's, so they
    copy its soft value (``soft0``, the empty prefix's rate, at the start) and, without neutral comments, its hard
    label (+1 at the start).
    """
    if len(n_passing) != len(neutral):
        raise ValueError(f"{len(n_passing)} counts but {len(neutral)} neutral flags")
    hard: list[float] = []
    soft: list[float] = []
    prev_soft, prev_hard = soft0, POSITIVE
    for count, is_neutral in zip(n_passing, neutral):
        if is_neutral:
            soft.append(prev_soft)
            hard.append(NEUTRAL if neutral_comments else prev_hard)
            continue
        if count is None or not 0 <= count <= k:
            raise ValueError(f"code line needs a pass count in 0..{k}, got {count!r}")
        prev_soft = count / k  # soft_i
        prev_hard = POSITIVE if count > 0 else NEGATIVE  # hard_i
        soft.append(prev_soft)
        hard.append(prev_hard)
    return hard, soft


def progress_labels(soft: Sequence[float], soft0: float) -> list[float]:
    """Marginal progress of each line: p_i = soft_i - soft_{i-1}, with soft_0 the empty prefix's success rate.

    Sums to soft_T - soft_0, so padding a program with lines that change nothing earns exactly 0.
    """
    out, prev = [], soft0
    for s in soft:
        out.append(s - prev)  # p_i
        prev = s
    return out
