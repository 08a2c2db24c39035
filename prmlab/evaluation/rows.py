"""Held-out rows for notebooks: a saved evaluation reused on its first tasks, and pass@1 rows with their intervals
over the same tasks (an evaluation written anywhere is :func:`prmlab.evaluation.stage.evaluate_into`).

    saved_eval(path, eval_cfg, n_tasks)   the pipeline's ``eval/<policy>.json`` when it can stand for this evaluation
    eval_row(name, result, n_tasks)       pass@1 with its bootstrap interval and by length over the first n tasks
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np



@dataclass(frozen=True)
class EvalRow:
    """Held-out pass@1 of one configuration over a set of tasks (what :func:`prmlab.plots.plot_pass_at_1` and
    :func:`prmlab.plots.plot_pass_by_length` draw)."""

    configuration: str
    pass_at_1: float
    lo: float
    hi: float
    by_lines: dict[str, float]
    n_by_lines: dict[str, int]
    n_tasks: int
    n_samples: int
    rates: tuple[float, ...]  # c_i / n_i per task, in task order (for paired comparisons)


def saved_eval(path: str | Path, eval_cfg, n_tasks: int = 0):
    """An :class:`EvalResult` already at ``path`` (e.g. the pipeline's ``eval/<policy>.json``) that can stand for
    an evaluation with ``eval_cfg`` on the first ``n_tasks`` tasks (0: all): the same config except ``n_tasks``,
    and at least that many tasks. None otherwise."""
    from prmlab.evaluation.stage import load_result

    path = Path(path)
    if not path.exists():
        return None
    done = load_result(path)
    mine = {k: v for k, v in dataclasses.asdict(eval_cfg).items() if k != "n_tasks"}
    theirs = {k: v for k, v in done.config.items() if k != "n_tasks"}
    enough = done.n_tasks >= n_tasks if n_tasks else done.config.get("n_tasks", 0) == 0
    return done if mine == theirs and enough else None


def eval_row(name: str, result, n_tasks: int = 0, n_boot: int = 2000, seed: int = 0) -> EvalRow:
    """pass@1 = mean_i c_i / n_i over the first ``n_tasks`` tasks of an :class:`EvalResult` (0: all), with the
    bootstrap interval over tasks and the line buckets of :mod:`prmlab.evaluation.passk`."""
    from prmlab.evaluation.passk import bootstrap_over_tasks, line_bucket_names, line_buckets, mean_by_bucket

    items = list(result.per_task.values())
    if n_tasks:
        if len(items) < n_tasks:
            raise ValueError(f"{result.policy} was evaluated on {len(items)} tasks, fewer than {n_tasks}")
        items = items[:n_tasks]
    rates = [d["c"] / max(d["n"], 1) for d in items]
    ci = bootstrap_over_tasks(rates, n_boot=n_boot, seed=seed)
    buckets = line_buckets([d["n_lines"] for d in items])
    names = line_bucket_names()
    return EvalRow(name, float(np.mean(rates)), ci.lo, ci.hi, mean_by_bucket(rates, buckets, names),
                   {b: buckets.count(b) for b in names}, len(items), int(max(d["n"] for d in items)), tuple(rates))
