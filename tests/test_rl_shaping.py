"""prmlab.rl.shaping: outcome, dense line rewards (lambda, 1/T, neutral lines), KL estimators, per-token assembly.

Every expected number is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import math

import pytest
import torch

from prmlab.rl.shaping import (LineBatch, assemble_rewards, kl_estimate, last_columns, line_batch,
                               line_end_columns, line_lambda, line_rewards, outcome_reward)


def _t(rows, dtype=torch.float):
    return torch.tensor(rows, dtype=dtype)


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def _close(t, rows, atol=1e-6):
    torch.testing.assert_close(t.float(), torch.tensor(rows, dtype=torch.float), atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# outcome and lambda


def test_outcome_binary_and_partial_credit():
    passed = _mask([True, False, False])
    fraction = _t([1.0, 0.5, 0.0])
    assert outcome_reward(passed).tolist() == [1.0, 0.0, 0.0]  # 1 only when every test passes
    assert outcome_reward(passed, fraction).tolist() == [1.0, 0.0, 0.0]  # the fraction is ignored unless asked
    assert outcome_reward(passed, fraction, partial_credit=True).tolist() == [1.0, 0.5, 0.0]  # n_passed / n_tests
    with pytest.raises(ValueError, match="pass_fraction"):
        outcome_reward(passed, partial_credit=True)


def test_lambda_by_pass_or_fail():
    passed = _mask([True, False])
    assert line_lambda(passed).tolist() == pytest.approx([0.025, 0.25])  # the paper's defaults
    assert line_lambda(passed, lambda_pass=0.1, lambda_fail=0.7).tolist() == pytest.approx([0.1, 0.7])


# ----------------------------------------------------------------------------------------------------------------
# line rewards


def _rewards(scores, lines, passed, **switches):
    """line_rewards of one response given its scores and line texts."""
    lb = line_batch([list(range(len(scores)))], [scores], [lines])
    return line_rewards(lb.score, lb.mask, lb.neutral, _mask([passed]), **switches)[0]


def test_line_rewards_hand_values_fail_and_pass():
    scores, lines = [1.0, 1.0, -1.0, 1.0], ["a = 1", "b = 2", "c = a", "return c"]
    # failing: lambda = 0.25, T = 4 -> 0.25 / 4 = 0.0625 per unit of score
    assert _rewards(scores, lines, False).tolist() == pytest.approx([0.0625, 0.0625, -0.0625, 0.0625])
    # passing: lambda = 0.025 -> 0.025 / 4 = 0.00625
    assert _rewards(scores, lines, True).tolist() == pytest.approx([0.00625, 0.00625, -0.00625, 0.00625])
    # no 1/T: lambda * R = 0.25 * R
    assert _rewards(scores, lines, False, length_norm=False).tolist() == pytest.approx([0.25, 0.25, -0.25, 0.25])


def test_length_norm_total_unchanged_when_every_line_is_duplicated():
    scores, lines = [0.8, -0.4, 0.2], ["x = 1", "y = x", "return y"]
    dup_scores, dup_lines = [s for s in scores for _ in (0, 1)], [t for t in lines for _ in (0, 1)]
    once = _rewards(scores, lines, False).sum().item()  # 0.25 / 3 * (0.8 - 0.4 + 0.2) = 0.25 * 0.2 = 0.05
    twice = _rewards(dup_scores, dup_lines, False).sum().item()  # 0.25 / 6 * 1.2 = 0.05
    assert once == pytest.approx(0.05) and twice == pytest.approx(0.05)
    # without 1/T duplicating doubles it: 0.25 * 0.6 = 0.15 -> 0.25 * 1.2 = 0.3 (the padding hack)
    assert _rewards(scores, lines, False, length_norm=False).sum().item() == pytest.approx(0.15)
    assert _rewards(dup_scores, dup_lines, False, length_norm=False).sum().item() == pytest.approx(0.3)


def test_neutral_lines_switch():
    lines = ["x = 1", "# comment", "", "return x"]
    scores = [0.5, 0.9, 0.3, -0.1]  # a PRM that (wrongly) likes the comment
    # on: paid lines 0 and 3, T = 2 -> 0.25 / 2 = 0.125: [0.0625, 0, 0, -0.0125]
    assert _rewards(scores, lines, False).tolist() == pytest.approx([0.0625, 0.0, 0.0, -0.0125])
    # off: T = 4 -> 0.0625 each: [0.03125, 0.05625, 0.01875, -0.00625]
    assert _rewards(scores, lines, False, neutral_zero=False).tolist() == pytest.approx(
        [0.03125, 0.05625, 0.01875, -0.00625])


def test_neutral_lines_cannot_dilute_a_penalty():
    code, code_scores = ["x = 1", "return y"], [-1.0, -1.0]
    spam = ["# a", "# b", "# c", "# d"]
    base = _rewards(code_scores, code, False).sum().item()  # 0.25 / 2 * (-2) = -0.25
    spammed = _rewards(code_scores + [0.0] * 4, code + spam, False).sum().item()
    assert base == pytest.approx(-0.25) and spammed == pytest.approx(-0.25)
    # counting comments in T would halve the penalty: 0.25 / 6 * (-2) = -0.0833
    assert _rewards(code_scores + [0.0] * 4, code + spam, False, neutral_zero=False).sum().item() == \
        pytest.approx(-0.25 / 3)


def test_zero_lambdas_give_zero_line_rewards_and_comment_only_response_is_safe():
    assert _rewards([0.7, -0.3], ["a", "b"], False, lambda_pass=0.0, lambda_fail=0.0).tolist() == [0.0, 0.0]
    assert _rewards([0.5], ["# only a comment"], True).tolist() == [0.0]  # T = 0 clamps to 1, nothing paid


def test_line_batch_pads_and_flags_neutral_lines():
    lb = line_batch([[1, 4], [0, 2, 3]], [[0.5, -1.0], [0.1, 0.2, 0.3]], [["x = 1", "  # c"], ["", "y", "z"]])
    assert isinstance(lb, LineBatch)
    assert lb.end.tolist() == [[1, 4, 0], [0, 2, 3]]
    _close(lb.score, [[0.5, -1.0, 0.0], [0.1, 0.2, 0.3]])
    assert lb.neutral.tolist() == [[False, True, False], [True, False, False]]
    assert lb.mask.tolist() == [[True, True, False], [True, True, True]]
    with pytest.raises(ValueError, match="response 0"):
        line_batch([[1, 2]], [[0.5]], [["a", "b"]])
    empty = line_batch([[], []], [[], []], [[], []])
    assert empty.end.shape == (2, 0)


def test_line_end_columns():
    # tokens 0-3 are the prompt; with 2 left pad columns token 4 sits in column 2: 5 -> 3, 7 -> 5, 9 -> 7
    assert line_end_columns([5, 7, 9], response_start=4, first_column=2) == [3, 5, 7]
    assert line_end_columns([4, 4], response_start=4) == [0, 0]
    with pytest.raises(ValueError, match="before the response"):
        line_end_columns([3, 5], response_start=4)


# ----------------------------------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimators_hand_values():
    logp = _t([math.log(0.5), math.log(0.25), math.log(0.3)])
    ref = _t([math.log(0.25), math.log(0.5), math.log(0.3)])
    # k1 = log p - log q: log 2 = 0.693147, -log 2, 0
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.693147, -0.693147, 0.0], abs=1e-6)
    # k3 = (r - 1) - log r, r = q / p: r = 0.5 -> -0.5 + 0.693147 = 0.193147; r = 2 -> 1 - 0.693147 = 0.306853
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([0.193147, 0.306853, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logp, ref, "k2")


# ----------------------------------------------------------------------------------------------------------------
# assembly


@pytest.mark.parametrize("mask, last", [
    ([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], [3, 1]),  # right padding
    ([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]], [5, 5]),  # left padding
    ([[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]], [3, 4]),  # both (left-padded prompt, right-padded response)
])
def test_outcome_on_true_last_token(mask, last):
    m = _mask(mask)
    assert last_columns(m).tolist() == last
    r = assemble_rewards(m, outcome=_t([1.0, 0.5]), kl=torch.zeros(2, 6), beta=0.1)
    expected = torch.zeros(2, 6)
    expected[0, last[0]], expected[1, last[1]] = 1.0, 0.5
    assert torch.equal(r.outcome, expected)
    assert not r.outcome[~m].any()  # never on padding
    assert torch.equal(r.total, expected)


def test_row_without_tokens_is_an_error():
    with pytest.raises(ValueError, match="no response token"):
        assemble_rewards(_mask([[1, 1], [0, 0]]), _t([1.0, 1.0]), torch.zeros(2, 2), beta=0.0)


def test_line_rewards_land_on_line_ends_and_sum_to_line_total():
    mask = _mask([[1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]])  # right / left padded
    lb = line_batch([[1, 3, 5], [3, 5, 5, 7]], [[0.4, -0.8, 1.2], [0.2, 0.2, 0.4, -0.4]],
                    [["a", "b", "c"], ["a", "b", "c", "d"]])
    lr = line_rewards(lb.score, lb.mask, lb.neutral, _mask([False, True]))
    # row 0 fails: 0.25 / 3 * [0.4, -0.8, 1.2] = [1/30, -2/30, 3/30]
    # row 1 passes: 0.025 / 4 * [0.2, 0.2, 0.4, -0.4] = [0.00125, 0.00125, 0.0025, -0.0025]
    _close(lr[0, :3], [1 / 30, -2 / 30, 3 / 30])
    r = assemble_rewards(mask, _t([0.0, 1.0]), torch.zeros(2, 8), 0.05, lr, lb.end, lb.mask)
    assert r.prm[0].tolist() == pytest.approx([0, 1 / 30, 0, -2 / 30, 0, 3 / 30, 0, 0])
    # two lines ending on one token (column 5) add up: 0.00125 + 0.0025
    assert r.prm[1].tolist() == pytest.approx([0, 0, 0, 0.00125, 0, 0.00375, 0, -0.0025])
    assert r.prm.sum(dim=1).tolist() == pytest.approx([2 / 30, 0.0025])  # line totals: 0.25 * 0.8 / 3, 0.025 * 0.4 / 4
    assert torch.allclose(r.prm.sum(dim=1), lr.sum(dim=1))


def test_line_end_on_padding_is_an_error():
    mask = _mask([[1, 1, 1, 0]])
    lb = line_batch([[1, 3]], [[0.5, 0.5]], [["a", "b"]])
    lr = line_rewards(lb.score, lb.mask, lb.neutral, _mask([False]))
    with pytest.raises(ValueError, match="not a response token"):
        assemble_rewards(mask, _t([0.0]), torch.zeros(1, 4), 0.0, lr, lb.end, lb.mask)
    with pytest.raises(ValueError, match="not a response token"):
        assemble_rewards(mask, _t([0.0]), torch.zeros(1, 4), 0.0, lr, torch.tensor([[1, 4]]), lb.mask)


def test_parts_add_up_and_kl_only_on_response_tokens():
    mask = _mask([[1, 1, 1, 0], [0, 1, 1, 1]])
    kl = _t([[0.5, -0.2, 1.0, 9.0], [9.0, 0.3, 0.3, 0.4]])  # 9.0 on padding must not count
    r = assemble_rewards(mask, _t([1.0, 0.0]), kl, beta=0.1,
                         line_reward=_t([[0.1, 0.2], [0.3, 0.0]]), line_end=torch.tensor([[0, 2], [1, 0]]),
                         line_mask=_mask([[1, 1], [1, 0]]))
    _close(r.kl, [[-0.05, 0.02, -0.1, 0.0], [0.0, -0.03, -0.03, -0.04]])  # -0.1 * KL_t
    assert torch.allclose(r.total, r.outcome + r.prm + r.kl)
    sums = r.per_sequence()
    # row 0: outcome 1 + prm 0.3 + kl (-0.05 + 0.02 - 0.1 = -0.13) = 1.17;  row 1: 0 + 0.3 - 0.1 = 0.2
    assert sums["total"].tolist() == pytest.approx([1.17, 0.2])
    assert sums["outcome"].tolist() == [1.0, 0.0]
    assert sums["prm"].tolist() == pytest.approx([0.3, 0.3])
    assert sums["kl"].tolist() == pytest.approx([-0.13, -0.1])


def test_dense_with_zero_lambdas_equals_sparse_exactly():
    torch.manual_seed(0)
    mask = _mask([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    kl, outcome = torch.randn(2, 5), _t([1.0, 0.0])
    lb = line_batch([[1, 3], [0, 2, 4]], [[0.3, -0.9], [-1.0, 0.5, 0.8]], [["a", "b"], ["a", "b", "c"]])
    lr = line_rewards(lb.score, lb.mask, lb.neutral, _mask([True, False]), lambda_pass=0.0, lambda_fail=0.0)
    dense = assemble_rewards(mask, outcome, kl, 0.05, lr, lb.end, lb.mask)
    sparse = assemble_rewards(mask, outcome, kl, 0.05)
    assert torch.equal(dense.total, sparse.total)


# ----------------------------------------------------------------------------------------------------------------
# end to end with the PRM's exact token mapping


def test_line_ends_from_the_prm_token_mapping():
    """The rollout's own tokens (prompt, then what was sampled) through :func:`prmlab.lines.line_end_positions`."""
    from prmlab.lines import line_end_positions, line_spans, split_lines
    from prmlab.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    prompt, completion = "def g(x):\n", "    # double it\n    y = x * 2\n    return y\n"
    enc_p = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
    enc_c = tok(completion, add_special_tokens=False, return_offsets_mapping=True)  # stands in for sampled tokens
    offsets = [tuple(o) for o in enc_p["offset_mapping"]] + \
        [(s + len(prompt), e + len(prompt)) for s, e in enc_c["offset_mapping"]]
    positions = line_end_positions(offsets, line_spans(completion), text_start=len(prompt))
    response, lines, pad = list(enc_c["input_ids"]), split_lines(completion), 3  # the response starts in column 3
    cols = line_end_columns(positions, response_start=len(enc_p["input_ids"]), first_column=pad)
    mask = torch.zeros(1, pad + len(response) + 2, dtype=torch.bool)
    mask[0, pad:pad + len(response)] = True
    lb = line_batch([cols], [[0.9, 0.6, 0.3]], [lines])
    lr = line_rewards(lb.score, lb.mask, lb.neutral, _mask([False]))
    r = assemble_rewards(mask, _t([0.0]), torch.zeros(mask.shape), 0.0, lr, lb.end, lb.mask)
    # the comment is neutral; T = 2: 0.125 * 0.6 = 0.075 and 0.125 * 0.3 = 0.0375 at the ends of lines 2 and 3
    assert r.prm.sum().item() == pytest.approx(0.1125)
    assert r.prm[0, cols[1]].item() == pytest.approx(0.075) and r.prm[0, cols[2]].item() == pytest.approx(0.0375)
    done = 0
    for line, c in zip(lines, cols):  # the reward token is the first one at which the whole line is known
        done = completion.index(line, done) + len(line)
        assert len(tok.decode(response[:c - pad + 1])) >= done > len(tok.decode(response[:c - pad]))
