"""The pipeline's summary: one Markdown table of what each stage measured, and its figures, in the run directory.

    runs/<name>/report.md                 labels (categories, cost), PRM (within/across responses vs baselines),
                                          RL (training curves per variant), held-out pass@1 per policy by length,
                                          the PRM under drift (drift/result.json: an RL checkpoint vs the base)
    runs/<name>/figures/*.png             categories by length, first -1 position, PRM training, RL and pass@1
    runs/<name>/figures/line_views.html   per-line PRM scores next to labels (plain HTML, no widget runtime)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prmlab.records import LineLabels, read_jsonl


def _load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def report_rows(labels: list[LineLabels], cost: dict | None, prm: dict | None) -> list[tuple[str, str]]:
    """(quantity, value) rows of the summary table; stages that did not run are left out."""
    from prmlab.labels.stats import category_shares

    rows: list[tuple[str, str]] = []
    if labels:
        shares = category_shares(labels)
        rows.append(("labelled responses", str(len(labels))))
        rows += [(f"share {c}", f"{shares.get(c, 0.0):.1%}") for c in ("correct", "revised", "wrong")]
    if cost:
        per = cost.get("per_failing_response", {})
        rows += [("oracle checks per failing response", f"{per.get('oracle_calls', 0):.2f}"),
                 ("completions per failing response", f"{per.get('completions_generated', 0):.1f}"),
                 ("generation / execution s per failing response",
                  f"{per.get('gen_s', 0):.2f} / {per.get('exec_s', 0):.3f}")]
    if prm:
        t = prm.get("test_metrics") or prm.get("val_metrics") or {}
        rows += [("PRM first-error ROC AUC (held-out tasks)", f"{t.get('auc', float('nan')):.3f}"),
                 ("length-only baseline AUC", f"{t.get('baseline_auc', float('nan')):.3f}"),
                 ("PRM per-line sign accuracy", f"{t.get('accuracy', float('nan')):.3f}"),
                 ("PRM MSE", f"{t.get('mse', float('nan')):.3f}")]
        nan = float("nan")

        def with_ci(key: str) -> str:  # value [lo, hi] of a within/across metric (issue 16)
            return f"{t.get(key, nan):.3f} [{t.get(key + '_lo', nan):.2f}, {t.get(key + '_hi', nan):.2f}]"

        def best(metric: str) -> str:  # the best baseline that sees what the PRM sees, and the PRM's margin over it
            name = t.get(f"best_baseline:{metric}")
            if name is None:
                return "n/a"
            return (f"{name} {with_ci(f'{name}:{metric}')}; PRM - best {t.get(f'margin:{metric}', nan):+.3f} "
                    f"[{t.get(f'margin:{metric}_lo', nan):+.2f}, {t.get(f'margin:{metric}_hi', nan):+.2f}]")

        if "within_auc" in t:
            rows += [("best baseline, pooled first-error AUC", best("auc")),
                     (f"PRM within-response AUC ({t.get('n_both', 0)} held-out responses with both kinds of line)",
                     with_ci("within_auc")),
                     ("best baseline, within-response AUC", best("within_auc")),
                     ("PRM first-error localisation, exact", with_ci("loc_exact")),
                     ("best baseline, localisation exact", best("loc_exact")),
                     ("PRM first-error localisation, within one line", with_ci("loc_within1")),
                     ("best baseline, localisation within one line", best("loc_within1")),
                     ("PRM across-response AUC (min line score vs passing)", with_ci("across_auc_min")),
                     ("best baseline, across-response AUC", best("across_auc_min"))]
    return rows


def rl_runs(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Variant -> the metrics rows of each RL run in ``run_dir/rl/``."""
    out = {}
    for path in sorted((run_dir / "rl").glob("*/metrics.jsonl")):
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        if rows:
            out[path.parent.name] = rows
    return out


def rl_table(rl: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows: per variant, iterations and the training pass rate, KL and lines per response, first -> last."""
    out = ["| variant | iterations | training pass rate | KL to reference | lines per response |", "|---|---|---|---|---|"]
    for v, rows in rl.items():
        f, la = rows[0], rows[-1]
        out.append(f"| {v} | {la.get('iteration', len(rows))} | {f.get('pass_rate', 0):.3f} -> "
                   f"{la.get('pass_rate', 0):.3f} | {la.get('kl_ref', 0):.3f} | {f.get('lines_per_response', 0):.2f}"
                   f" -> {la.get('lines_per_response', 0):.2f} |")
    return out


@dataclass(frozen=True)
class EvalRow:
    """What the pass@1 figures read of an evaluation."""

    configuration: str
    pass_at_1: float
    lo: float
    hi: float
    by_lines: dict[str, float]


def eval_results(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluations in ``run_dir/eval/`` (base first)."""
    found = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((run_dir / "eval").glob("*.json"))
             if p.name != "sandbox.json" and not p.name.endswith(".best_of_n.json")]  # best-of-N: its own shape
    return sorted(found, key=lambda e: (e["policy"] != "base", e["policy"]))


def eval_table(evals: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: per policy, pass@1 [95% CI over tasks] and by line bucket."""
    buckets = list(evals[0]["by_lines"])
    out = ["| policy | pass@1 [95% CI] | " + " | ".join(f"{b} lines" for b in buckets) + " |",
           "|---|---|" + "---|" * len(buckets)]
    for e in evals:
        lo, hi = e["pass_at_1_ci"]
        out.append(f"| {e['policy']} | {e['pass_at_1']:.1%} [{lo:.1%}, {hi:.1%}] | "
                   + " | ".join(f"{e['by_lines'].get(b, float('nan')):.1%}" for b in buckets) + " |")
    return out


def best_of_n_table(run_dir: Path) -> list[str]:
    """Markdown rows: per ``eval/*.best_of_n.json``, the PRM's pick (each aggregation) against a random pick and
    the oracle (any of N passes), with the paired difference PRM - random."""
    out = []
    for path in sorted((run_dir / "eval").glob("*.best_of_n.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        for how, s in r["summaries"].items():
            if not out:
                out = ["| policy | N | T | score | PRM pick [95% CI] | random pick | oracle | PRM - random [95% CI], p |",
                       "|---|---|---|---|---|---|---|---|"]
            tag = f"{how} (default)" if how == r["default"] else how
            out.append(f"| {r['policy']} | {r['n']} | {r['temperature']:g} | {tag} | {s['prm']:.1%} "
                       f"[{s['prm_ci'][0]:.1%}, {s['prm_ci'][1]:.1%}] | {s['random']:.1%} | {s['oracle']:.1%} | "
                       f"{s['diff']:+.1%} [{s['diff_ci'][0]:+.1%}, {s['diff_ci'][1]:+.1%}], p={s['p_value']:.3f} |")
    return out


def drift_table(drift: dict[str, Any]) -> list[str]:
    """Markdown rows of ``drift/result.json`` (:func:`prmlab.prm.stage.measure_drift`): the PRM on base samples and
    on the drifted policy's samples of the same held-out tasks, and the paired difference with its interval."""
    names = {"accuracy": "line sign accuracy", "auc": "first-error AUC",
             "accuracy_failing": "accuracy, lines of failing responses",
             "accuracy_passing": "accuracy, lines of passing responses"}
    cats = drift.get("categories", {})
    shares = {p: c.get("correct", 0) / max(sum(c.values()), 1) for p, c in cats.items()}
    out = [f"| metric | base | {drift['policy']} | difference [95% CI over tasks] |", "|---|---|---|---|"]
    for key, name in names.items():
        if key in drift["difference"]:
            d, lo, hi = drift["difference"][key]
            out.append(f"| {name} | {drift['base'][key]:.3f} | {drift['drifted'][key]:.3f} | {d:+.3f} "
                       f"[{lo:+.3f}, {hi:+.3f}] |")
    out.append(f"| responses (passing) | {drift['base']['n_responses']:.0f} ({shares.get('base', 0):.0%}) | "
               f"{drift['drifted']['n_responses']:.0f} ({shares.get(drift['policy'], 0):.0%}) | |")
    return out


def drift_heading(drift: dict[str, Any]) -> str:
    what = ("the temperature PROXY (no RL checkpoint existed when it was measured)" if drift.get("proxy") else
            "an RL checkpoint")
    return (f"## The PRM under policy drift: {drift['policy']}, {what}, vs the base "
            f"({drift['n_tasks']} held-out tasks, labelled by the same binary search)")


def _save(axes_or_figure, path: Path, plt) -> str:
    fig = axes_or_figure if isinstance(axes_or_figure, plt.Figure) else axes_or_figure.figure
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return f"{path.parent.name}/{path.name}"


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and the figures for whatever stages have run in ``run_dir``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prmlab import plots
    from prmlab.labels import stats as label_stats

    run_dir = Path(run_dir)
    figures = run_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    labels_path = run_dir / "labels.jsonl"
    labels = read_jsonl(labels_path, LineLabels, repair_tail=True) if labels_path.exists() else []
    cost, prm = _load_json(run_dir / "labels_cost.json"), _load_json(run_dir / "prm" / "result.json")
    made = []
    if labels:
        for name, draw in (("categories_by_length", label_stats.plot_categories_by_length),
                           ("first_negative", label_stats.plot_first_negative)):
            made.append(_save(draw(labels), figures / f"{name}.png", plt))
    if prm and prm.get("history"):
        made.append(_save(plots.plot_training_curves(prm["history"]), figures / "prm_training.png", plt))
    lines = [f"# prmlab run: {run_dir.name}", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report_rows(labels, cost, prm)]
    rl, evals = rl_runs(run_dir), eval_results(run_dir)
    if rl:
        curves = {v: [rows] for v, rows in rl.items()}
        made.append(_save(plots.plot_rl_curves(curves, "pass_rate"), figures / "rl_pass_rate.png", plt))
        made.append(_save(plots.plot_rl_curves(curves, "return_total"), figures / "rl_return.png", plt))
        lines += ["", "## RL (training prompts, one seed)", "", *rl_table(rl)]
    if evals:
        rows = [EvalRow(e["policy"], e["pass_at_1"], *e["pass_at_1_ci"], e["by_lines"]) for e in evals]
        made.append(_save(plots.plot_pass_at_1(rows), figures / "eval_pass_at_1.png", plt))
        made.append(_save(plots.plot_pass_by_length(rows), figures / "eval_pass_by_length.png", plt))
        lines += ["", "## Held-out evaluation (one seed; intervals over tasks)", "", *eval_table(evals)]
    drift = _load_json(run_dir / "drift" / "result.json")
    if drift:
        lines += ["", drift_heading(drift), "", *drift_table(drift)]
    bon = best_of_n_table(run_dir) if (run_dir / "eval").is_dir() else []
    if bon:
        lines += ["", "## The PRM at test time: best-of-N reranking (held-out tasks)", "", *bon]
    lines += ["", "Figures:", ""] + [f"![{m}]({m})" for m in made]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
