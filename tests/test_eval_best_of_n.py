"""prmlab.evaluation.best_of_n: the pure summary by hand, and the stage end to end on a tiny random model."""

from __future__ import annotations

import dataclasses
import json
import pytest

from prmlab.config import preset
from prmlab.evaluation.best_of_n import (DEFAULT_HOW, best_of_n_result, candidate, gain_share, load_best_of_n,
                                         result_from_dict, summarize_rerank)
from prmlab.evaluation.rerank import Candidate, rerank
from prmlab.records import LineScores

# Three tasks (reference lengths 2, 3 and 5 lines: buckets 2-3, 2-3, 4-7), three candidates each.
#   task a: min picks y1 (passes), last picks y2 (fails); c = 1 -> random 1/3, oracle 1
#   task b: nothing passes -> prm 0, random 0, oracle 0 under both
#   task c: min picks y2 (passes), last picks y2 too; c = 2 -> random 2/3, oracle 1
TASKS = [
    [Candidate((0.5, 0.4), True), Candidate((0.9, -0.2, 0.95), False), Candidate((0.1, 0.3), False)],
    [Candidate((0.2,), False), Candidate((0.4,), False), Candidate((), False)],
    [Candidate((0.1, 0.2), True), Candidate((0.6, 0.7), True), Candidate((0.5, 0.1), False)],
]
N_LINES = [2, 3, 5]


def test_gain_share():
    assert gain_share(0.5, 0.25, 0.75) == pytest.approx(0.5)
    assert gain_share(0.25, 0.25, 0.75) == 0.0
    assert gain_share(0.75, 0.25, 0.75) == 1.0
    assert gain_share(0.3, 0.5, 0.5) is None  # nothing to gain


def test_candidate_marks_comments_and_blank_lines_neutral():
    s = LineScores("t", "r", ("x = 1", "# why", "", "return x"), (0.5, -0.9, 0.0, 0.2))
    c = candidate(s, True)
    assert c.neutral == (False, True, True, False) and c.passed and c.scores == (0.5, -0.9, 0.0, 0.2)


def test_summarize_rerank_hand_computed():
    r = rerank(TASKS, "min")
    assert r.per_task_prm == (1.0, 0.0, 1.0) and r.per_task_random == pytest.approx((1 / 3, 0.0, 2 / 3))
    s = summarize_rerank(r, ["2-3", "2-3", "4-7"], ("2-3", "4-7", "8-12"), n_boot=200)
    assert s.prm == pytest.approx(2 / 3) and s.random == pytest.approx(1 / 3) and s.oracle == pytest.approx(2 / 3)
    assert s.diff == pytest.approx(1 / 3)  # d = (2/3, 0, 1/3)
    assert s.share == pytest.approx(1.0)  # the PRM reaches the oracle here
    # sign flips of d = (2/3, 0, 1/3): |sum| >= 1 in 4 of 8 patterns (the sign of the 0 never matters) -> p = 1/2
    assert s.p_value == pytest.approx(0.5)
    assert s.diff_ci[0] <= s.diff <= s.diff_ci[1] and s.prm_ci[0] <= s.prm <= s.prm_ci[1]
    assert list(s.by_lines) == ["2-3", "4-7"]  # buckets with tasks, in order
    short, mid = s.by_lines["2-3"], s.by_lines["4-7"]
    assert short.n_tasks == 2 and short.prm == pytest.approx(0.5) and short.random == pytest.approx(1 / 6)
    assert short.oracle == pytest.approx(0.5) and short.diff == pytest.approx(1 / 3)
    assert mid.n_tasks == 1 and mid.prm == 1.0 and mid.random == pytest.approx(2 / 3) and mid.oracle == 1.0
    assert mid.lo == mid.hi == pytest.approx(1 / 3)  # one task: the bootstrap cannot move
    with pytest.raises(ValueError):
        summarize_rerank(r, ["2-3"])


def test_best_of_n_result_reports_both_aggregations_and_round_trips():
    res = best_of_n_result("base", ["a", "b", "c"], N_LINES, TASKS, n=3, temperature=1.0, n_boot=200,
                           config={"n": 3})
    assert res.default == DEFAULT_HOW == "min" and set(res.summaries) == {"min", "last"}
    assert res.summaries["min"].prm == pytest.approx(2 / 3)
    assert res.summaries["last"].prm == pytest.approx(1 / 3)  # last picks the failing y2 of task a
    assert res.summaries["last"].share == pytest.approx(0.0)
    assert res.summaries["min"].selected == (0, 1, 1) and res.summaries["last"].selected == (1, 1, 1)
    assert res.per_task_oracle == (1.0, 0.0, 1.0)
    back = result_from_dict(json.loads(json.dumps(dataclasses.asdict(res))))
    assert back == res
    assert "best-of-3" in str(res) and "min (default)" in str(res)


@pytest.mark.slow
def test_run_best_of_n_end_to_end_on_a_tiny_model(tmp_path):
    from prmlab.errors import ExecutionNotAllowed, MissingArtifact
    from prmlab.evaluation.best_of_n import result_path, run_best_of_n
    from prmlab.prm.model import new_prm, save_prm
    import torch

    from prmlab.testing import tiny_test_model

    model, tok = tiny_test_model()
    cfg = preset("tiny").replace(tasks={"n_eval": 4, "max_lines": 5},
                                 evaluation={"max_new_tokens": 12, "n_boot": 100})
    with pytest.raises(MissingArtifact):
        run_best_of_n(cfg, tmp_path, "base", n=3, allow_execution=True, model=model, tokenizer=tok)
    prm = new_prm(cfg.model, model=model, tokenizer=tok)  # untrained: the head is 0, every score 0
    save_prm(prm, tmp_path / "prm")
    with pytest.raises(ExecutionNotAllowed):
        run_best_of_n(cfg, tmp_path, "base", n=3, model=prm.model, tokenizer=tok)
    r = run_best_of_n(cfg, tmp_path, "base", n=3, allow_execution=True, progress=False, model=prm.model,
                      tokenizer=tok)
    assert r.n_tasks == 4 and r.n == 3 and set(r.summaries) == {"min", "last"}
    samples = (tmp_path / "eval" / "base.best_of_n-3-t1.samples.jsonl").read_text().splitlines()
    scores = (tmp_path / "eval" / "base.best_of_n.scores.jsonl").read_text().splitlines()
    assert len(samples) == len(scores) == 12
    rows = [json.loads(line) for line in scores]
    for s in r.summaries.values():
        assert 0.0 <= s.random <= s.oracle <= 1.0 and 0.0 <= s.prm <= s.oracle
        assert sum(b.n_tasks for b in s.by_lines.values()) == 4
        if all(any(line.strip() and not line.lstrip().startswith("#") for line in row["lines"]) for row in rows):
            # an untrained PRM scores every line 0: all candidates tie, so its pick is exactly the random pick
            assert s.prm == pytest.approx(s.random) and s.diff == pytest.approx(0.0)
    path = result_path(tmp_path, "base")
    assert path.name == "base.best_of_n.json" and load_best_of_n(path) == r
    before = path.stat().st_mtime_ns
    assert run_best_of_n(cfg, tmp_path, "base", n=3, allow_execution=True, progress=False, model=prm.model,
                         tokenizer=tok) == r
    assert path.stat().st_mtime_ns == before  # read back, not recomputed
    with torch.no_grad():  # a retrained PRM (other weights) is rescored; the samples are reused
        prm.head.linear.bias.fill_(0.5)
    save_prm(prm, tmp_path / "prm")
    again = run_best_of_n(cfg, tmp_path, "base", n=3, allow_execution=True, progress=False, model=prm.model,
                          tokenizer=tok)
    assert again.config["prm"] != r.config["prm"] and path.stat().st_mtime_ns != before
    assert again.per_task_random == r.per_task_random  # the same samples and verdicts
    assert len((tmp_path / "eval" / "base.best_of_n-3-t1.samples.jsonl").read_text().splitlines()) == 12


def test_report_shows_a_best_of_n_result_next_to_random_and_oracle(tmp_path):
    from prmlab.report import best_of_n_table

    res = best_of_n_result("base", ["a", "b", "c"], N_LINES, TASKS, n=3, temperature=1.0, n_boot=200,
                           config={"n": 3})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "base.best_of_n.json").write_text(json.dumps(dataclasses.asdict(res)))
    rows = best_of_n_table(tmp_path)
    assert len(rows) == 2 + 2  # header, rule, one row per aggregation
    by_how = {r.split(" | ")[3]: r for r in rows[2:]}
    assert set(by_how) == {"min (default)", "last"}
    # PRM pick 2/3 by min and 1/3 by last (hand-computed in the test above); oracle 2/3 (tasks a and c)
    assert "| 66.7% [" in by_how["min (default)"] and "| 33.3% [" in by_how["last"]
    assert f"| {res.summaries['min'].random:.1%} | 66.7% |" in by_how["min (default)"]
    (tmp_path / "other" / "eval").mkdir(parents=True)
    assert best_of_n_table(tmp_path / "other") == []  # no best-of-N run: no section


def test_cli_best_of_n_parses_and_refuses_a_bad_n_in_one_sentence(tmp_path, capsys):
    from prmlab.cli import main

    assert main(["best-of-n", "--run-dir", str(tmp_path), "--n", "0", "--allow-execution"]) == 2
    err = capsys.readouterr().err
    assert "n >= 1" in err and "Traceback" not in err
