"""The reproduction study: the paper's Table 1 analogue over seeds, with intervals, by length, and its Table 2 check.

    run_study(cfg, out_dir, seeds=(0, 1, 2)) -> StudyResult            what ``prmlab study`` calls

For every seed s, ``out_dir/seed-<s>/`` is an ordinary run directory of the preset with seed s: labels and the
PRM (Full data), then every RL configuration (:data:`CONFIGURATIONS`) and the held-out evaluation of the base
(SFT) model and each RL policy. With ``table2``, ``out_dir/seed-<s>-revised-only/`` trains the PRM on the same labels
with the paper's best data selection (Revised Only) and runs the "both" configuration with it (the paper's Table 2:
Full vs Revised Only as the PRM of dense reward + value init). Every stage is resumable and skips what is done, so
a killed study continues where it stopped.

Aggregation over S seeds and the T held-out tasks, from v_{s,t} = pass@1 of task t under seed s:

    pass@1       = (1/(S T)) sum_{s,t} v_{s,t}, interval from the two-way bootstrap of seeds and tasks
    vs sparse    d_t = (1/S) sum_s (v_{s,t} - v^{sparse}_{s,t}); mean, paired bootstrap interval, sign-flip p-value
    by length    the same pass@1 over the tasks of each line bucket (2-3, 4-7, 8-12 reference lines)

Outputs in ``out_dir``: ``table.md`` and ``table.csv`` (one row per configuration), ``study.json`` and figures
(pass@1 with intervals, pass@1 by length, RL training curves, best-of-K curves when evaluated).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prmlab.config import Config, preset
from prmlab.evaluation.passk import (best_of_k_curve, bootstrap_over_seeds_and_tasks, line_bucket_names,
                                     line_buckets, paired_comparison)
from prmlab.evaluation.stage import EvalResult, run_eval

CONFIGURATIONS: tuple[str, ...] = ("sparse", "value-init", "dense", "dense+value-init", "partial-credit")
"""RL configurations of the study: the paper's four (Table 1) and the reviewers' partial-credit baseline."""
BASELINE = "sparse"
"""The configuration every other one is compared with (the paper's RL baseline)."""


@dataclass(frozen=True)
class Row:
    """One configuration of the table: pass@1 over seeds and tasks, by length, and the paired difference to sparse."""

    configuration: str
    seeds: int
    pass_at_1: float
    lo: float
    hi: float
    by_lines: dict[str, float]
    diff_vs_sparse: float | None = None
    diff_lo: float | None = None
    diff_hi: float | None = None
    p_value: float | None = None


def seed_config(cfg: Config, seed: int) -> Config:
    """The study's config for one seed: the preset's with every stage seed set to ``seed`` except the tasks' (every
    seed trains on and is evaluated on the same tasks, so seeds and tasks are crossed), and the study's overrides
    (everything in ``cfg`` that differs from the preset) kept."""
    base = preset(cfg.name, seed=cfg.seed)
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            diff = {k: v for k, v in dataclasses.asdict(value).items() if getattr(getattr(base, f.name), k) != v}
            changes[f.name] = diff
    seeded = preset(cfg.name, seed=seed).replace(tasks=cfg.tasks)
    return seeded.replace(**{k: v for k, v in changes.items() if v and k != "tasks"})


def policy_name(configuration: str) -> str:
    return "base" if configuration == "base" else f"rl/{configuration}"


def run_seed(cfg: Config, run_dir: Path, configurations: Sequence[str], progress: bool = True) -> dict[str, EvalResult]:
    """Labels, PRM, every RL configuration and the evaluations of one seed's run directory (resumable)."""
    from prmlab.labels.stage import run_labeling
    from prmlab.models import load_base_model, load_tokenizer
    from prmlab.prm.stage import run_prm
    from prmlab.rl.stage import run_rl

    tokenizer, model = load_tokenizer(cfg.model), load_base_model(cfg.model)
    run_labeling(cfg, run_dir, allow_execution=True, progress=progress, model=model, tokenizer=tokenizer)
    if not (run_dir / "prm" / "result.json").exists():
        run_prm(cfg, run_dir, model=model, tokenizer=tokenizer, progress=progress)
    results = {"base": run_eval(cfg, run_dir, "base", allow_execution=True, progress=progress, model=model,
                                tokenizer=tokenizer)}
    for c in configurations:
        run_rl(cfg, run_dir, c, allow_execution=True, progress=progress, model=model, tokenizer=tokenizer)
        results[c] = run_eval(cfg, run_dir, policy_name(c), allow_execution=True, progress=progress, model=model,
                              tokenizer=tokenizer)
    return results


def run_table2(cfg: Config, full_dir: Path, run_dir: Path, progress: bool = True) -> EvalResult:
    """Revised Only as the PRM of the "both" configuration: the same labels, another PRM, one more RL run."""
    import shutil

    from prmlab.prm.stage import run_prm
    from prmlab.rl.stage import run_rl
    from prmlab.runs import init_run_dir

    cfg = cfg.replace(prm={"data_selection": "revised-only"})
    init_run_dir(run_dir, cfg, cfg.seed)
    if not (run_dir / "labels.jsonl").exists():
        shutil.copyfile(full_dir / "labels.jsonl", run_dir / "labels.jsonl")
    if not (run_dir / "prm" / "result.json").exists():
        run_prm(cfg, run_dir, progress=progress)
    run_rl(cfg, run_dir, "dense+value-init", allow_execution=True, progress=progress)
    return run_eval(cfg, run_dir, policy_name("dense+value-init"), allow_execution=True, progress=progress)


def task_matrix(results: Sequence[EvalResult], task_ids: Sequence[str]) -> np.ndarray:
    """v_{s,t}: pass@1 of task t under seed s (rows in the order of ``results``)."""
    return np.array([[r.per_task[t]["c"] / max(r.per_task[t]["n"], 1) for t in task_ids] for r in results])


def table_rows(by_config: dict[str, list[EvalResult]], n_boot: int = 2000, seed: int = 0) -> list[Row]:
    """One :class:`Row` per configuration (pure); the paired comparison needs the sparse configuration."""
    any_result = next(iter(by_config.values()))[0]
    task_ids = sorted(any_result.per_task)
    buckets = line_buckets([any_result.per_task[t]["n_lines"] for t in task_ids])
    base = by_config.get(BASELINE)
    rows = []
    for name, results in by_config.items():
        v = task_matrix(results, task_ids)  # (S, T)
        iv = bootstrap_over_seeds_and_tasks(v, n_boot=n_boot, seed=seed)
        by_lines = {b: float(v[:, [i for i, x in enumerate(buckets) if x == b]].mean())
                    for b in line_bucket_names() if b in buckets}
        row = Row(name, len(results), iv.mean, iv.lo, iv.hi, by_lines)
        if base is not None and name != BASELINE and len(base) == len(results):
            pc = paired_comparison(v.mean(axis=0), task_matrix(base, task_ids).mean(axis=0), n_boot=n_boot,
                                   seed=seed)
            row = dataclasses.replace(row, diff_vs_sparse=pc.diff, diff_lo=pc.lo, diff_hi=pc.hi, p_value=pc.p_value)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    """The Table 1 analogue as Markdown: pass@1 [95% interval], by length, difference to sparse [interval] (p)."""
    buckets = list(rows[0].by_lines) if rows else []
    head = ["configuration", "seeds", "pass@1 [95% CI]", *[f"{b} lines" for b in buckets], "vs sparse [95% CI], p"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        diff = ("" if r.diff_vs_sparse is None else
                f"{r.diff_vs_sparse:+.1%} [{r.diff_lo:+.1%}, {r.diff_hi:+.1%}], p={r.p_value:.2f}")
        cells = [r.configuration, str(r.seeds), f"{r.pass_at_1:.1%} [{r.lo:.1%}, {r.hi:.1%}]",
                 *[f"{r.by_lines.get(b, float('nan')):.1%}" for b in buckets], diff]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        buckets = list(rows[0].by_lines) if rows else []
        w.writerow(["configuration", "seeds", "pass_at_1", "lo", "hi", *[f"lines_{b}" for b in buckets],
                    "diff_vs_sparse", "diff_lo", "diff_hi", "p_value"])
        for r in rows:
            w.writerow([r.configuration, r.seeds, r.pass_at_1, r.lo, r.hi, *[r.by_lines.get(b) for b in buckets],
                        r.diff_vs_sparse, r.diff_lo, r.diff_hi, r.p_value])


@dataclass(frozen=True)
class StudyResult:
    out_dir: str
    rows: tuple[Row, ...]
    seeds: tuple[int, ...]

    def __str__(self) -> str:
        return f"study over seeds {list(self.seeds)} -> {self.out_dir}/table.md\n" + markdown_table(self.rows)


def run_study(cfg: Config, out_dir: str | Path, seeds: Sequence[int] = (0, 1, 2),
              configurations: Sequence[str] = CONFIGURATIONS, table2: bool = True,
              allow_execution: bool = False, progress: bool = True) -> StudyResult:
    """Every configuration over ``seeds`` (resumable), then the table and figures (see the module docstring)."""
    from prmlab.errors import ExecutionNotAllowed

    if not (allow_execution or cfg.sandbox.allow_execution):
        raise ExecutionNotAllowed("The study executes model-generated programs: pass --allow-execution (or "
                                  "allow_execution=True) after reading docs/safety.md.")
    out_dir = Path(out_dir)
    by_config: dict[str, list[EvalResult]] = {}
    for s in seeds:
        scfg = seed_config(cfg, s)
        for name, r in run_seed(scfg, out_dir / f"seed-{s}", configurations, progress).items():
            by_config.setdefault(name, []).append(r)
        if table2:
            r = run_table2(scfg, out_dir / f"seed-{s}", out_dir / f"seed-{s}-revised-only", progress)
            by_config.setdefault("dense+value-init (Revised-Only PRM)", []).append(r)
    rows = tuple(table_rows(by_config, cfg.evaluation.n_boot, cfg.evaluation.seed))
    write_outputs(out_dir, rows, by_config, seeds, configurations)
    return StudyResult(str(out_dir), rows, tuple(seeds))


def write_outputs(out_dir: Path, rows: Sequence[Row], by_config: dict[str, list[EvalResult]], seeds: Sequence[int],
                  configurations: Sequence[str]) -> None:
    """table.md, table.csv, study.json and the figures."""
    from prmlab import plots

    (out_dir / "table.md").write_text(markdown_table(rows), encoding="utf-8")
    write_csv(rows, out_dir / "table.csv")
    summary: dict[str, Any] = {"seeds": list(seeds), "rows": [dataclasses.asdict(r) for r in rows],
                               "best_of_k": {c: [study_curve(r) for r in rs] for c, rs in by_config.items()},
                               "best_of_k_from": {c: sorted({curve_source(r) for r in rs}) for c, rs in by_config.items()}}
    (out_dir / "study.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    curves = {c: [_metrics(out_dir / f"seed-{s}" / "rl" / c) for s in seeds] for c in configurations}
    sources = sorted({x for xs in summary["best_of_k_from"].values() for x in xs})
    plots.save_study_figures(out_dir / "figures", rows, curves, summary["best_of_k"], "; ".join(sources))


def study_curve(r: EvalResult) -> dict[str, float]:
    """A configuration's best-of-K curve for one seed: the evaluation's own best-of-K samples when it drew them
    (``EvalConfig.best_of_k``, up to K = 30 at ``bok_temperature``), else pass@k from its pass@1 samples (K up to
    ``n_samples``, 10 at T = 0.2 by default; :func:`best_of_k_curve`, the unbiased estimator averaged over tasks)."""
    if r.best_of_k:
        return r.best_of_k
    counts = list(r.per_task.values())
    return {str(k): v for k, v in best_of_k_curve([d["n"] for d in counts], [d["c"] for d in counts]).items()}


def curve_source(r: EvalResult) -> str:
    """Which samples :func:`study_curve` used, for the figure's reader."""
    if r.best_of_k:
        return f"best-of-K samples at T={r.config.get('bok_temperature', 1.0):g}"
    return f"the {r.n_samples} pass@1 samples per task at T={r.temperature:g}"


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
