"""Pure metrics of a process reward model's line scores against line labels (see docs/metrics.md).

A PRM predicts, for every line m of a response, the label of the prefix ending there: +1 (the policy can still
finish it into a passing program), -1 (it cannot), 0 (a neutral comment/blank line). Scores live on the same scale
as labels (the BCE option maps its logit to 2 sigmoid(z) - 1). Every function here takes flat sequences of floats
(one entry per line, all responses concatenated) or :class:`~prmlab.records.LineScores` with labels attached, and
returns plain numbers, so it is testable by hand.

    line_accuracy        share of non-neutral lines whose score has the label's sign
    roc_auc, roc_curve   the Mann-Whitney AUC and the curve it is the area under
    first_error_auc      ROC AUC of "at or before the last recoverable line" (+1) vs "after it" (-1)
    calibration_curve    per score bin: mean score, mean label, share of +1 lines
    mse                  mean squared error (neutral lines included or not)
    length_baseline      the length-only baseline score -(position / T) of every line

Within and across responses (issue 16; the baselines that see what the PRM sees are in :mod:`prmlab.prm.baselines`):

    within_response_terms    (U, P) of one response: line pairs (+1, -1) of the same response the score orders right
    first_error, predicted_first_error, localised    the labelled vs the predicted first error of one response
    response_score           a response's score: min or last non-neutral line score
    response_table, RESPONSE_METRICS, within_across  per-response quantities and the metrics over them
    bootstrap_interval       a seeded percentile interval over resampled responses
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from prmlab.records import LineScores


def _check_same_length(scores: Sequence[float], labels: Sequence[float]) -> None:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve, by the Mann-Whitney statistic (ties count one half).

        AUC = P(s+ > s-) + 0.5 P(s+ = s-)   over all pairs of a positive and a negative item

    Computed from average ranks in O(n log n). ``nan`` when either class is empty.
    """
    _check_same_length(scores, positive)
    n_pos = sum(1 for p in positive if p)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average rank (1-based) over each run of tied scores
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, p in zip(ranks, positive) if p)  # sum of positive ranks
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)  # U / (n+ n-)


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[list[float], list[float]]:
    """``(fpr, tpr)`` of the rule "score >= threshold" over every distinct threshold, from (0, 0) to (1, 1).

    Tied scores move both rates at once (one diagonal step), so the trapezoid area equals :func:`roc_auc`.
    """
    _check_same_length(scores, positive)
    n_pos = sum(1 for p in positive if p)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return [0.0, 1.0], [0.0, 1.0]
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0
    items = sorted(zip(scores, positive), key=lambda x: -x[0])
    for i, (s, p) in enumerate(items):
        tp += p
        fp += not p
        if i + 1 == len(items) or items[i + 1][0] != s:
            fpr.append(fp / n_neg)  # FP / N-
            tpr.append(tp / n_pos)  # TP / N+
    return fpr, tpr


def line_accuracy(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.0) -> float:
    """Share of non-neutral lines (label != 0) whose prediction ``score > threshold`` equals ``label > 0``.

    ``nan`` when there is no non-neutral line.
    """
    _check_same_length(scores, labels)
    pairs = [(s > threshold, y > 0) for s, y in zip(scores, labels) if y != 0]
    return sum(p == y for p, y in pairs) / len(pairs) if pairs else float("nan")


def first_error_auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """ROC AUC of telling lines before vs after the first error.

    Positives: lines at or before the last recoverable line (label +1); negatives: lines after it (label -1);
    neutral lines (label 0) are ignored. Higher scores should mean "still recoverable".
    """
    _check_same_length(scores, labels)
    kept = [(s, y > 0) for s, y in zip(scores, labels) if y != 0]
    return roc_auc([s for s, _ in kept], [p for _, p in kept])


def mse(scores: Sequence[float], labels: Sequence[float], include_neutral: bool = True) -> float:
    """Mean squared error (1/N) sum_i (s_i - y_i)^2 over all lines, or only non-neutral ones. ``nan`` if none."""
    _check_same_length(scores, labels)
    errs = [(s - y) ** 2 for s, y in zip(scores, labels) if include_neutral or y != 0]
    return sum(errs) / len(errs) if errs else float("nan")


def calibration_curve(scores: Sequence[float], labels: Sequence[float], n_bins: int = 10,
                      low: float = -1.0, high: float = 1.0) -> list[dict[str, float]]:
    """Reliability of the scores on non-neutral lines, in ``n_bins`` equal bins of the score over [low, high].

    For each non-empty bin b: ``mean_score`` = mean of s_i in b, ``mean_label`` = mean of y_i in b (compare with
    ``mean_score``: a calibrated regressor lies on the diagonal), ``frac_positive`` = share of y_i = +1 in b (compare
    with (mean_score + 1) / 2), and ``count``. Scores outside [low, high] fall into the end bins.
    """
    _check_same_length(scores, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    width = (high - low) / n_bins
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for s, y in zip(scores, labels):
        if y == 0:
            continue
        b = min(max(int(math.floor((s - low) / width)), 0), n_bins - 1)  # bin index of s
        bins[b].append((s, y))
    out = []
    for b, items in enumerate(bins):
        if not items:
            continue
        n = len(items)
        out.append({"bin_low": low + b * width, "bin_high": low + (b + 1) * width,
                    "mean_score": sum(s for s, _ in items) / n, "mean_label": sum(y for _, y in items) / n,
                    "frac_positive": sum(y > 0 for _, y in items) / n, "count": n})
    return out


def expected_calibration_error(curve: Sequence[dict[str, float]]) -> float:
    """ECE = sum_b (n_b / N) |mean_label_b - mean_score_b| over the bins of :func:`calibration_curve`."""
    total = sum(b["count"] for b in curve)
    return sum(b["count"] * abs(b["mean_label"] - b["mean_score"]) for b in curve) / total if total else float("nan")


def length_baseline(n_lines: int) -> list[float]:
    """The length-only baseline score of each line of a T-line response: s_m = -(m / T) for m = 1..T."""
    return [-(m / n_lines) for m in range(1, n_lines + 1)]


def flatten(records: Sequence[LineScores]) -> tuple[list[float], list[float]]:
    """All lines' ``(scores, labels)`` of records that carry labels, concatenated in order."""
    scores: list[float] = []
    labels: list[float] = []
    for r in records:
        if r.labels is None:
            raise ValueError(f"LineScores {r.response_id!r} has no labels to evaluate against")
        scores += r.scores
        labels += r.labels
    return scores, labels


def evaluate(records: Sequence[LineScores], n_bins: int = 10) -> dict[str, float]:
    """Every metric of this module on scored, labelled responses, plus the length-only baseline's AUC.

    Keys: ``auc``, ``baseline_auc`` (scores -(m / T)), ``accuracy``, ``mse`` (all lines), ``mse_non_neutral``,
    ``ece``, ``n_lines``, ``n_responses``.
    """
    scores, labels = flatten(records)
    baseline = [s for r in records for s in length_baseline(len(r.lines))]
    curve = calibration_curve(scores, labels, n_bins)
    return {"auc": first_error_auc(scores, labels), "baseline_auc": first_error_auc(baseline, labels),
            "accuracy": line_accuracy(scores, labels), "mse": mse(scores, labels),
            "mse_non_neutral": mse(scores, labels, include_neutral=False),
            "ece": expected_calibration_error(curve), "n_lines": len(scores), "n_responses": len(records)}


# ------------------------------------------------------------------------------ within and across responses


def non_neutral(scores: Sequence[float], labels: Sequence[float]) -> tuple[list[float], list[float]]:
    """The scores and labels of the lines whose label is not 0 (comment/blank lines dropped), in order."""
    _check_same_length(scores, labels)
    kept = [(s, y) for s, y in zip(scores, labels) if y != 0]
    return [s for s, _ in kept], [y for _, y in kept]


def within_response_terms(scores: Sequence[float], labels: Sequence[float]) -> tuple[float, int]:
    """``(U, P)`` of one response: its line pairs of a +1 line i and a -1 line j, neutral lines dropped.

        U = sum_{i: y_i > 0} sum_{j: y_j < 0} [s_i > s_j] + 0.5 [s_i = s_j]      P = n+ n-

    U / P is the response's within-response AUC (undefined when P = 0: the response has one kind of line only).
    """
    s, y = non_neutral(scores, labels)
    pos = [a for a, b in zip(s, y) if b > 0]  # s_i of +1 lines
    neg = [a for a, b in zip(s, y) if b < 0]  # s_j of -1 lines
    u = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return float(u), len(pos) * len(neg)


def first_error(labels: Sequence[float]) -> int | None:
    """Index, among the non-neutral lines, of the first -1 line (the labelled first error); None if there is none."""
    y = [v for v in labels if v != 0]
    return next((i for i, v in enumerate(y) if v < 0), None)


def predicted_first_error(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.0) -> int | None:
    """Index, among the non-neutral lines, of the first line scored below ``threshold``; None if there is none.

    Neutral lines are skipped as the labels skip them (comment/blank is syntax, known without the oracle).
    """
    s, _ = non_neutral(scores, labels)
    return next((i for i, v in enumerate(s) if v < threshold), None)


def localised(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.0,
              tolerance: int = 0) -> bool | None:
    """Is the predicted first error within ``tolerance`` lines of the labelled one: |m_hat - m*| <= tolerance?

    m* = :func:`first_error`, m_hat = :func:`predicted_first_error` (indices among non-neutral lines). None when
    the response has no labelled error (it passes); False when it has one but no line is scored below threshold.
    """
    m_star = first_error(labels)
    if m_star is None:
        return None
    m_hat = predicted_first_error(scores, labels, threshold)
    return m_hat is not None and abs(m_hat - m_star) <= tolerance


def response_score(scores: Sequence[float], labels: Sequence[float], how: str = "min") -> float:
    """A response's score from its non-neutral lines (as in the evaluation stage's reranker).

        how = "min":  s(y) = min_m s_m        how = "last":  s(y) = s_{m*}, m* the last non-neutral line

    ``nan`` when every line is neutral.
    """
    if how not in ("min", "last"):
        raise ValueError(f"how must be 'min' or 'last', got {how!r}")
    s, _ = non_neutral(scores, labels)
    if not s:
        return float("nan")
    return float(min(s)) if how == "min" else float(s[-1])


@dataclass(frozen=True)
class ResponseTable:
    """Per-response quantities of scored, labelled responses, as arrays (one entry per response)."""

    u: np.ndarray  # within-response U
    p: np.ndarray  # within-response pairs n+ n-
    hit0: np.ndarray  # localised exactly (nan when the response passes)
    hit1: np.ndarray  # localised within one line (nan when the response passes)
    score_min: np.ndarray  # min non-neutral line score
    score_last: np.ndarray  # last non-neutral line score
    passed: np.ndarray  # category == "correct"
    line_scores: list[np.ndarray]  # non-neutral line scores of each response
    line_positive: list[np.ndarray]  # their labels > 0


def response_table(records: Sequence[LineScores], threshold: float = 0.0) -> ResponseTable:
    """The :class:`ResponseTable` of records with labels; a response passes when ``meta["category"]`` is correct,
    or, without a category, when it has no -1 line."""
    u, p, h0, h1, smin, slast, passed, ls, lp = ([] for _ in range(9))
    for r in records:
        if r.labels is None:
            raise ValueError(f"LineScores {r.response_id!r} has no labels to evaluate against")
        a, b = within_response_terms(r.scores, r.labels)
        u.append(a)
        p.append(b)
        for out, tol in ((h0, 0), (h1, 1)):
            hit = localised(r.scores, r.labels, threshold, tol)
            out.append(float("nan") if hit is None else float(hit))
        smin.append(response_score(r.scores, r.labels, "min"))
        slast.append(response_score(r.scores, r.labels, "last"))
        cat = r.meta.get("category")
        passed.append(cat == "correct" if cat is not None else first_error(r.labels) is None)
        s, y = non_neutral(r.scores, r.labels)
        ls.append(np.asarray(s, dtype=float))
        lp.append(np.asarray(y, dtype=float) > 0)
    f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    return ResponseTable(f(u), f(p), f(h0), f(h1), f(smin), f(slast), np.asarray(passed, dtype=bool), ls, lp)


def _auc_np(scores: np.ndarray, positive: np.ndarray) -> float:
    """:func:`roc_auc` in numpy: (sum of positive average ranks - n+ (n+ + 1) / 2) / (n+ n-)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2  # average 1-based rank of each distinct score
    return float((avg_rank[inv][positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    return float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def _within_mean(t: ResponseTable, i: np.ndarray) -> float:
    both = t.p[i] > 0
    return float((t.u[i][both] / t.p[i][both]).mean()) if both.any() else float("nan")


def _within_only(x: np.ndarray, t: ResponseTable, i: np.ndarray) -> float:
    return _nanmean(x[i][t.p[i] > 0])


RESPONSE_METRICS: dict[str, Callable[[ResponseTable, np.ndarray], float]] = {
    # within responses (only responses with both kinds of line count)
    "within_auc": lambda t, i: _ratio(t.u[i], t.p[i]),  # sum_r U_r / sum_r P_r (pairs pooled)
    "within_auc_mean": _within_mean,  # (1/R) sum_r U_r / P_r (each response weighs the same)
    "loc_exact": lambda t, i: _within_only(t.hit0, t, i),  # m_hat = m*
    "loc_within1": lambda t, i: _within_only(t.hit1, t, i),  # |m_hat - m*| <= 1
    # every failing response (Wrong from line 1 included) and across responses
    "loc_exact_failing": lambda t, i: _nanmean(t.hit0[i]),
    "across_auc_min": lambda t, i: _auc_np(t.score_min[i], t.passed[i]),  # passes vs min line score
    "across_auc_last": lambda t, i: _auc_np(t.score_last[i], t.passed[i]),  # passes vs last line score
    "auc": lambda t, i: _auc_np(np.concatenate([t.line_scores[k] for k in i]),
                                np.concatenate([t.line_positive[k] for k in i])),  # pooled first_error_auc
}


def bootstrap_interval(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``stat`` over resampled responses (with replacement).

        I_b ~ Uniform{0..n-1}^n,  b = 1..B;   [lo, hi] = [q_{(1-level)/2}, q_{(1+level)/2}] of {stat(I_b)}

    Seeded (``numpy.random.default_rng(seed)``): the same seed gives the same resamples, so two statistics bootstrapped
    with one seed are paired (use it for differences). Resamples where ``stat`` is nan are dropped.
    """
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)]) if n else np.array([])
    vals = vals[~np.isnan(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def within_across(records: Sequence[LineScores], threshold: float = 0.0, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, float]:
    """Every :data:`RESPONSE_METRICS` entry with its bootstrap interval over responses (``<name>_lo``, ``_hi``),
    and the counts ``n_responses``, ``n_both`` (responses with both kinds of line), ``n_failing``, ``n_passed``."""
    t = response_table(records, threshold)
    n = len(t.p)
    out: dict[str, float] = {}
    for name, fn in RESPONSE_METRICS.items():
        out[name] = fn(t, np.arange(n)) if n else float("nan")
        out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_interval(lambda i: fn(t, i), n, n_boot, seed=seed)
    out.update(n_responses=n, n_both=int((t.p > 0).sum()), n_failing=int((~np.isnan(t.hit0)).sum()),
               n_passed=int(t.passed.sum()))
    return out
