"""Pure labelling logic against fake oracles: binary search, best-of-K, labels, categories, Monte-Carlo, progress."""

import itertools
import math
import random

import pytest

from prmlab.runs import derive_seed
from prmlab.labels.search import (BestOfK, BinarySearch, best_of_k, binary_search_last_recoverable, category_of,
                                  exhaustive_last_recoverable, first_negative, is_monotone,
                             labels_from_boundary, max_checks, monte_carlo_labels, progress_labels, step_positions)


class CountingOracle:
    """rec(m) = m <= boundary (monotone), counting calls and refusing m = 0 (it is assumed, never checked)."""

    def __init__(self, boundary):
        self.boundary = boundary
        self.calls = []

    def __call__(self, m):
        assert m >= 1, "prefix 0 is assumed recoverable and must not be checked"
        self.calls.append(m)
        return m <= self.boundary


@pytest.mark.parametrize("probe_first", [False, True])
@pytest.mark.parametrize("T", range(1, 40))
def test_binary_search_matches_exhaustive_on_every_monotone_oracle(T, probe_first):
    for boundary in range(0, T + 1):
        oracle = CountingOracle(boundary)
        m, n = binary_search_last_recoverable(oracle, T, probe_first)
        assert m == exhaustive_last_recoverable(CountingOracle(boundary), T) == boundary
        assert n == len(oracle.calls) == len(set(oracle.calls))
        assert n <= math.ceil(math.log2(T)) + 1
        assert n <= max_checks(T, probe_first)
        if probe_first and boundary == 0:
            assert n == 1 and oracle.calls == [1]  # a Wrong response costs one check


def test_check_bound_is_tight_and_hand_computed():
    # T = 7: candidates 0..7 (8 outcomes) -> exactly 3 checks; T = 8: 9 outcomes -> 4 = ceil(log2 8) + 1.
    assert [max_checks(T) for T in (1, 2, 3, 4, 7, 8, 12)] == [1, 2, 2, 3, 3, 4, 4]
    assert max(binary_search_last_recoverable(CountingOracle(b), 8)[1] for b in range(9)) == 4
    assert [max_checks(T, True) for T in (1, 2, 3, 4, 7, 8, 12)] == [1, 2, 3, 3, 4, 4, 5]
    assert max(binary_search_last_recoverable(CountingOracle(b), 8, True)[1] for b in range(9)) == 4


def test_binary_search_edge_cases():
    assert binary_search_last_recoverable(CountingOracle(0), 1) == (0, 1)  # T = 1, fails
    assert binary_search_last_recoverable(CountingOracle(1), 1) == (1, 1)  # T = 1, recoverable
    assert binary_search_last_recoverable(lambda m: True, 10)[0] == 10  # all pass
    assert binary_search_last_recoverable(lambda m: False, 10)[0] == 0  # all fail
    assert binary_search_last_recoverable(lambda m: pytest.fail("no checks for T = 0"), 0) == (0, 0)
    for probe in (False, True):
        assert binary_search_last_recoverable(CountingOracle(0), 1, probe) == (0, 1)
        assert binary_search_last_recoverable(CountingOracle(1), 1, probe) == (1, 1)
        assert binary_search_last_recoverable(lambda m: True, 10, probe)[0] == 10
        assert binary_search_last_recoverable(lambda m: False, 10, probe) == (0, 1 if probe else 3)


def test_binary_search_trace_records_where_it_looked():
    s = BinarySearch(6)  # lo = 0, hi = 7
    assert s.query() == 3
    s.update(True)  # lo = 3
    assert s.query() == 5
    s.update(False)  # hi = 5
    assert s.query() == 4
    s.update(False)  # hi = 4
    assert s.done and s.result == 3 and s.trace == [(3, True), (5, False), (4, False)]
    with pytest.raises(RuntimeError):
        s.update(True)


def test_binary_search_on_non_monotone_oracle_still_ends_on_a_checked_boundary():
    rng = random.Random(0)
    for _ in range(200):
        T = rng.randint(1, 15)
        table = {m: rng.random() < 0.5 for m in range(1, T + 1)}
        m, n = binary_search_last_recoverable(table.__getitem__, T, probe_first=T % 2 == 0)
        assert n <= max_checks(T, probe_first=T % 2 == 0)
        assert m == 0 or table[m]  # the answer is a prefix the oracle said is recoverable
        assert m == T or not table[m + 1]  # and the next one it said is not


def test_best_of_k_stops_at_first_pass_and_counts_what_it_generated():
    verdicts = iter([False, False, False, True, False, False, False, False])
    sampled = []
    r = best_of_k(lambda n: sampled.append(n) or ["c"] * n, lambda cs: [next(verdicts) for _ in cs], k=8, chunk=2)
    assert r.recoverable and r.completions == 4 and r.executions == 4 and sampled == [2, 2]


def test_best_of_k_without_early_stop_samples_all_k_at_once():
    sampled = []
    r = best_of_k(lambda n: sampled.append(n) or ["c"] * n, lambda cs: [True] * len(cs), k=8, chunk=2,
                  early_stop=False)
    assert r.recoverable and r.completions == 8 and sampled == [8]


def test_best_of_k_all_fail_uses_k_and_last_chunk_is_clipped():
    sampled = []
    r = best_of_k(lambda n: sampled.append(n) or ["c"] * n, lambda cs: [False] * len(cs), k=7, chunk=3)
    assert not r.recoverable and r.completions == 7 and sampled == [3, 3, 1]


def test_best_of_k_state_rejects_too_many_verdicts():
    s = BestOfK(4, 2)
    with pytest.raises(ValueError):
        s.update([False] * 3)


def test_labels_from_boundary_hand_computed():
    lines = ["x = a + 1", "# note", "y = x * 2", "", "return y"]
    neutral = [False, True, False, True, False]
    assert labels_from_boundary(lines, 1, True, neutral) == [1, 0, -1, 0, -1]
    assert labels_from_boundary(lines, 3, True, neutral) == [1, 0, 1, 0, -1]
    # comments not neutral: a comment takes the label of the line before it (its prefix is the same program)
    assert labels_from_boundary(lines, 1, False, neutral) == [1, 1, -1, -1, -1]
    assert labels_from_boundary(lines, 0, False, [True, False, False, True, False]) == [1, -1, -1, -1, -1]


def test_passing_response_is_all_positive_and_comments_zero():
    lines = ["# start", "x = 1", "return x"]
    neutral = [True, False, False]
    assert labels_from_boundary(lines, len(lines), True, neutral) == [0, 1, 1]
    assert labels_from_boundary(lines, len(lines), False, neutral) == [1, 1, 1]


def test_labels_from_boundary_validates():
    with pytest.raises(ValueError):
        labels_from_boundary(["a"], 2, True, [False])
    with pytest.raises(ValueError):
        labels_from_boundary(["a", "b"], 1, True, [False])


def test_step_positions_and_categories():
    assert step_positions([True, False, True, True, False]) == [2, 5]
    assert category_of(True, 0) == "correct"
    assert category_of(False, 2) == "revised"
    assert category_of(False, 0) == "wrong"


def test_first_negative_and_monotone():
    assert first_negative([1, 0, 1, -1, -1]) == 3
    assert first_negative([1, 0, 1]) is None
    assert is_monotone([1, 0, -1, 0, -1]) and not is_monotone([1, -1, 0, 1])


def test_monte_carlo_labels_hand_computed():
    neutral = [False, True, False, False]
    hard, soft = monte_carlo_labels([4, None, 1, 0], 8, neutral, neutral_comments=True, soft0=0.75)
    assert hard == [1, 0, 1, -1]
    assert soft == [0.5, 0.5, 0.125, 0.0]
    hard2, _ = monte_carlo_labels([4, None, 1, 0], 8, neutral, neutral_comments=False)
    assert hard2 == [1, 1, 1, -1]
    with pytest.raises(ValueError):
        monte_carlo_labels([9], 8, [False])


def test_progress_labels_sum_to_total_change_and_padding_earns_zero():
    soft = [0.5, 0.5, 0.125, 0.0]
    p = progress_labels(soft, 0.75)
    assert p == [-0.25, 0.0, -0.375, -0.125]
    assert sum(p) == pytest.approx(soft[-1] - 0.75)


def test_hard_mc_labels_agree_with_binary_search_on_a_monotone_deterministic_oracle():
    # K completions at every prefix of a deterministic monotone oracle give the same first -1 as binary search.
    for T, boundary in itertools.product(range(1, 9), range(0, 9)):
        if boundary > T:
            continue
        counts = [8 if m <= boundary else 0 for m in range(1, T + 1)]
        hard, _ = monte_carlo_labels(counts, 8, [False] * T)
        m, _ = binary_search_last_recoverable(CountingOracle(boundary), T)
        assert first_negative(hard) == first_negative(labels_from_boundary(["x"] * T, m, True, [False] * T))


def test_derive_seed_is_stable_and_spreads():
    assert derive_seed(0, "toy-1/0") == derive_seed(0, "toy-1/0")
    assert derive_seed(0, "toy-1/0") != derive_seed(1, "toy-1/0") != derive_seed(0, "toy-1/1")
    assert 0 <= derive_seed("x") < 2**31


# ---------------------------------------------------------------------------------------------------------------
# label_stats: hand-computed statistics and a smoke test of every picture

def _rec(rid, labels, category, **kw):
    from prmlab.records import LineLabels

    return LineLabels(prompt="p", completions=tuple(f"x{i} = 1" for i in range(len(labels))), labels=tuple(labels),
                      task_id="t", response_id=rid, category=category, **kw)


def test_category_shares_and_first_negative_positions():
    from prmlab.labels.stats import categories_by_length, category_shares, first_negative_relative

    recs = [_rec("a", [1, 1], "correct"), _rec("b", [1, -1], "revised"), _rec("c", [-1, -1, -1, -1], "wrong"),
            _rec("d", [1, 0, 1, -1], "revised")]
    assert category_shares(recs) == {"correct": 0.25, "revised": 0.5, "wrong": 0.25}
    assert first_negative_relative(recs) == [1.0, 0.25, 1.0]
    assert categories_by_length(recs)[2] == {"correct": 0.5, "revised": 0.5, "wrong": 0.0}


def test_agreement_and_cost_comparison_hand_computed():
    from prmlab.labels.stats import agreement, cost_comparison

    binary = [_rec("a", [1, -1, -1], "revised", completions_generated=8), _rec("b", [1, 1, -1], "revised",
              completions_generated=4), _rec("c", [1, 1], "correct")]
    mc = [_rec("a", [1, -1, -1], "revised", completions_generated=24),
          _rec("b", [1, -1, 1], "revised", completions_generated=24), _rec("c", [1, 1], "correct")]
    a = agreement(binary, mc)
    assert a["n"] == 2 and a["first_neg_exact"] == 0.5 and a["mc_monotone"] == 0.5
    assert a["first_neg_exact_monotone"] == 1.0 and a["n_monotone"] == 1
    assert a["line_agreement"] == pytest.approx(4 / 6)
    c = cost_comparison(binary, mc)
    assert c["binary"]["completions_generated"] == 6 and c["mc_over_binary"]["completions_generated"] == 4


def test_every_picture_draws(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prmlab.labels import stats as ls

    recs = [_rec("a", [1, 0, -1], "revised", last_recoverable=1, meta={"trace": [[2, False], [1, True]]}),
            _rec("b", [1, 1], "correct"), _rec("c", [-1, -1], "wrong")]
    fig, axes = plt.subplots(1, 5, figsize=(20, 3))
    ls.plot_categories_by_length(recs, axes[0])
    ls.plot_first_negative(recs, axes[1])
    ls.plot_agreement(recs, recs, axes[2])
    ls.plot_cost(recs, recs, axes[3])
    ax = ls.plot_response_labels(recs[0], axes[4])
    assert "m* = 1" in ax.get_title()
    fig.savefig(tmp_path / "stats.png")
    plt.close(fig)


def test_probe_first_checks_line_one_then_bisects():
    s = BinarySearch(6, probe_first=True)  # lo = 0, hi = 7
    assert s.query() == 1
    s.update(True)  # lo = 1
    assert s.query() == 4
    s.update(False)  # hi = 4
    assert s.query() == 2
    s.update(True)  # lo = 2
    assert s.query() == 3
    s.update(True)
    assert s.done and s.result == 3 and s.n_checks == 4 == max_checks(6, True)
