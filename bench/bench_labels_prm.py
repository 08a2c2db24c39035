"""Measure what docs/labelling.md and docs/metrics.md report, on the tiny preset, in one resumable run.

    .venv/bin/python bench/bench_labels_prm.py --run-dir runs/bench-labels-prm          # about 45-60 min, 2 cores

    .venv/bin/python bench/bench_labels_prm.py --run-dir runs/bench-prm16 --skip-mc --attempts bce
                                                     # the PRM table only (issue 16), about 50 min, 2 cores

Steps (each resumable: labelling continues where a killed run stopped; finished PRMs are not retrained; an existing
``labels_drift.jsonl`` is reused):
1. label ``--n-tasks`` toy training tasks x ``samples_per_task`` with binary search (preset defaults, K = 8);
2. Monte-Carlo labels of the first ``--mc-responses`` failing responses, and the same responses labelled by plain
   bisection (``probe_first=False``, `labels_plain.jsonl`): completions, checks and agreement per strategy
   (``--skip-mc``: none of this);
3. a drift set: the toy-coder at temperature ``--drift-temperature`` on ``--drift-tasks`` held-out eval tasks;
4. PRMs: ``full`` for each of ``--seeds``, the paper's data selections and the ``--attempts`` variants for the first
   seed; held-out test and drift metrics, within and across responses, beside the baselines that see what the PRM
   sees (:mod:`prmlab.prm.baselines`, fitted on each PRM's own training split).

Everything goes to ``<run-dir>/bench.json``; the markdown tables go to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prmlab.labels import stats as label_stats  # noqa: E402
from prmlab.config import preset  # noqa: E402
from prmlab.records import LineLabels, read_jsonl  # noqa: E402

SELECTIONS = ("revised-only", "remove-hard", "medium-only")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bench-labels-prm")
    p.add_argument("--n-tasks", type=int, default=300, help="toy training tasks to label (x samples_per_task)")
    p.add_argument("--mc-responses", type=int, default=150, help="failing responses compared with Monte-Carlo")
    p.add_argument("--drift-tasks", type=int, default=60)
    p.add_argument("--drift-temperature", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--skip-prm", action="store_true", help="labels and the Monte-Carlo comparison only")
    p.add_argument("--skip-drift", action="store_true", help="no drift set (no labelling of a shifted policy)")
    p.add_argument("--skip-selections", action="store_true", help="no data-selection PRMs")
    p.add_argument("--attempts", nargs="*", default=[], choices=sorted(ATTEMPTS),
                   help="PRM variants trained on the first seed (issue 16's attempts)")
    p.add_argument("--reuse-labels", action="store_true",
                   help="take <run-dir>/labels.jsonl as it is (no labelling, no Monte-Carlo comparison)")
    p.add_argument("--tables-from", default="", help="print the tables of an earlier run's bench.json and stop")
    p.add_argument("--skip-mc", action="store_true", help="binary-search labels only (no Monte-Carlo comparison)")
    return p.parse_args(argv)


def labelling_section(cfg, run_dir: Path, n_mc: int, model, tok) -> dict:
    """Binary search (with and without the first-line probe) vs Monte-Carlo on the same failing responses."""
    from prmlab.labels.stage import relabel_failing, run_labeling, run_mc_comparison

    if n_mc >= 0:
        run_labeling(cfg, run_dir, allow_execution=True, model=model, tokenizer=tok)
    if n_mc <= 0:
        binary = read_jsonl(run_dir / "labels.jsonl", LineLabels)
        return {"n_responses": len(binary), "categories": label_stats.category_shares(binary),
                "cost_all_failing": label_stats.cost_per_failing_response(binary)}
    run_mc_comparison(cfg, run_dir, allow_execution=True, max_responses=n_mc, model=model, tokenizer=tok)
    relabel_failing(cfg, run_dir, dataclasses.replace(cfg.labels, probe_first=False), "labels_plain.jsonl",
                    allow_execution=True, max_responses=n_mc, model=model, tokenizer=tok)
    binary, mc, plain = (read_jsonl(run_dir / name, LineLabels)
                         for name in ("labels.jsonl", "labels_mc.jsonl", "labels_plain.jsonl"))
    ids = {r.response_id for r in mc}
    probe = [r for r in binary if r.response_id in ids]
    return {
        "n_responses": len(binary), "categories": label_stats.category_shares(binary),
        "cost_all_failing": label_stats.cost_per_failing_response(binary),
        "compared": len(mc), "compared_plain": len(plain),
        "probe_vs_mc": label_stats.cost_comparison(probe, mc), "agreement_probe": label_stats.agreement(probe, mc),
        "plain_vs_mc": label_stats.cost_comparison(plain, mc), "agreement_plain": label_stats.agreement(plain, mc),
    }


ATTEMPTS: dict[str, dict] = {"neutral-out": {"neutral_in_loss": False}, "bce": {"loss": "bce"}}
"""PRM variants tried (``--attempts``, first seed only) when the default does not beat the fitted baseline."""
MODELS = ("prm", "position", "task_length", "response_length", "fitted")
METRICS = ("within_auc", "loc_exact", "loc_within1", "loc_exact_failing", "across_auc_min", "across_auc_last", "auc")


def held_out_quality(labels, prm_cfg, prm, batch_size: int, others=None) -> dict:
    """The PRM vs the baselines on its own test split (baselines fitted on its own training split, after data
    selection, as in ``train_prm``), and on ``others`` (the drift set) when given."""
    from prmlab.prm.baselines import quality
    from prmlab.prm.data import select_data, split_by_task

    _, test, train = split_by_task(labels, (prm_cfg.val_fraction, prm_cfg.test_fraction), seed=prm_cfg.seed)
    train = select_data(train, prm_cfg.data_selection, None, prm_cfg.hard_below, prm_cfg.easy_above)
    out = {"test": quality(prm.score_labels(test, batch_size), train, test, seed=prm_cfg.seed)}
    if others is not None:
        out["drift"] = quality(prm.score_labels(others, batch_size), train, others, seed=prm_cfg.seed)
    return out


def prm_section(cfg, run_dir: Path, args, model, tok) -> list[dict]:
    """One row per trained PRM: held-out test metrics and drift metrics, beside every baseline (issue 16)."""
    from prmlab.prm.model import load_prm
    from prmlab.prm.stage import label_drift_set, train_prm
    from prmlab.prm.metrics import evaluate

    labels = read_jsonl(run_dir / "labels.jsonl", LineLabels)
    drift_path = run_dir / "labels_drift.jsonl"
    if args.skip_drift:
        drift = None
    elif drift_path.exists():  # labelled by an earlier run: reused
        drift = read_jsonl(drift_path, LineLabels)
    else:
        drift = label_drift_set(cfg, run_dir, args.drift_tasks, args.drift_temperature, allow_execution=True,
                                model=model, tokenizer=tok)
    runs = [("full", s, "full", {}) for s in args.seeds]
    runs += [] if args.skip_selections else [(sel, args.seeds[0], sel, {}) for sel in SELECTIONS]
    runs += [(a, args.seeds[0], "full", ATTEMPTS[a]) for a in args.attempts]
    rows = []
    for name, seed, selection, change in runs:
        out = run_dir / "prms" / f"{name}-seed{seed}"
        prm_cfg = dataclasses.replace(cfg.prm, seed=seed, data_selection=selection, **change)
        if not (out / "result.json").exists():
            train_prm(labels, prm_cfg, cfg.model, out, model=model, tokenizer=tok)
        res = json.loads((out / "result.json").read_text())
        prm = load_prm(out, model=model, tokenizer=tok)
        q = held_out_quality(labels, prm_cfg, prm, cfg.prm.batch_size, drift)
        d = evaluate(prm.score_labels(drift, cfg.prm.batch_size)) if drift is not None else {}
        rows.append({"selection": name, "seed": seed, "n_train": res["n_train"], "best_epoch": res["best_epoch"],
                     "epochs_run": res["epochs_run"], "test": {**res["test_metrics"], **q["test"]},
                     "drift": {**d, **q.get("drift", {})}})
    return rows


def _cell(m: dict, model: str, metric: str) -> str:
    key = metric if model == "prm" else f"{model}:{metric}"
    if key not in m:
        return "-"
    return f"{m[key]:.3f} [{m[key + '_lo']:.2f}, {m[key + '_hi']:.2f}]"


def quality_table(rows: list[dict], where: str = "test") -> str:
    """Markdown: one line per (PRM, seed) and model, the metrics with their intervals; then PRM - best baseline."""
    head = "| PRM | seed | model | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for r in rows:
        m = r[where]
        if "within_auc" not in m:
            continue
        for model in MODELS:
            lines.append(f"| {r['selection']} | {r['seed']} | {model} | "
                         + " | ".join(_cell(m, model, k) for k in METRICS) + " |")
        margins = []
        for k in METRICS:
            if f"margin:{k}" in m:
                margins.append(f"{m[f'margin:{k}']:+.3f} [{m[f'margin:{k}_lo']:+.2f}, {m[f'margin:{k}_hi']:+.2f}] "
                               f"vs {m[f'best_baseline:{k}']}")
            else:
                margins.append("-")
        lines.append(f"| {r['selection']} | {r['seed']} | PRM - best | " + " | ".join(margins) + " |")
        lines.append(f"| {r['selection']} | {r['seed']} | counts | responses {m['n_responses']}, both kinds "
                     f"{m['n_both']}, failing {m['n_failing']}, passing {m['n_passed']} |" + " |" * (len(METRICS) - 1))
    return "\n".join(lines)


SEED_METRICS = ("within_auc", "loc_exact", "loc_within1", "loc_exact_failing", "across_auc_min", "auc")


def seeds_table(rows: list[dict], selection: str = "full", where: str = "test") -> str:
    """Markdown: per metric, the PRM, each baseline and PRM - best baseline (paired interval), one column per seed."""
    runs = [r for r in rows if r["selection"] == selection and "within_auc" in r[where]]
    head = "| metric | model | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean |"
    lines = [head, "|" + "---|" * (3 + len(runs))]
    for k in SEED_METRICS:
        for model in MODELS + ("PRM - best",):
            cells, vals = [], []
            for r in runs:
                m = r[where]
                if model == "PRM - best":
                    key, best = f"margin:{k}", f" ({m.get(f'best_baseline:{k}', '-')})"
                else:
                    key, best = (k if model == "prm" else f"{model}:{k}"), ""
                if key not in m:
                    cells.append("-")
                    continue
                vals.append(m[key])
                cells.append(f"{m[key]:+.3f} [{m[key + '_lo']:+.2f}, {m[key + '_hi']:+.2f}]{best}"
                             if model == "PRM - best" else f"{m[key]:.3f} [{m[key + '_lo']:.2f}, {m[key + '_hi']:.2f}]")
            mean = f"{sum(vals) / len(vals):+.3f}" if model == "PRM - best" else f"{sum(vals) / len(vals):.3f}"
            lines.append(f"| {k} | {model} | " + " | ".join(cells) + f" | {mean if vals else '-'} |")
    counts = " | ".join(f"{r[where]['n_responses']} / {r[where]['n_both']}" for r in runs)
    lines.append(f"| responses / with both kinds | | {counts} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tables_from:
        rows = json.loads(Path(args.tables_from).read_text())["prm"]
        for where in ("test", "drift"):
            print(f"\n{where}, full PRM over seeds:\n" + seeds_table(rows, "full", where))
            print(f"\n{where}, every PRM:\n" + quality_table(rows, where))
        return
    import torch

    from prmlab.models import load_base_model, load_tokenizer

    torch.set_num_threads(1)  # 2 shared cores

    cfg = preset("tiny").replace(tasks={"n_train": args.n_tasks})
    run_dir = Path(args.run_dir)
    tok, model = load_tokenizer(cfg.model), load_base_model(cfg.model)
    out = {"config": {"n_tasks": args.n_tasks, "mc_responses": args.mc_responses, "seeds": args.seeds,
                      "drift_tasks": args.drift_tasks, "drift_temperature": args.drift_temperature}}
    out["labelling"] = labelling_section(cfg, run_dir, -1 if args.reuse_labels else 0 if args.skip_mc else args.mc_responses, model, tok)
    (run_dir / "bench.json").write_text(json.dumps(out, indent=2) + "\n")
    if not args.skip_prm:
        out["prm"] = prm_section(cfg, run_dir, args, model, tok)
        (run_dir / "bench.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["labelling"], indent=2))
    for r in out.get("prm", []):
        t, d = r["test"], r["drift"]
        print(f"| {r['selection']} | {r['seed']} | {r['n_train']} | {r['best_epoch']} of {r['epochs_run']} | "
              f"{t['auc']:.3f} | {t['baseline_auc']:.3f} | {t['accuracy']:.3f} | {t['mse']:.3f} | "
              f"{d.get('auc', float('nan')):.3f} | {d.get('baseline_auc', float('nan')):.3f} | "
              f"{d.get('accuracy', float('nan')):.3f} |")
    if out.get("prm"):
        print("\nheld-out test split, full PRM over seeds:\n" + seeds_table(out["prm"]))
        print("\nheld-out test split, within and across responses:\n" + quality_table(out["prm"]))
        print("\ndrift set:\n" + quality_table(out["prm"], "drift"))

if __name__ == "__main__":
    main()
