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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
