"""Measure what docs/labelling.md and docs/metrics.md report, on the tiny preset, in one resumable run.

    .venv/bin/python bench/bench_labels_prm.py --run-dir runs/bench-labels-prm          # about 45-60 min, 2 cores

Steps (each resumable: labelling continues where a killed run stopped; finished PRMs are not retrained):
1. label ``--n-tasks`` toy training tasks x ``samples_per_task`` with binary search (preset defaults, K = 8);
2. Monte-Carlo labels of the first ``--mc-responses`` failing responses, and the same responses labelled by plain
   bisection (``probe_first=False``, `labels_plain.jsonl`): completions, checks and agreement per strategy;
3. a drift set: the toy-coder at temperature ``--drift-temperature`` on ``--drift-tasks`` held-out eval tasks;
4. PRMs: ``full`` for each of ``--seeds``, and the paper's data selections for the first seed; held-out test and
   drift metrics, next to the length-only baseline.

Everything goes to ``<run-dir>/bench.json`` and two markdown tables on stdout.
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
    return p.parse_args(argv)


def labelling_section(cfg, run_dir: Path, n_mc: int, model, tok) -> dict:
    """Binary search (with and without the first-line probe) vs Monte-Carlo on the same failing responses."""
    from prmlab.labels.stage import relabel_failing, run_labeling, run_mc_comparison

    run_labeling(cfg, run_dir, allow_execution=True, model=model, tokenizer=tok)
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


def prm_section(cfg, run_dir: Path, args, model, tok) -> list[dict]:
    """One row per trained PRM: held-out test metrics and drift metrics (with the length-only baseline)."""
    from prmlab.prm.model import load_prm
    from prmlab.prm.stage import label_drift_set, train_prm
    from prmlab.prm.metrics import evaluate

    labels = read_jsonl(run_dir / "labels.jsonl", LineLabels)
    drift = label_drift_set(cfg, run_dir, args.drift_tasks, args.drift_temperature, allow_execution=True,
                            model=model, tokenizer=tok)
    runs = [("full", s) for s in args.seeds] + [(sel, args.seeds[0]) for sel in SELECTIONS]
    rows = []
    for selection, seed in runs:
        out = run_dir / "prms" / f"{selection}-seed{seed}"
        if not (out / "result.json").exists():
            prm_cfg = dataclasses.replace(cfg.prm, seed=seed, data_selection=selection)
            train_prm(labels, prm_cfg, cfg.model, out, model=model, tokenizer=tok)
        res = json.loads((out / "result.json").read_text())
        prm = load_prm(out, model=model, tokenizer=tok)
        d = evaluate(prm.score_labels(drift, cfg.prm.batch_size))
        rows.append({"selection": selection, "seed": seed, "n_train": res["n_train"], "best_epoch": res["best_epoch"],
                     "epochs_run": res["epochs_run"], "test": res["test_metrics"], "drift": d})
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    from prmlab.models import load_base_model, load_tokenizer

    cfg = preset("tiny").replace(tasks={"n_train": args.n_tasks})
    run_dir = Path(args.run_dir)
    tok, model = load_tokenizer(cfg.model), load_base_model(cfg.model)
    out = {"config": {"n_tasks": args.n_tasks, "mc_responses": args.mc_responses, "seeds": args.seeds,
                      "drift_tasks": args.drift_tasks, "drift_temperature": args.drift_temperature}}
    out["labelling"] = labelling_section(cfg, run_dir, args.mc_responses, model, tok)
    (run_dir / "bench.json").write_text(json.dumps(out, indent=2) + "\n")
    if not args.skip_prm:
        out["prm"] = prm_section(cfg, run_dir, args, model, tok)
        (run_dir / "bench.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["labelling"], indent=2))
    for r in out.get("prm", []):
        t, d = r["test"], r["drift"]
        print(f"| {r['selection']} | {r['seed']} | {r['n_train']} | {r['best_epoch']} of {r['epochs_run']} | "
              f"{t['auc']:.3f} | {t['baseline_auc']:.3f} | {t['accuracy']:.3f} | {t['mse']:.3f} | {d['auc']:.3f} | "
              f"{d['baseline_auc']:.3f} | {d['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
