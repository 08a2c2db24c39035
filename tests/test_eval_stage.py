"""The evaluation stage: hand-computed summaries, and a tiny end-to-end run (sample -> sandbox -> eval/*.json)."""

from __future__ import annotations

import json

import pytest

from prmlab.config import EvalConfig, preset
from prmlab.evaluation.stage import file_stem, load_result, summarize
from prmlab.records import Response, Task


def task(i: int, n_lines: int) -> Task:
    return Task(task_id=f"t{i}", prompt="def f(a):\n", entry_point="f", tests=("assert f(1) == 1",),
                reference="    return a\n", n_lines=n_lines)


def resp(t: Task, j: int, tokens: int) -> Response:
    return Response(task_id=t.task_id, response_id=f"{t.task_id}/base/0/{j}", prompt=t.prompt, completion="x",
                    program=t.prompt + "x", meta={"new_tokens": tokens})


def test_summarize_hand_computed():
    tasks = [task(0, 2), task(1, 5), task(2, 9)]
    # t0: 2 of 2 pass; t1: 1 of 2; t2: 0 of 2. Tokens: t0 short, t1 one long, t2 both long.
    rs = [resp(tasks[0], 0, 10), resp(tasks[0], 1, 20), resp(tasks[1], 0, 50), resp(tasks[1], 1, 150),
          resp(tasks[2], 0, 120), resp(tasks[2], 1, 130)]
    passed = [True, True, True, False, False, False]
    r = summarize("base", tasks, rs, passed, EvalConfig(n_boot=200))
    assert r.pass_at_1 == pytest.approx((1 + 0.5 + 0) / 3)
    assert r.by_lines == {"2-3": 1.0, "4-7": 0.5, "8-12": 0.0}
    assert r.by_tokens == {"<=100": 1.0, ">100": 0.0} and r.n_by_tokens == {"<=100": 3, ">100": 3}
    assert r.pass_at_k == {"1": pytest.approx(0.5)}  # k = 5, 10 need more samples per task
    assert r.per_task["t1"] == {"n": 2, "c": 1, "n_lines": 5}
    assert r.passed == {"t0/base/0/0": True, "t0/base/0/1": True, "t1/base/0/0": True, "t1/base/0/1": False,
                        "t2/base/0/0": False, "t2/base/0/1": False}
    assert 0.0 <= r.pass_at_1_ci[0] <= r.pass_at_1 <= r.pass_at_1_ci[1] <= 1.0
    assert "pass@1 50.0%" in str(r)


def test_file_stem():
    assert file_stem("base") == "base" and file_stem("rl/sparse/rl-25") == "rl-sparse-rl-25"


@pytest.mark.slow
def test_run_eval_end_to_end_and_reuse(tmp_path):
    from prmlab.evaluation.stage import run_eval
    from prmlab.errors import ExecutionNotAllowed
    from prmlab.testing import tiny_test_model

    model, tok = tiny_test_model()
    cfg = preset("tiny").replace(tasks={"n_eval": 3, "max_lines": 3},
                                 evaluation={"n_samples": 2, "max_new_tokens": 12, "best_of_k": 3, "n_boot": 100})
    with pytest.raises(ExecutionNotAllowed):
        run_eval(cfg, tmp_path, "base", model=model, tokenizer=tok)
    r = run_eval(cfg, tmp_path, "base", allow_execution=True, progress=False, model=model, tokenizer=tok)
    assert r.n_tasks == 3 and r.n_samples == 2 and set(r.best_of_k) == {"1", "2", "3"}
    samples = (tmp_path / "eval" / "base.samples.jsonl").read_text().splitlines()
    assert len(samples) == 6 and (tmp_path / "eval" / "sandbox.json").exists()
    assert load_result(tmp_path / "eval" / "base.json") == r
    before = (tmp_path / "eval" / "base.json").stat().st_mtime_ns
    assert run_eval(cfg, tmp_path, "base", allow_execution=True, progress=False, model=model, tokenizer=tok) == r
    assert (tmp_path / "eval" / "base.json").stat().st_mtime_ns == before  # read back, not recomputed
    assert json.loads((tmp_path / "eval" / "base.json").read_text())["policy"] == "base"
