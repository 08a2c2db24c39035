"""Pure PPO math on masked ``(B, L)`` token tensors (one row per response, one column per token).

Every function takes a ``mask`` (B, L) bool marking the response tokens (left padding, right padding or both);
padding never enters a mean, a variance or a recursion, and outputs are 0 there. Symbols:

    r_t     reward of token t (:func:`prmlab.rl.shaping.assemble_rewards`)
    V_t     the critic's value at token t;  G_t = A_t + V_t the return it is trained towards
    A_t     the advantage (GAE);  pi / pi_old the new / rollout-time policy;  rho_t = pi(a_t) / pi_old(a_t)

    token_logprobs     log pi(a_t | s_t) from logits
    masked_mean, masked_var, whiten
    gae                A_t and G_t with gamma and lambda
    policy_loss        PPO-clip;  value_loss  clipped value loss
    approx_kl, clip_fraction, explained_variance   the monitors
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prmlab.rl.shaping import kl_estimate


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(a_t | s_t): the log-probability of each chosen token.

        log pi(a_t) = logits_t[a_t] - logsumexp_v logits_t[v]

    ``logits`` (B, L, V) already aligned with ``tokens`` (B, L) (the logits that predicted each token). Returns
    (B, L) float32.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, L, V)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, L)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum_t mask_t x_t over all entries (``dim=None``) or along ``dim``; padding may hold anything (even nan)."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))  # (B, L)
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """mean over the masked entries: sum_t mask_t x_t / sum_t mask_t (all of them, or along ``dim``).

    Over all entries every token weighs the same (long responses weigh more). An empty mask gives nan.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)  # number of masked entries
    return masked_sum(x, mask, dim) / count


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance over the masked entries: mean_t (x_t - mean x)^2 (no Bessel correction); scalar."""
    mu = masked_mean(x, mask)  # ()
    return masked_mean((x - mu) ** 2, mask)  # ()


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Advantage whitening over the masked entries only.

        x'_t = (x_t - mu) / sqrt(sigma^2 + eps)       mu, sigma^2 = masked mean and population variance

    so the masked entries of x' have mean 0 and (population) std 1. Without ``shift_mean`` the mean is added
    back (only the scale changes). ``x``, ``mask`` (B, L) -> (B, L), 0 on padding.
    """
    mu, var = masked_mean(x, mask), masked_var(x, mask)  # () mu, () sigma^2
    out = (x - mu) * torch.rsqrt(var + eps)  # (B, L)
    if not shift_mean:
        out = out + mu
    return torch.where(mask.bool(), out, torch.zeros_like(out))


@dataclass(frozen=True)
class Advantages:
    """Output of :func:`gae`: both (B, L), 0 on padding."""

    advantages: Tensor  # (B, L) A_t
    returns: Tensor  # (B, L) G_t = A_t + V_t


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> Advantages:
    """Generalised advantage estimation over each row's response tokens.

        delta_t = r_t + gamma * V_{t'} - V_t            t' = the next response token of the row; V = 0 after the last
        A_t     = delta_t + gamma * lam * A_{t'}        A = 0 after the last
        G_t     = A_t + V_t

    The response ends the episode (V after the last token is 0, also for a response cut at the token budget).
    "Next" means the next masked column, so left padding, right padding and holes are all skipped, and values
    and rewards on padding are never read. ``rewards``, ``values``, ``mask`` (B, L).
    """
    mask = mask.bool()
    B, L = rewards.shape
    adv = torch.zeros_like(rewards)  # (B, L)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # (B,) V_{t'}
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # (B,) A_{t'}
    for t in reversed(range(L)):
        m = mask[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,) delta_t
        a = delta + gamma * lam * next_adv  # (B,) A_t
        adv[:, t] = torch.where(m, a, torch.zeros_like(a))
        next_value = torch.where(m, values[:, t].to(rewards.dtype), next_value)
        next_adv = torch.where(m, a, next_adv)
    returns = torch.where(mask, adv + values, torch.zeros_like(adv))  # (B, L) G_t
    return Advantages(adv, returns)


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2) -> Tensor:
    """PPO-clip policy loss (to minimise), averaged over the response tokens.

        rho_t = exp(log pi(a_t) - log pi_old(a_t))
        L     = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))       eps = ``clip``

    i.e. minus the clipped surrogate min(rho A, clip(rho) A). ``logp`` (B, L) under the current policy (with
    gradient), ``old_logp`` (B, L) from the rollout, ``advantages`` (B, L). Returns a scalar.
    """
    ratio = torch.exp(logp - old_logp)  # (B, L) rho_t
    unclipped = -advantages * ratio  # (B, L)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)  # (B, L)
    return masked_mean(torch.maximum(unclipped, clipped), mask)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2) -> Tensor:
    """Clipped value loss, averaged over the response tokens.

        V^clip_t = V_old,t + clip(V_t - V_old,t, -eps_v, eps_v)                  eps_v = ``clip``
        L^V      = 1/2 mean_t max((V_t - G_t)^2, (V^clip_t - G_t)^2)

    ``values`` (B, L) from the current critic (with gradient), ``old_values`` (B, L) from the rollout,
    ``returns`` (B, L) G_t. Returns a scalar.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (B, L) V^clip_t
    err = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)  # (B, L)
    return 0.5 * masked_mean(err, mask)


def approx_kl(logp: Tensor, old_logp: Tensor, mask: Tensor, estimator: str = "k3") -> Tensor:
    """Approximate KL(pi_old || pi) over the response tokens, the tokens having been sampled from pi_old.

        k1: mean_t (log pi_old - log pi)
        k3: mean_t ((rho_t - 1) - log rho_t),   rho_t = pi / pi_old

    (:func:`prmlab.rl.shaping.kl_estimate` with p = pi_old, q = pi.) ``logp``, ``old_logp`` (B, L). Scalar.
    """
    return masked_mean(kl_estimate(old_logp, logp, estimator), mask)


def clip_fraction(logp: Tensor, old_logp: Tensor, mask: Tensor, clip: float = 0.2) -> Tensor:
    """Share of response tokens whose ratio lies outside the clip range: mean_t 1[|rho_t - 1| > eps]. Scalar."""
    ratio = torch.exp(logp - old_logp)  # (B, L) rho_t
    return masked_mean(((ratio - 1.0).abs() > clip).float(), mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the returns' variance the critic explains, over the response tokens.

        EV = 1 - Var[G - V] / Var[G]        (population variances over the masked entries)

    1: perfect; 0: no better than predicting the mean return; < 0: worse. nan when Var[G] = 0. Scalar.
    """
    var_g = masked_var(returns, mask)  # () Var[G]
    ev = 1.0 - masked_var(returns - values, mask) / var_g  # () EV
    return torch.where(var_g > 0, ev, torch.full_like(ev, float("nan")))
