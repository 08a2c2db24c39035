"""The pipeline's summary: one Markdown table of what each stage measured, and its figures, in the run directory.

    runs/<name>/report.md                 labels (categories, cost) and PRM (AUC vs length-only, accuracy, MSE)
    runs/<name>/figures/*.png             categories by length, first -1 position, PRM training curves
    runs/<name>/figures/line_views.html   per-line PRM scores next to labels (plain HTML, no widget runtime)
"""

from __future__ import annotations

import json
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
    lines += ["", "Figures:", ""] + [f"![{m}]({m})" for m in made]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
