"""Pure reward shaping: from test results, PRM line scores and log-probabilities to per-token PPO rewards.

For a prompt x and a response y of L_y generated tokens with T lines, line m ending at token e_m, the reward of
token t is (the paper's "Using the PRM in PPO"; the exact assembly is ours)

    r_t = - beta * KL_t                                               every response token
          + [t == e_m] * lambda(y) * (1/T) * R(x, y<=m)               the last token of each line m
          + [t == L_y - 1] * R_UT(x, y)                               the last generated token

    R_UT(x, y) = 1 if all tests pass else 0        (partial credit: n_passed / n_tests, an extra baseline)
    lambda(y)  = lambda_pass (0.025) if y passes, lambda_fail (0.25) if it fails

Safeguards, each a switch of :func:`line_rewards`:

* ``length_norm`` (1/T): without it every extra line earns its own PRM reward and the policy pads programs.
* ``neutral_zero``: comment and blank lines (:func:`prmlab.lines.is_neutral`) earn nothing, and T counts only the
  lines that are paid. Were T to count them too, a failing program (negative scores) could dilute its penalty by
  adding comments, the comment-spam hack by another door; so with the switch on, neutral lines change nothing.

Where the line ends are. All tensors here are ``(B, L)`` over *columns*: row b holds response b's tokens at the
columns where ``mask[b]`` is true (left padding, right padding or both). The line-end token of a line is found by
the same exact token mapping the PRM reads its scores at, :func:`prmlab.lines.line_end_positions`, applied to the
character offsets of the rollout's *own* tokens (prompt tokens, then the sampled ones); nothing here recomputes it.
Beware :func:`prmlab.lines.token_positions_for_lines`: it re-tokenises ``prompt + completion``, and byte-level BPE
merges the prompt's final ``"\\n"`` with the first line's indentation, so its tokens need not start with the
prompt's tokens nor match the sampled ones. :func:`line_end_columns` only shifts token indices into columns, and
:func:`line_batch` pads the ragged lines of a batch.

    passed, pass_fraction  -> outcome_reward                      (B,)
    PRM scores, line ends  -> line_batch -> line_rewards          (B, M)
    logp, ref_logp         -> kl_estimate                         (B, L)
    all of them            -> assemble_rewards -> TokenRewards    (B, L) total = outcome + prm + kl
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prmlab.lines import is_neutral

KL_ESTIMATORS = ("k1", "k3")
"""Per-token KL estimators: k1 = log p - log q (unbiased, signed); k3 = (r - 1) - log r, r = q / p (>= 0)."""


# ----------------------------------------------------------------------------------------------------------------
# outcome


def outcome_reward(passed: Tensor, pass_fraction: Tensor | None = None, partial_credit: bool = False) -> Tensor:
    """The outcome reward R_UT(x, y) of each response.

        R_UT = 1[all tests pass]                   (the paper's)
        R_UT = n_passed / n_tests                  with ``partial_credit`` (the reviewers' extra baseline)

    ``passed`` (B,) bool, ``pass_fraction`` (B,) float in [0, 1] (:attr:`ExecutionResult.pass_fraction`), needed
    only with ``partial_credit``. Returns (B,) float.
    """
    if not partial_credit:
        return passed.float()  # (B,)
    if pass_fraction is None:
        raise ValueError("partial_credit needs pass_fraction")
    return pass_fraction.float()  # (B,)


def line_lambda(passed: Tensor, lambda_pass: float = 0.025, lambda_fail: float = 0.25) -> Tensor:
    """lambda(y) = lambda_pass if y passes, lambda_fail if it fails; ``passed`` (B,) bool -> (B,) float."""
    return torch.where(passed.bool(), lambda_pass, lambda_fail).float()  # (B,)


# ----------------------------------------------------------------------------------------------------------------
# lines


@dataclass(frozen=True)
class LineBatch:
    """The lines of B responses, padded to M = the most lines of any response (padding: 0, False)."""

    end: Tensor  # (B, M) long   e_m: the column of line m's last token
    score: Tensor  # (B, M) float  R(x, y<=m): the PRM's score of the prefix ending with line m
    neutral: Tensor  # (B, M) bool   comment or blank line
    mask: Tensor  # (B, M) bool   a real line (not padding)


def line_end_columns(positions: Sequence[int], response_start: int, first_column: int = 0) -> list[int]:
    """Token indices of line ends -> columns of the ``(B, L)`` tensors, for one response.

        column_m = position_m - response_start + first_column

    ``positions`` index a token sequence in which the response's first token is at ``response_start`` (the
    prompt's length in tokens when they come from :func:`prmlab.lines.line_end_positions` over the offsets of
    the prompt's and the sampled tokens, see the module docstring); ``first_column`` is the column
    of that token in the row (0 with right padding, the number of pad columns with left padding). A line end
    before the response is an error: it would pay the reward to a prompt token.
    """
    if any(p < response_start for p in positions):
        raise ValueError(f"line end before the response: positions {list(positions)}, "
                         f"response starts at {response_start}")
    return [p - response_start + first_column for p in positions]  # e_m in columns


def line_batch(ends: Sequence[Sequence[int]], scores: Sequence[Sequence[float]],
               lines: Sequence[Sequence[str]], device: torch.device | str | None = None) -> LineBatch:
    """Pad the ragged lines of B responses into a :class:`LineBatch`.

    ``ends[b]`` are the columns of response b's line ends (:func:`line_end_columns`), ``scores[b]`` the PRM's
    scores of its lines (``LineScores.scores``), ``lines[b]`` their text (``LineScores.lines``), from which the
    neutral flags come (:func:`prmlab.lines.is_neutral`). The three must have the same length per response.
    """
    if not len(ends) == len(scores) == len(lines):
        raise ValueError(f"{len(ends)} ends, {len(scores)} scores and {len(lines)} line lists for one batch")
    n_lines = [len(e) for e in ends]
    for b, (e, s, t) in enumerate(zip(ends, scores, lines)):
        if not len(e) == len(s) == len(t):
            raise ValueError(f"response {b}: {len(e)} line ends, {len(s)} scores, {len(t)} lines")
    B, M = len(ends), max(n_lines, default=0)
    end = torch.zeros(B, M, dtype=torch.long)  # (B, M)
    score = torch.zeros(B, M)  # (B, M)
    neutral = torch.zeros(B, M, dtype=torch.bool)  # (B, M)
    for b, n in enumerate(n_lines):
        end[b, :n] = torch.tensor(list(ends[b]), dtype=torch.long)
        score[b, :n] = torch.tensor(list(scores[b]), dtype=torch.float)
        neutral[b, :n] = torch.tensor([is_neutral(t) for t in lines[b]], dtype=torch.bool)
    mask = torch.arange(M)[None, :] < torch.tensor(n_lines, dtype=torch.long)[:, None]  # (B, M)
    return LineBatch(end.to(device), score.to(device), neutral.to(device), mask.to(device))


def line_rewards(score: Tensor, mask: Tensor, neutral: Tensor, passed: Tensor, lambda_pass: float = 0.025,
                 lambda_fail: float = 0.25, length_norm: bool = True, neutral_zero: bool = True) -> Tensor:
    """The dense PRM reward of each line, paid later at its last token.

        paid_m = mask_m and not (neutral_zero and neutral_m)
        T      = sum_m paid_m                                      (at least 1)
        r_m    = paid_m * lambda(y) * (1/T) * R(x, y<=m)           1/T only with ``length_norm``

    ``score``, ``mask``, ``neutral`` (B, M) as in :class:`LineBatch`; ``passed`` (B,) bool. Returns (B, M) float,
    0 on padding and (with ``neutral_zero``) on comment and blank lines; each row sums to
    lambda(y) * mean_m R over its paid lines (with ``length_norm``).
    """
    paid = mask.bool() & ~(neutral.bool() & neutral_zero)  # (B, M) paid_m
    lam = line_lambda(passed, lambda_pass, lambda_fail).to(score.device)  # (B,) lambda(y)
    weight = lam[:, None] * paid  # (B, M) lambda(y) paid_m
    if length_norm:
        T = paid.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1) T
        weight = weight / T
    return torch.where(paid, weight * score, torch.zeros_like(score))  # (B, M) r_m


# ----------------------------------------------------------------------------------------------------------------
# KL penalty


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(p || q) from log p and log q of the sampled tokens (sampled from p).

        k1 = log p - log q                           unbiased, can be negative
        k3 = (r - 1) - log r,   r = q / p            unbiased, always >= 0, lower variance

    For the reward's penalty p = the policy, q = the reference; for PPO's approximate KL p = the old policy,
    q = the new one. ``logp``, ``ref_logp`` (B, L). Returns (B, L); mask it yourself.
    """
    if estimator == "k1":
        return logp - ref_logp  # (B, L) k1
    if estimator == "k3":
        log_r = ref_logp - logp  # (B, L) log r = log q - log p
        return torch.expm1(log_r) - log_r  # (B, L) k3 = (r - 1) - log r
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


# ----------------------------------------------------------------------------------------------------------------
# assembly


def last_columns(mask: Tensor) -> Tensor:
    """Column of the last true entry of each row of a (B, L) mask, e.g. the true last generated token: (B,) long.

    Works with left padding, right padding and both; a row with no true entry is an error.
    """
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a row has no response token: nowhere to put its outcome reward")
    L = mask.shape[1]
    return L - 1 - mask.flip(dims=[1]).int().argmax(dim=1)  # (B,)


@dataclass(frozen=True)
class TokenRewards:
    """Per-token rewards and their three parts; ``total = outcome + prm + kl`` (all (B, L), 0 on padding)."""

    total: Tensor  # (B, L) r_t
    outcome: Tensor  # (B, L) R_UT at the last generated token
    prm: Tensor  # (B, L) lambda(y) (1/T) R(x, y<=m) at line ends
    kl: Tensor  # (B, L) -beta KL_t (the penalty, signed as added)

    def per_sequence(self) -> dict[str, Tensor]:
        """Each part summed over the tokens of each response: ``{"total", "outcome", "prm", "kl"}`` -> (B,)."""
        return {name: getattr(self, name).sum(dim=1) for name in ("total", "outcome", "prm", "kl")}


def assemble_rewards(mask: Tensor, outcome: Tensor, kl: Tensor, beta: float,
                     line_reward: Tensor | None = None, line_end: Tensor | None = None,
                     line_mask: Tensor | None = None) -> TokenRewards:
    """Per-token rewards r_t (module docstring) from their parts, never on padding.

        outcome_t = [t == last true column of mask] * R_UT             (B, L)
        prm_t     = sum_m [t == e_m] * r_m                              (B, L) lines sharing a token add up
        kl_t      = -beta * KL_t * mask_t                               (B, L)

    ``mask`` (B, L) bool: the response tokens; ``outcome`` (B,) from :func:`outcome_reward`; ``kl`` (B, L) from
    :func:`kl_estimate`; ``line_reward`` (B, M) from :func:`line_rewards` with ``line_end`` (B, M) columns and
    ``line_mask`` (B, M) (:class:`LineBatch`); leave the three out for sparse rewards. A line end on a column
    that is not a response token is an error.
    """
    mask = mask.bool()
    B, L = mask.shape
    rows = torch.arange(B, device=mask.device)
    zeros = torch.zeros(B, L, dtype=kl.dtype, device=mask.device)
    outcome_t = zeros.clone()
    outcome_t[rows, last_columns(mask)] = outcome.to(mask.device, kl.dtype)  # (B, L) R_UT at t = L_y - 1
    kl_t = torch.where(mask, -beta * kl, zeros)  # (B, L) -beta KL_t
    prm_t = zeros.clone()
    if line_reward is not None:
        if line_end is None or line_mask is None:
            raise ValueError("line_reward needs line_end and line_mask")
        line_mask = line_mask.bool()
        end = torch.where(line_mask, line_end, torch.zeros_like(line_end))  # (B, M) e_m (0 on padding)
        if bool(((end < 0) | (end >= L)).any()) or bool((line_mask & ~mask.gather(1, end)).any()):
            raise ValueError("a line ends on a column that is not a response token")
        paid = torch.where(line_mask, line_reward, torch.zeros_like(line_reward)).to(kl.dtype)  # (B, M) r_m
        prm_t = prm_t.scatter_add(1, end, paid)  # (B, L) sum_m [t == e_m] r_m
    return TokenRewards(outcome_t + prm_t + kl_t, outcome_t, prm_t, kl_t)
