"""The run report's RL and evaluation sections, from files shaped like the stages write them."""

from __future__ import annotations

import dataclasses
import json

from prmlab.config import EvalConfig
from prmlab.evaluation.stage import EvalResult
from prmlab.records import LineLabels, write_jsonl
from prmlab.report import write_report


def test_report_has_rl_and_eval_sections(tmp_path):
    write_jsonl(tmp_path / "labels.jsonl", [LineLabels(prompt="p", completions=("a = 1", "return a"),
                                                       labels=(1.0, -1.0), task_id="t", response_id="t/0",
                                                       category="revised", last_recoverable=1)])
    (tmp_path / "rl" / "sparse").mkdir(parents=True)
    rows = [{"iteration": i, "pass_rate": 0.2 + 0.1 * i, "return_total": 0.1 * i, "kl_ref": 0.01 * i,
             "lines_per_response": 3.0} for i in (1, 2)]
    (tmp_path / "rl" / "sparse" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval").mkdir()
    for policy, p in (("base", 0.25), ("rl/sparse", 0.5)):
        r = EvalResult(policy, 4, 10, 0.2, p, (p - 0.1, p + 0.1), {"1": p}, {"2-3": 2 * p, "8-12": 0.0},
                       {"<=100": p}, {"<=100": 40}, config=dataclasses.asdict(EvalConfig()))
        name = policy.replace("/", "-")
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(dataclasses.asdict(r)))
    (tmp_path / "eval" / "sandbox.json").write_text("{}")
    (tmp_path / "eval" / "base.best_of_n.json").write_text('{"policy": "base", "summaries": {}}')
    text = write_report(tmp_path).read_text()
    assert "| sparse | 2 | 0.300 -> 0.400 | 0.020 | 3.00 -> 3.00 |" in text
    assert "| base | 25.0% [15.0%, 35.0%] | 50.0% | 0.0% |" in text
    assert text.index("| base |") < text.index("| rl/sparse |")
    for fig in ("rl_pass_rate", "rl_return", "eval_pass_at_1", "eval_pass_by_length"):
        assert (tmp_path / "figures" / f"{fig}.png").exists() and f"figures/{fig}.png" in text


def _drift(proxy: bool, policy: str) -> dict:
    m = {"accuracy": 0.9, "auc": 0.8, "accuracy_failing": 0.95, "accuracy_passing": 0.6, "n_responses": 8}
    return {"policy": policy, "proxy": proxy, "n_tasks": 2, "base": m,
            "drifted": {**m, "accuracy": 0.85, "n_responses": 8},
            "difference": {k: [-0.05 if k == "accuracy" else 0.0, -0.1, 0.01] for k in
                           ("accuracy", "auc", "accuracy_failing", "accuracy_passing")},
            "categories": {"base": {"correct": 2, "wrong": 6}, policy: {"correct": 4, "revised": 4}}}


def test_report_has_the_drift_section_and_flags_the_temperature_proxy(tmp_path):
    (tmp_path / "drift").mkdir()
    (tmp_path / "drift" / "result.json").write_text(json.dumps(_drift(False, "rl/sparse/rl-100")))
    text = write_report(tmp_path).read_text()
    assert "## The PRM under policy drift: rl/sparse/rl-100, an RL checkpoint, vs the base (2 held-out tasks" in text
    assert "| line sign accuracy | 0.900 | 0.850 | -0.050 [-0.100, +0.010] |" in text
    assert "| responses (passing) | 8 (25%) | 8 (50%) | |" in text and "PROXY" not in text
    (tmp_path / "drift" / "result.json").write_text(json.dumps(_drift(True, "base@T0.5")))
    assert "base@T0.5, the temperature PROXY (no RL checkpoint existed" in write_report(tmp_path).read_text()
