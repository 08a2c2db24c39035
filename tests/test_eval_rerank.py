"""prmlab.evaluation.rerank: best-of-N selection by the PRM against a random pick and the oracle, by hand."""

from __future__ import annotations

import math

import pytest

from prmlab.evaluation.rerank import (Candidate, RerankResult, rerank, rerank_task, response_score, select_best)

# Four tasks, worked out by hand (response scores as (min, last), neutral lines left out):
TASKS = [
    [  # min picks y2 (passes); last picks y1 (fails)
        Candidate((0.9, -0.5, 0.95), False),  # (-0.5, 0.95)
        Candidate((0.6, 0.7, 0.4), True),  # (0.4, 0.4)
        Candidate((0.2, 0.8), False),  # (0.2, 0.8)
    ],
    [  # nothing passes; the empty response scores -inf and is never picked over a scored one
        Candidate((0.5,), False),
        Candidate((), False),
    ],
    [  # neutral lines: y1's comment (0.0) would otherwise be its minimum, y4's trailing comment (0.95) its last
        Candidate((0.9, 0.0, 0.8), True, neutral=(False, True, False)),  # (0.8, 0.8)
        Candidate((0.75, 0.9), False),  # (0.75, 0.9)
        Candidate((0.3,), True),  # (0.3, 0.3)
        Candidate((0.7, 0.95), False, neutral=(False, True)),  # (0.7, 0.7)
    ],
    [  # a tie at the top between a passing and a failing candidate: expected value 1/2
        Candidate((0.5,), True),
        Candidate((0.5,), False),
        Candidate((0.2,), True),
    ],
]


def test_response_score():
    assert response_score([0.9, -0.5, 0.95]) == -0.5
    assert response_score([0.9, -0.5, 0.95], "last") == 0.95
    assert response_score([0.9, 0.0, 0.8], "min", neutral=[False, True, False]) == 0.8
    assert response_score([0.7, 0.95], "last", neutral=[False, True]) == 0.7
    assert response_score([], "min") == -math.inf
    assert response_score([0.4], "last", neutral=[True]) == -math.inf  # comments only
    with pytest.raises(ValueError):
        response_score([0.1], "mean")


def test_rerank_by_min_hand_computed():
    result = rerank(TASKS)
    assert isinstance(result, RerankResult) and result.how == "min"
    assert result.per_task_prm == (1.0, 0.0, 1.0, 0.5)
    assert result.per_task_random == pytest.approx((1 / 3, 0.0, 0.5, 2 / 3))
    assert result.per_task_oracle == (1.0, 0.0, 1.0, 1.0)
    assert result.prm == pytest.approx(2.5 / 4)
    assert result.random == pytest.approx(1.5 / 4)
    assert result.oracle == pytest.approx(3 / 4)
    assert result.selected == (1, 0, 0, 0)
    assert result.n_candidates == (3, 2, 4, 3) and result.n_tasks == 4


def test_rerank_by_last_hand_computed():
    result = rerank(TASKS, how="last")
    assert result.per_task_prm == (0.0, 0.0, 0.0, 0.5)
    assert result.prm == pytest.approx(0.5 / 4)
    assert result.random == pytest.approx(1.5 / 4) and result.oracle == pytest.approx(3 / 4)
    assert result.selected == (0, 0, 1, 0)


def test_constant_prm_equals_random_pick_exactly():
    flags = [True, False, False, True, False]
    cands = [Candidate((0.3, 0.3), p) for p in flags]
    prm, random, oracle = rerank_task(cands)
    assert prm == random == 2 / 5 and oracle == 1.0
    empty = [Candidate((), p) for p in flags]  # all empty: all tied at -inf
    assert rerank_task(empty, "last") == (2 / 5, 2 / 5, 1.0)


def test_select_best_and_oracle_bounds():
    assert select_best(TASKS[0]) == 1 and select_best(TASKS[0], "last") == 0
    for how in ("min", "last"):
        result = rerank(TASKS, how=how)
        assert all(p <= o for p, o in zip(result.per_task_prm, result.per_task_oracle))


def test_rerank_rejects_bad_input():
    with pytest.raises(ValueError):
        rerank([])
    with pytest.raises(ValueError):
        rerank([[Candidate((0.1,), True)], []])  # a task without candidates
    with pytest.raises(ValueError):
        Candidate((0.1, 0.2), True, neutral=(False,))
    with pytest.raises(ValueError):
        Candidate((float("nan"),), True)


def test_candidate_is_frozen_and_normalised():
    c = Candidate([0.1, 0.2], True, neutral=[0, 1])
    assert c.scores == (0.1, 0.2) and c.neutral == (False, True)
    with pytest.raises(AttributeError):
        c.passed = False
