"""The per-line reward explorer's pure parts (policies, steps, joining verdicts, labels and scores, the view's HTML)
and its widget driven from code on a small synthetic run directory."""

from __future__ import annotations

import math

import pytest

from prmlab.explorer import (Explorer, RunData, Sample, checkpoint_order, configuration_of, configurations,
                             join_samples, outcome, sample_title, samples_by_task, steps, task_label, view_html,
                             with_labels, write_demo_run)
from prmlab.records import LineLabels, LineScores, Response


def resp(task: str, j: int, completion: str = "    a = 1\n    return a\n", policy: str = "base") -> Response:
    return Response(task, f"{task}/{policy}/0/{j}", "def f():\n", completion, "def f():\n" + completion, policy)


def labels_of(r: Response, labels=(1.0, -1.0), category="revised", last_recoverable=1) -> LineLabels:
    return LineLabels(r.prompt, ("    a = 1", "    return a"), labels, r.task_id, r.response_id, category,
                      last_recoverable=last_recoverable)


def test_checkpoint_order_and_configurations():
    assert sorted(["last", "rl-100", "rl-25", "rl-50"], key=checkpoint_order) == ["rl-25", "rl-50", "rl-100", "last"]
    assert configuration_of("rl/sparse/rl-25") == "rl/sparse" and configuration_of("base") == "base"
    assert configuration_of("rl/sparse") == "rl/sparse"


def test_steps_list_kept_checkpoints_in_order_then_last():
    assert steps("base", []) == [("base model (step 0)", "base")]
    got = steps("rl/sparse", ["rl-100", "rl-50"], {"rl-50": 2, "rl-100": 4, "last": 4})
    assert got == [("rl-50 (iteration 2)", "rl/sparse/rl-50"), ("rl-100 (iteration 4)", "rl/sparse/rl-100"),
                   ("last (iteration 4)", "rl/sparse")]
    assert steps("rl/dense", []) == [("last", "rl/dense")]


def test_outcome_prefers_the_evaluation_verdict_then_the_label_category():
    r = resp("t", 0)
    assert outcome(r.response_id, {r.response_id: True}, labels_of(r)) is True
    assert outcome(r.response_id, {}, labels_of(r, category="correct", labels=(1.0, 1.0))) is True
    assert outcome(r.response_id, {}, labels_of(r)) is False
    assert outcome(r.response_id, {}, None) is None


def test_join_samples_and_group_by_task():
    a0, a1, b0 = resp("a", 0), resp("a", 1), resp("b", 0)
    lab = labels_of(a1)
    got = join_samples([a0, a1, b0], "eval", {a0.response_id: True, b0.response_id: False}, {a1.response_id: lab})
    assert [(s.passed, s.labels) for s in got] == [(True, None), (False, lab), (False, None)]
    assert {t: [s.response.response_id for s in ss] for t, ss in samples_by_task(got).items()} == \
        {"a": [a0.response_id, a1.response_id], "b": [b0.response_id]}


def test_with_labels_attaches_only_labels_of_the_same_lines():
    r = resp("t", 0)
    scores = LineScores("t", r.response_id, ("    a = 1", "    return a"), (0.5, -0.25))
    assert with_labels(scores, labels_of(r)).labels == (1.0, -1.0)
    other = LineLabels(r.prompt, ("    b = 2",), (1.0,), "t", r.response_id, "correct")
    assert with_labels(scores, other).labels is None and with_labels(scores, None).labels is None


def test_titles_labels_and_view_html():
    r = resp("t", 0, completion="    x = '<b>'\n    return x\n")
    s = Sample(r, "labelling", False, labels_of(r))
    assert sample_title(s) == "labelled revised: unrecoverable from line 2"
    assert sample_title(Sample(r, "eval", True)) == "not labelled"
    assert task_label("t", [s, Sample(resp("t", 1), "eval", True)]) == "t (1/2 passed)"
    assert task_label("t", [Sample(r, "eval", None)]) == "t (1 not executed)"
    scores = LineScores("t", r.response_id, ("    x = '<b>'", "    return x"), (0.9, -0.9), (1.0, -1.0))
    page = view_html("rl/sparse", "t", [s], [scores])
    assert "&lt;b&gt;" in page and "<b>'" not in page  # code is escaped
    assert 'data-passed="false"' in page and "labelling · t/base/0/0" in page and "1 sample(s) of <b>rl/sparse</b>" in page
    assert "+0.90" in page and "-1.00" in page and "prmlab-lines" in page


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_run(tmp_path_factory.mktemp("run") / "demo", prm=False)


def test_run_data_finds_labelling_and_eval_samples(demo):
    data = RunData(demo)
    assert configurations(demo, data.policies_with_samples()) == ["base", "rl/demo"]
    base = data.samples("base")
    assert len(base) == 6 and all(len(s) == 3 for s in base.values())  # 3 train (labelled) + 3 eval tasks
    sources = {s.source for ss in base.values() for s in ss}
    assert sources == {"labelling", "eval"}
    labelled = [s for ss in base.values() for s in ss if s.source == "labelling"]
    assert all(s.labels is not None for s in labelled) and [s.passed for s in labelled[:3]] == [True, False, False]
    assert len(data.samples("rl/demo/rl-50")) == 3 and data.samples("rl/demo/rl-100") == {}


class CountingScorer:
    def __init__(self):
        self.calls = 0

    def __call__(self, programs, ids):
        from prmlab.lines import split_lines

        self.calls += 1
        return [LineScores(t, r, tuple(split_lines(c)), tuple(0.1 * i for i, _ in enumerate(split_lines(c))))
                for (_, c), (t, r) in zip(programs, ids)]


def test_explorer_widget_switches_views_and_caches_scores(demo):
    scorer = CountingScorer()
    ex = Explorer(demo, scorer=scorer)
    assert ex.widget.explorer is ex and ex.policy == "base" and scorer.calls == 1
    first, second = ex.task.options[0][1], ex.task.options[1][1]
    assert first in ex.view.value and "labelled correct" in ex.view.value
    ex.select(task=second)
    assert second in ex.view.value and scorer.calls == 2
    ex.select(task=first)
    assert first in ex.view.value and scorer.calls == 2 and "cached" in ex.status.value  # back: from the cache
    ex.select(configuration="rl/demo")
    assert [p for _, p in ex.step.options] == ["rl/demo/rl-50", "rl/demo/rl-100", "rl/demo"]
    assert [label for label, _ in ex.step.options][0] == "rl-50 (iteration 2)"
    assert ex.policy == "rl/demo" and "rl/demo/eval/" in ex.view.value
    ex.select(step="rl/demo/rl-100")
    assert ex.task.options == () and ex.view.value == "" and "prmlab eval --policy rl/demo/rl-100" in ex.status.value
    ex.select(step="rl/demo/rl-50")
    assert "rl/demo/rl-50/eval/" in ex.view.value


def test_explorer_without_a_prm_shows_labels_and_says_so(demo):
    ex = Explorer(demo)
    assert "no PRM" in ex.view.value and "+1.00" in ex.view.value


@pytest.mark.slow
def test_explorer_scores_with_the_runs_prm(tmp_path):
    import torch

    torch.set_num_threads(1)
    run = write_demo_run(tmp_path / "demo", n_tasks=2, n_samples=2)
    data = RunData(run)
    task = next(iter(data.samples("base")))
    scores = data.scores("base", task)
    assert len(scores) == 2 and all(len(s.scores) == len(s.lines) > 0 for s in scores)
    assert all(math.isfinite(x) for s in scores for x in s.scores) and scores[0].labels is not None
    assert data.scores("base", task) is scores and data.scored == 1
