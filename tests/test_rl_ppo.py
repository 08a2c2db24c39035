"""prmlab.rl.ppo: GAE against a naive loop, whitening, clipped losses, KL, clip fraction, explained variance.

Every expected number is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import math

import pytest
import torch

from prmlab.rl.ppo import (Advantages, approx_kl, clip_fraction, explained_variance, gae, masked_mean,
                           masked_sum, masked_var, policy_loss, token_logprobs, value_loss, whiten)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float)


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def _naive_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """The textbook loop over one unpadded episode, V after the last token = 0."""
    adv, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


# ----------------------------------------------------------------------------------------------------------------
# masked helpers


def test_masked_helpers_ignore_padding_even_nan():
    x = _t([[1.0, 2.0, float("nan")], [3.0, float("inf"), 4.0]])
    m = _mask([[1, 1, 0], [1, 0, 1]])
    assert masked_sum(x, m).item() == 10.0  # 1 + 2 + 3 + 4
    assert masked_mean(x, m).item() == 2.5  # 10 / 4
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 3.5]  # per row
    assert masked_var(x, m).item() == pytest.approx(1.25)  # (2.25 + 0.25 + 0.25 + 2.25) / 4


def test_token_logprobs():
    logits = _t([[[0.0, math.log(3.0)], [math.log(4.0), 0.0]]])  # probabilities [1/4, 3/4] and [4/5, 1/5]
    lp = token_logprobs(logits, torch.tensor([[1, 1]]))
    assert lp[0].tolist() == pytest.approx([math.log(0.75), math.log(0.2)])


# ----------------------------------------------------------------------------------------------------------------
# GAE


def test_gae_hand_values():
    r, v, m = _t([[0.0, 0.0, 1.0]]), _t([[0.5, 0.6, 0.7]]), _mask([[1, 1, 1]])
    out = gae(r, v, m, gamma=1.0, lam=1.0)
    assert isinstance(out, Advantages)
    # gamma = lam = 1: A_t = sum of rewards from t - V_t = 1 - V_t; G_t = 1
    assert out.advantages[0].tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert out.returns[0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # gamma = lam = 0.5: A_2 = 1 - 0.7 = 0.3; delta_1 = 0.5 * 0.7 - 0.6 = -0.25, A_1 = -0.25 + 0.25 * 0.3 = -0.175;
    # delta_0 = 0.5 * 0.6 - 0.5 = -0.2, A_0 = -0.2 + 0.25 * (-0.175) = -0.24375
    out = gae(r, v, m, gamma=0.5, lam=0.5)
    assert out.advantages[0].tolist() == pytest.approx([-0.24375, -0.175, 0.3])
    assert out.returns[0].tolist() == pytest.approx([0.25625, 0.425, 1.0])  # A + V


def test_gae_equals_naive_loop_with_padding():
    g = torch.Generator().manual_seed(1)
    lengths, L = [7, 3, 5, 1], 9
    starts = [0, 6, 2, 4]  # right padded, left padded, both, one token in the middle
    rewards = torch.full((4, L), 123.0)  # padding holds garbage that must never be read
    values = torch.full((4, L), float("nan"))
    mask = torch.zeros(4, L, dtype=torch.bool)
    rows = []
    for b, (n, s) in enumerate(zip(lengths, starts)):
        rb, vb = torch.randn(n, generator=g), torch.randn(n, generator=g)
        rewards[b, s:s + n], values[b, s:s + n], mask[b, s:s + n] = rb, vb, True
        rows.append((rb.tolist(), vb.tolist(), s))
    out = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for b, (rb, vb, s) in enumerate(rows):
        expected = _naive_gae(rb, vb, 0.9, 0.8)
        assert out.advantages[b, s:s + len(rb)].tolist() == pytest.approx(expected, abs=1e-6)
        assert out.returns[b, s:s + len(rb)].tolist() == pytest.approx([a + v for a, v in zip(expected, vb)], abs=1e-6)
    assert not out.advantages[~mask].any() and not out.returns[~mask].any()  # 0 on padding, no nan leaks
    assert torch.isfinite(out.advantages).all()


def test_gae_skips_holes_in_the_mask():
    # a hole at column 1: column 0's next token is column 2. gamma = lam = 1: A_0 = r_0 + r_2 - V_0 = 1 + 2 - 0.5
    r, v = _t([[1.0, 50.0, 2.0]]), _t([[0.5, 9.0, 0.25]])
    out = gae(r, v, _mask([[1, 0, 1]]), gamma=1.0, lam=1.0)
    assert out.advantages[0].tolist() == pytest.approx([2.5, 0.0, 1.75])


# ----------------------------------------------------------------------------------------------------------------
# whitening


def test_whiten_over_masked_entries_only():
    x = _t([[1.0, 2.0, 100.0], [-50.0, 3.0, 4.0]])
    m = _mask([[1, 1, 0], [0, 1, 1]])
    w = whiten(x, m)
    sel = w[m]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert sel.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # masked values 1, 2, 3, 4: mean 2.5, population variance 1.25 -> (x - 2.5) / 1.118034
    assert w[m].tolist() == pytest.approx([-1.341641, -0.447214, 0.447214, 1.341641], abs=1e-5)
    assert w[~m].tolist() == [0.0, 0.0]
    kept = whiten(x, m, shift_mean=False)
    assert kept[m].mean().item() == pytest.approx(2.5, abs=1e-6)  # only the scale changes


# ----------------------------------------------------------------------------------------------------------------
# losses


RATIOS = [1.5, 0.5, 0.5, 1.5, 1.1]
ADVANTAGES = [1.0, 1.0, -1.0, -1.0, 2.0]


def test_policy_loss_hand_values():
    old = torch.zeros(1, 6)
    new = torch.log(_t([RATIOS + [7.0]]))  # last column is padding with a wild ratio
    adv = _t([ADVANTAGES + [5.0]])
    m = _mask([[1, 1, 1, 1, 1, 0]])
    # per token max(-A rho, -A clip(rho, 0.8, 1.2)):
    #   rho 1.5, A  1: max(-1.5, -1.2) = -1.2   (clipped: no gain beyond 1.2)
    #   rho 0.5, A  1: max(-0.5, -0.8) = -0.5
    #   rho 0.5, A -1: max( 0.5,  0.8) =  0.8   (clipped)
    #   rho 1.5, A -1: max( 1.5,  1.2) =  1.5
    #   rho 1.1, A  2: max(-2.2, -2.2) = -2.2
    # mean = (-1.2 - 0.5 + 0.8 + 1.5 - 2.2) / 5 = -1.6 / 5 = -0.32
    new.requires_grad_(True)
    loss = policy_loss(new, old, adv, m, clip=0.2)
    assert loss.item() == pytest.approx(-0.32, abs=1e-6)
    loss.backward()
    # clipped tokens (0 and 2) and padding get no gradient; d/dlogp (-A rho) / 5 = -A rho / 5 elsewhere
    assert new.grad[0].tolist() == pytest.approx([0.0, -0.1, 0.0, 0.3, -0.44, 0.0], abs=1e-6)


def test_value_loss_hand_values():
    old, new, ret = _t([[0.0, 0.0, 0.0, 9.0]]), _t([[0.5, 0.5, 0.1, 9.0]]), _t([[1.0, 0.0, 1.0, -9.0]])
    m = _mask([[1, 1, 1, 0]])
    # V_clip = old + clip(new - old, -0.2, 0.2) = [0.2, 0.2, 0.1]
    #   max((0.5 - 1)^2, (0.2 - 1)^2) = max(0.25, 0.64) = 0.64
    #   max((0.5 - 0)^2, (0.2 - 0)^2) = max(0.25, 0.04) = 0.25
    #   max((0.1 - 1)^2, (0.1 - 1)^2) = 0.81
    # 0.5 * (0.64 + 0.25 + 0.81) / 3 = 0.85 / 3 = 0.283333
    assert value_loss(new, old, ret, m, clip=0.2).item() == pytest.approx(0.85 / 3, abs=1e-6)
    # a wide clip leaves plain MSE: 0.5 * (0.25 + 0.25 + 0.81) / 3 = 0.218333
    assert value_loss(new, old, ret, m, clip=10.0).item() == pytest.approx(0.655 / 3, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# monitors


def test_approx_kl_hand_values():
    old = torch.log(_t([[0.5, 0.25, 0.9]]))
    new = torch.log(_t([[0.25, 0.5, 0.1]]))
    m = _mask([[1, 1, 0]])
    # k1 = log pi_old - log pi: log 2 and -log 2 -> mean 0
    assert approx_kl(new, old, m, "k1").item() == pytest.approx(0.0, abs=1e-6)
    # k3 with rho = pi / pi_old: rho 0.5 -> 0.193147, rho 2 -> 0.306853; mean 0.25
    assert approx_kl(new, old, m, "k3").item() == pytest.approx(0.25, abs=1e-6)
    assert approx_kl(old, old, m, "k3").item() == 0.0
    first = _mask([[1, 0, 0]])  # one token, pi_old 0.5 -> pi 0.25: direction matters
    assert approx_kl(new, old, first, "k1").item() == pytest.approx(0.693147, abs=1e-6)  # log 0.5 - log 0.25
    assert approx_kl(new, old, first, "k3").item() == pytest.approx(0.193147, abs=1e-6)  # rho 0.5 (not 2: 0.306853)


def test_clip_fraction():
    old = torch.zeros(1, 5)
    new = torch.log(_t([[1.5, 0.5, 1.1, 1.0, 5.0]]))
    m = _mask([[1, 1, 1, 1, 0]])
    # |rho - 1| > 0.2 for 1.5 and 0.5, not for 1.1 and 1.0; the padded 5.0 is not counted: 2 / 4
    assert clip_fraction(new, old, m, clip=0.2).item() == pytest.approx(0.5)
    assert clip_fraction(new, old, m, clip=0.6).item() == 0.0


def test_explained_variance_known_cases():
    G = _t([[1.0, 2.0, 3.0, 4.0, 100.0]])
    m = _mask([[1, 1, 1, 1, 0]])
    assert explained_variance(G, G, m).item() == pytest.approx(1.0)  # perfect critic
    # a constant critic: Var[G - c] = Var[G] -> 0
    assert explained_variance(torch.full_like(G, 7.0), G, m).item() == pytest.approx(0.0)
    # V = [4, 3, 2, 1]: G - V = [-3, -1, 1, 3], Var = 5; Var[G] = 1.25 -> 1 - 5 / 1.25 = -3
    V = _t([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert explained_variance(V, G, m).item() == pytest.approx(-3.0)
    assert math.isnan(explained_variance(V, torch.ones_like(G), m).item())  # Var[G] = 0
