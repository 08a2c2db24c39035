"""Baselines that see what the PRM sees, scored with the PRM's own metrics (see docs/metrics.md, issue 16).

A PRM reads the prompt and the response up to line m. Without reading a single token of code, that already tells
the line's position m, the response length T, and the task's length L (how many steps the prompt asks for), and
on the toy tasks long tasks are almost always failed from line 1. A PRM number means something only where it
beats the best of these:

    position          p(+1) from m / T                      (the length-only baseline -(m/T), fitted)
    task_length       p(+1) from L                          (constant within a response)
    response_length   p(+1) from T                          (constant within a response)
    fitted            p(+1) from m / T, m, T, L together    (a logistic regression)

Each is a logistic regression (features standardised) fitted on the non-neutral lines of the PRM's *training*
split, target y = [label > 0], and scores every line 2 p - 1, on the label scale, so the PRM's threshold 0 applies
to it too. L is :func:`task_length` of the prompt.

    task_length(prompt)                                 L from the prompt alone
    line_features(n_lines, task_len)                    the feature rows of one response
    fit_baseline(train, features) / baseline_scores     fit on training responses, score held-out ones
    fit_baselines(train, test)                          every baseline's LineScores on the test responses
    compare(prm_scores, baselines)                      PRM and baselines side by side, best baseline, PRM - best
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prmlab.prm.metrics import RESPONSE_METRICS, bootstrap_interval, response_table, within_across
from prmlab.records import LineLabels, LineScores

FEATURES: tuple[str, ...] = ("position", "line", "response_length", "task_length")
"""Columns of :func:`line_features`: m / T, m, T, L."""
BASELINES: dict[str, tuple[str, ...]] = {
    "position": ("position",),
    "task_length": ("task_length",),
    "response_length": ("response_length",),
    "fitted": FEATURES,
}


def task_length(prompt: str) -> int:
    """L = the number of non-blank lines of the prompt.

    For a toy task (``def`` line, one docstring line per step, closing quotes) this is the reference solution's
    line count + 2: a monotone proxy, so every baseline built on it ranks and fits as on the true count. For other
    sources it is a rough proxy of how much the prompt asks for.
    """
    return sum(1 for line in prompt.splitlines() if line.strip())


def line_features(n_lines: int, task_len: float) -> np.ndarray:
    """Rows (m / T, m, T, L) for m = 1..T of a T-line response to a task of length L: shape (T, 4)."""
    m = np.arange(1, n_lines + 1, dtype=float)  # 1-based line index
    T = float(n_lines)
    return np.stack([m / T, m, np.full_like(m, T), np.full_like(m, float(task_len))], axis=1)


def _columns(features: Sequence[str]) -> list[int]:
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {FEATURES}")
    return [FEATURES.index(f) for f in features]


def fit_baseline(train: Sequence[LineLabels], features: Sequence[str]):
    """A logistic regression of y = [label > 0] on the chosen features of the training responses' non-neutral lines.

    Raises ValueError when the training lines hold one class only.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cols = _columns(features)
    xs, ys = [], []
    for r in train:
        x = line_features(len(r.labels), task_length(r.prompt))[:, cols]  # (T, F)
        y = np.asarray(r.labels, dtype=float)
        xs.append(x[y != 0])
        ys.append(y[y != 0] > 0)
    X, Y = np.concatenate(xs), np.concatenate(ys)
    if len(set(Y.tolist())) < 2:
        raise ValueError(f"the {len(Y)} training lines hold one class only: no baseline can be fitted")
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)


def baseline_scores(model, features: Sequence[str], records: Sequence[LineLabels]) -> list[LineScores]:
    """Line scores 2 p(+1 | features) - 1 of a fitted baseline on labelled responses (labels attached)."""
    cols = _columns(features)
    out = []
    for r in records:
        x = line_features(len(r.labels), task_length(r.prompt))[:, cols]
        p = model.predict_proba(x)[:, 1] if len(x) else np.zeros(0)  # p(+1) per line
        out.append(LineScores(r.task_id, r.response_id, r.completions, tuple((2 * p - 1).tolist()), r.labels,
                              meta={"category": r.category, "policy": r.policy}))
    return out


def fit_baselines(train: Sequence[LineLabels], test: Sequence[LineLabels]) -> dict[str, list[LineScores]]:
    """Every :data:`BASELINES` entry fitted on ``train`` and scored on ``test``."""
    return {name: baseline_scores(fit_baseline(train, feats), feats, test) for name, feats in BASELINES.items()}


def compare(prm_scores: Sequence[LineScores], baselines: Mapping[str, Sequence[LineScores]], threshold: float = 0.0,
            n_boot: int = 1000, seed: int = 0) -> dict[str, float | str]:
    """The PRM's :func:`~prmlab.prm.metrics.within_across` metrics beside every baseline's, and the margin over the best.

    Keys: the PRM's own (``within_auc``, ``within_auc_lo``, ..., ``n_both``); ``<baseline>:<metric>`` (with
    ``_lo``/``_hi``) for each baseline; per metric, ``best_baseline:<metric>`` (the name of the baseline with the
    highest value) and ``margin:<metric>`` = PRM - best with a paired interval (``_lo``/``_hi``: the same resampled
    responses for both, one bootstrap seed). The PRM beats the baselines on a metric when ``margin:<metric>_lo > 0``.
    Responses must be in the same order in ``prm_scores`` and every baseline's scores.
    """
    ids = [r.response_id for r in prm_scores]
    for name, recs in baselines.items():
        if [r.response_id for r in recs] != ids:
            raise ValueError(f"baseline {name!r} scores other responses (or another order) than the PRM")
    out: dict[str, float | str] = dict(within_across(prm_scores, threshold, n_boot, seed))
    tables = {name: response_table(recs, threshold) for name, recs in baselines.items()}
    for name, recs in baselines.items():
        for k, v in within_across(recs, threshold, n_boot, seed).items():
            if not k.startswith("n_"):
                out[f"{name}:{k}"] = v
    t_prm, n = response_table(prm_scores, threshold), len(ids)
    for metric, fn in RESPONSE_METRICS.items():
        vals = {name: out[f"{name}:{metric}"] for name in baselines}
        finite = {k: v for k, v in vals.items() if not np.isnan(v)}
        if not finite:
            continue
        best = max(finite, key=finite.get)
        out[f"best_baseline:{metric}"] = best
        out[f"margin:{metric}"] = float(out[metric]) - finite[best]
        lo, hi = bootstrap_interval(lambda i: fn(t_prm, i) - fn(tables[best], i), n, n_boot, seed=seed)
        out[f"margin:{metric}_lo"], out[f"margin:{metric}_hi"] = lo, hi
    return out


def quality(prm_scores: Sequence[LineScores], train: Sequence[LineLabels], test: Sequence[LineLabels],
            threshold: float = 0.0, n_boot: int = 1000, seed: int = 0) -> dict[str, float | str]:
    """:func:`compare` of the PRM's scores on ``test`` with every baseline fitted on ``train``; the PRM's
    :func:`~prmlab.prm.metrics.within_across` alone when the training lines hold one class (no baseline fits)."""
    try:
        baselines = fit_baselines(train, test)
    except ValueError:
        return dict(within_across(prm_scores, threshold, n_boot, seed))
    return compare(prm_scores, baselines, threshold, n_boot, seed)
