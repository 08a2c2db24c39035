"""Best-of-N reranking by the PRM, against a random pick and the oracle (pure).

For each task the policy samples N candidate programs; the PRM scores each line of each one. Reranking keeps the
candidate whose response score is highest and asks whether it passes the tests. This is the cheapest way to see
whether a PRM is useful at all (no RL needed), and the way recent code PRMs are judged. Two references bound it:

    random   the expected pass rate of a uniformly random pick, exactly c/n per task (not sampled)
    oracle   1 if any of the N candidates passes: what a perfect verifier would reach

so a useful PRM lands between them, and (prm - random) / (oracle - random) is the share of the possible gain it gets.

Response score (``how``):

    "min"   s(y) = min_m s_m   (default) -- the usual PRM aggregation: a program is only as good as its worst line,
            since one wrong line sinks it no matter how good the others are, and the PRM's label for a line is whether
            the prefix can still be completed into a passing program, so once it falls it should stay low.
    "last"  s(y) = s_M         -- the PRM's score of the last line is its estimate for the whole program (the prefix
            that is the complete response), i.e. an outcome-style verifier read off the PRM.

Lines flagged neutral (comments, blank lines; label 0) are left out of both aggregations: their scores carry no
verdict and would otherwise pull the minimum towards 0. A candidate with no scored lines left (an empty response, or
comments only) scores -inf: the PRM has endorsed nothing in it, so it is picked only when every candidate is empty.
Ties for the top score are broken uniformly at random and reported as the exact expectation (the share of passing
candidates among the tied ones), so a constant PRM scores exactly the random pick.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Aggregation = Literal["min", "last"]
AGGREGATIONS: tuple[str, ...] = ("min", "last")


@dataclass(frozen=True)
class Candidate:
    """One sampled response: the PRM's score per line, whether it passed, and optionally which lines are neutral."""

    scores: tuple[float, ...]
    passed: bool
    neutral: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", tuple(float(s) for s in self.scores))
        if self.neutral is not None:
            object.__setattr__(self, "neutral", tuple(bool(x) for x in self.neutral))
        if self.neutral is not None and len(self.neutral) != len(self.scores):
            raise ValueError(f"{len(self.scores)} scores but {len(self.neutral)} neutral flags")
        if any(math.isnan(s) for s in self.scores):
            raise ValueError("a line score is NaN")


@dataclass(frozen=True)
class RerankResult:
    """Best-of-N accuracy of the PRM's pick, a random pick and the oracle, overall and per task (task order kept).

    prm, random, oracle: means over tasks of the per-task values; selected: the index of the first top-scoring
    candidate of each task; n_candidates: N of each task.
    """

    how: str
    prm: float
    random: float
    oracle: float
    n_tasks: int
    per_task_prm: tuple[float, ...]
    per_task_random: tuple[float, ...]
    per_task_oracle: tuple[float, ...]
    selected: tuple[int, ...]
    n_candidates: tuple[int, ...]


def response_score(scores: Sequence[float], how: Aggregation = "min",
                   neutral: Sequence[bool] | None = None) -> float:
    """One number per response from its line scores s_1..s_M, neutral lines left out.

        how = "min":   s(y) = min_{m not neutral} s_m
        how = "last":  s(y) = s_{m*},  m* the last line that is not neutral
        no line left:  s(y) = -inf
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    kept = [s for m, s in enumerate(scores) if neutral is None or not neutral[m]]  # s_m, m not neutral
    if not kept:
        return -math.inf
    return float(min(kept)) if how == "min" else float(kept[-1])


def _top(candidates: Sequence[Candidate], how: Aggregation) -> list[int]:
    """Indices of the candidates with the highest response score (argmax set, ties kept)."""
    if not candidates:
        raise ValueError("a task has no candidates")
    scores = [response_score(c.scores, how, c.neutral) for c in candidates]
    best = max(scores)
    return [i for i, s in enumerate(scores) if s == best]


def select_best(candidates: Sequence[Candidate], how: Aggregation = "min") -> int:
    """Index of the PRM's pick: argmax_i s(y_i), the first one on ties."""
    return _top(candidates, how)[0]


def rerank_task(candidates: Sequence[Candidate], how: Aggregation = "min") -> tuple[float, float, float]:
    """``(prm, random, oracle)`` for one task's N candidates y_1..y_N with pass flags p_i.

        prm    = (1/|A|) sum_{i in A} p_i,  A = argmax_i s(y_i)   (uniform tie-break, exact expectation)
        random = c / N,                      c = sum_i p_i
        oracle = 1[c > 0]
    """
    top = _top(candidates, how)  # A
    c = sum(1 for x in candidates if x.passed)  # c
    prm = sum(1 for i in top if candidates[i].passed) / len(top)
    return prm, c / len(candidates), float(c > 0)


def rerank(tasks: Sequence[Sequence[Candidate]], how: Aggregation = "min") -> RerankResult:
    """Best-of-N reranking over tasks: per-task :func:`rerank_task`, then means over tasks.

        acc_prm = (1/T) sum_t prm_t,  acc_random = (1/T) sum_t c_t / N_t,  acc_oracle = (1/T) sum_t 1[c_t > 0]

    The per-task tuples feed the bucketing and bootstrap helpers of :mod:`prmlab.evaluation.passk` (by length,
    with intervals over tasks).
    """
    if not tasks:
        raise ValueError("no tasks")
    per_task = [rerank_task(cands, how) for cands in tasks]
    prm, rnd, orc = (tuple(col) for col in zip(*per_task))
    t = len(per_task)
    return RerankResult(how=how, prm=sum(prm) / t, random=sum(rnd) / t, oracle=sum(orc) / t, n_tasks=t,
                        per_task_prm=prm, per_task_random=rnd, per_task_oracle=orc,
                        selected=tuple(select_best(cands, how) for cands in tasks),
                        n_candidates=tuple(len(cands) for cands in tasks))
