"""PRM quality within and across responses, and the baselines that see what the PRM sees, by hand (issue 16)."""

import math

import numpy as np
import pytest

from prmlab.prm.baselines import (BASELINES, baseline_scores, compare, fit_baseline, fit_baselines, line_features,
                                  task_length)
from prmlab.prm.metrics import (bootstrap_interval, first_error, first_error_auc, localised, predicted_first_error,
                                response_score, within_across, within_response_terms)
from prmlab.records import LineLabels, LineScores

# ------------------------------------------------------------------------------------------ within one response


def test_within_response_terms_by_hand():
    # +1 lines 0.9, 0.2; -1 lines -0.1, 0.3 (the neutral 5.0 is dropped): 0.9>-0.1, 0.9>0.3, 0.2>-0.1, 0.2<0.3 -> 3 of 4
    assert within_response_terms([0.9, 0.2, 5.0, -0.1, 0.3], [1, 1, 0, -1, -1]) == (3.0, 4)
    assert within_response_terms([0.5, 0.5], [1, -1]) == (0.5, 1)  # a tie counts one half
    assert within_response_terms([1.0, 2.0], [1, 1]) == (0.0, 0)  # one kind of line: no pair
    assert within_response_terms([-1.0, 2.0], [-1, -1]) == (0.0, 0)


def test_first_error_and_predicted_first_error_skip_neutral_lines():
    labels = [1, 0, 1, -1, -1]
    assert first_error(labels) == 2  # non-neutral lines: +1 +1 -1 -1 -> index 2
    assert first_error([1, 1]) is None
    assert first_error([0, -1]) == 0
    scores = [0.5, -5.0, 0.2, -0.1, -0.4]  # the neutral -5.0 would be the first below 0 if it counted
    assert predicted_first_error(scores, labels) == 2
    assert predicted_first_error(scores, labels, threshold=0.3) == 1  # 0.2 < 0.3
    assert predicted_first_error([0.5, 0.4], [1, -1]) is None


def test_localised_exact_and_within_one_line():
    labels = [1, 0, 1, -1, -1]
    scores = [0.5, -5.0, 0.2, -0.1, -0.4]
    assert localised(scores, labels) is True
    assert localised(scores, labels, threshold=0.3) is False  # predicted 1, labelled 2
    assert localised(scores, labels, threshold=0.3, tolerance=1) is True
    assert localised([0.5, 0.4, 0.3], [1, -1, -1]) is False  # an error, but no line below the threshold
    assert localised([-0.5, 0.4], [1, 1]) is None  # no labelled error: not counted


def test_response_score_min_and_last_of_non_neutral_lines():
    assert response_score([0.5, -5.0, 0.2, -0.1], [1, 0, 1, -1], "min") == -0.1
    assert response_score([0.5, -5.0, 0.2, -0.1], [1, 0, 1, -1], "last") == -0.1
    assert response_score([0.5, -5.0, 0.2, 9.0], [1, 0, 1, 0], "last") == 0.2
    assert math.isnan(response_score([0.3], [0], "min"))
    with pytest.raises(ValueError):
        response_score([0.3], [1], "mean")


# -------------------------------------------------------------------------------------- metrics over responses


def _scored(rid, scores, labels, category):
    return LineScores("t-" + rid, rid, tuple(f"x{i}" for i in range(len(scores))), tuple(scores), tuple(labels),
                      meta={"category": category})


FOUR = [
    _scored("A", [0.9, -0.2, -0.1, 0.3], [1, 1, -1, -1], "revised"),  # U 2 of 4; predicted 1, labelled 2
    _scored("B", [0.8, -0.5], [1, -1], "revised"),  # U 1 of 1; predicted 1, labelled 1
    _scored("C", [0.4, 0.1], [1, 1], "correct"),
    _scored("D", [-0.2, -0.3], [-1, -1], "wrong"),  # predicted 0, labelled 0
]


def test_within_across_by_hand():
    m = within_across(FOUR, n_boot=200, seed=0)
    assert m["within_auc"] == pytest.approx((2 + 1) / (4 + 1))  # pairs pooled
    assert m["within_auc_mean"] == pytest.approx((0.5 + 1.0) / 2)  # mean of per-response AUCs
    assert m["loc_exact"] == pytest.approx(0.5)  # A misses by one line, B is exact
    assert m["loc_within1"] == pytest.approx(1.0)
    assert m["loc_exact_failing"] == pytest.approx(2 / 3)  # A, B, D
    # response min scores A -0.2, B -0.5, C 0.1, D -0.3: the passing C is above all three
    assert m["across_auc_min"] == pytest.approx(1.0)
    # last scores A 0.3, B -0.5, C 0.1, D -0.3: C beats B and D, not A
    assert m["across_auc_last"] == pytest.approx(2 / 3)
    # pooled lines, +1: 0.9 -0.2 0.8 0.4 0.1 vs -1: -0.1 0.3 -0.5 -0.2 -0.3 -> right pairs 5 + 2.5 + 5 + 5 + 4 of 25
    assert m["auc"] == pytest.approx(21.5 / 25)
    pooled = first_error_auc([s for r in FOUR for s in r.scores], [y for r in FOUR for y in r.labels])
    assert m["auc"] == pytest.approx(pooled)
    assert (m["n_responses"], m["n_both"], m["n_failing"], m["n_passed"]) == (4, 2, 3, 1)
    for k in ("within_auc", "loc_exact", "across_auc_last", "auc"):
        assert m[f"{k}_lo"] <= m[f"{k}_hi"]
    assert within_across(FOUR, n_boot=200, seed=0) == m  # seeded


def test_bootstrap_interval_by_hand():
    # a constant statistic has a zero-width interval
    assert bootstrap_interval(lambda i: 0.7, 5, n_boot=50) == (0.7, 0.7)
    # mean of (0, 1) over 2 resampled items: 0 or 1 each with probability 1/4 > 2.5 %, so the 95 % interval is [0, 1]
    v = np.array([0.0, 1.0])
    assert bootstrap_interval(lambda i: float(v[i].mean()), 2, n_boot=2000, seed=3) == (0.0, 1.0)
    # nan resamples are dropped; all nan -> nan
    lo, hi = bootstrap_interval(lambda i: float("nan"), 3, n_boot=10)
    assert math.isnan(lo) and math.isnan(hi)


# ------------------------------------------------------------------------------------------------- baselines


def test_task_length_counts_prompt_lines_reference_plus_two():
    prompt = 'def f(a):\n    """Let d be the smaller of a and 1.\n    Return a plus d.\n    """\n'
    assert task_length(prompt) == 4  # 2 reference lines + def + closing quotes
    from prmlab.tasks.toy import generate_tasks

    tasks = generate_tasks(12, "train", seed=0)
    assert [task_length(t.prompt) for t in tasks] == [t.n_lines + 2 for t in tasks]


def test_line_features_by_hand():
    x = line_features(4, 7)
    assert x.shape == (4, 4)
    assert x[:, 0].tolist() == [0.25, 0.5, 0.75, 1.0]  # m / T
    assert x[:, 1].tolist() == [1, 2, 3, 4]  # m
    assert x[:, 2].tolist() == [4, 4, 4, 4] and x[:, 3].tolist() == [7, 7, 7, 7]  # T, L


def _labelled(rid, n_prompt_lines, labels):
    category = "correct" if all(v >= 0 for v in labels) else ("wrong" if labels[0] < 0 else "revised")
    return LineLabels("\n".join(["p"] * n_prompt_lines) + "\n", tuple(f"y{i}" for i in range(len(labels))),
                      tuple(float(v) for v in labels), "t-" + rid, rid, category)


# training: short tasks (3 prompt lines) pass, long ones (6) fail from line 1, medium ones (4) fail halfway
TRAIN = ([_labelled(f"s{i}", 3, [1, 1, 1]) for i in range(4)] + [_labelled(f"l{i}", 6, [-1, -1, -1, -1]) for i in range(4)]
         + [_labelled(f"m{i}", 4, [1, 1, -1, -1]) for i in range(4)])
TEST = [_labelled("a", 3, [1, 1, 1]), _labelled("b", 6, [-1, -1, -1, -1]), _labelled("c", 4, [1, 1, -1, -1])]


def test_baselines_fitted_on_training_lines():
    scores = fit_baselines(TRAIN, TEST)
    assert set(scores) == set(BASELINES)
    for name, recs in scores.items():
        assert [r.response_id for r in recs] == ["a", "b", "c"]
        assert all(-1 <= s <= 1 for r in recs for s in r.scores)
    tl = scores["task_length"]
    assert len(set(tl[2].scores)) == 1  # constant within a response
    assert tl[0].scores[0] > 0 > tl[1].scores[0]  # the short task is predicted to pass, the long one to fail
    pos = scores["position"][2].scores
    assert pos[0] > pos[1] > pos[2] > pos[3]  # later lines are more likely past the first error
    m = within_across(scores["task_length"], n_boot=20)
    assert m["within_auc"] == 0.5  # constant within a response: every pair ties
    assert m["across_auc_min"] == 1.0  # but it tells the passing short task from the others
    assert within_across(scores["position"], n_boot=20)["within_auc"] == 1.0  # labels are monotone: +1 then -1


def test_fit_baseline_needs_both_classes_and_known_features():
    with pytest.raises(ValueError):
        fit_baseline(TRAIN[:4], ("position",))  # only +1 lines
    with pytest.raises(ValueError):
        fit_baseline(TRAIN, ("colour",))
    model = fit_baseline(TRAIN, ("position",))
    assert len(baseline_scores(model, ("position",), TEST)[1].scores) == 4


def test_compare_names_the_best_baseline_and_the_paired_margin():
    base = fit_baselines(TRAIN, TEST)
    # a PRM that ranks c's lines right but puts its first error one line late (first score < 0 at index 3, not 2)
    prm = [_scored("a", [0.9, 0.8, 0.7], [1, 1, 1], "correct"), _scored("b", [-0.9, -0.9, -0.9, -0.9], [-1] * 4, "wrong"),
           _scored("c", [0.9, 0.8, 0.5, -0.6], [1, 1, -1, -1], "revised")]
    out = compare(prm, base, n_boot=50, seed=1)
    # c: +1 lines 0.9, 0.8 vs -1 lines 0.5, -0.6: all four pairs right -> within AUC 1.0 (the same as position)
    assert out["within_auc"] == 1.0
    assert out["position:within_auc"] == 1.0 and out["task_length:within_auc"] == 0.5
    assert out["best_baseline:within_auc"] in ("position", "fitted")
    assert out["margin:within_auc"] == 0.0
    # localisation: the PRM predicts line 3 (index 3), labelled index 2 -> exact miss, within one hit
    assert out["loc_exact"] == 0.0 and out["loc_within1"] == 1.0
    assert out["margin:loc_exact"] == pytest.approx(0.0 - max(out[f"{b}:loc_exact"] for b in BASELINES))
    assert out["margin:loc_exact_lo"] <= out["margin:loc_exact"] <= out["margin:loc_exact_hi"]
    with pytest.raises(ValueError):
        compare(prm[::-1], base, n_boot=5)


def test_report_rows_show_within_localisation_and_the_best_baseline():
    from prmlab.report import report_rows

    base = fit_baselines(TRAIN, TEST)
    prm = [_scored("a", [0.9, 0.8, 0.7], [1, 1, 1], "correct"), _scored("b", [-0.9] * 4, [-1] * 4, "wrong"),
           _scored("c", [0.9, 0.8, 0.5, -0.6], [1, 1, -1, -1], "revised")]
    rows = dict(report_rows([], None, {"test_metrics": compare(prm, base, n_boot=20)}))
    assert rows["PRM within-response AUC (1 held-out responses with both kinds of line)"].startswith("1.000 [")
    assert rows["PRM first-error localisation, exact"].startswith("0.000 [")
    assert rows["best baseline, within-response AUC"].startswith(("position 1.000", "fitted 1.000"))
    assert "PRM - best +0.000" in rows["best baseline, within-response AUC"]
    assert "PRM within-response AUC" not in " ".join(dict(report_rows([], None, {"test_metrics": {"auc": 0.9}})))
