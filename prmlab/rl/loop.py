"""One readable PPO iteration on LoRA adapters of one base model: rollout -> execute -> PRM -> shaping -> GAE -> PPO.

Roles on the one peft model (:mod:`prmlab.models`):

    pi        the ``policy`` adapter (starts as the identity, i.e. the base = the SFT model)   trained
    pi_ref    every adapter disabled (the base)                                                 KL reference
    V         the ``critic`` adapter + ``PPOState.value_head``                                  trained
    R         the ``prm`` adapter + ``PPOState.prm_head`` (only when the run has a PRM)         frozen

Batch layout. A rollout of B responses is packed into one ``(B, T)`` tensor: left padding, the prompt's tokens,
the generated tokens, right padding. Every prompt ends at column P, so response token t of any row sits at column
P + t, and the ``(B, R)`` response tensors (R = the longest response) are right-padded; ``resp_mask`` marks the
generated tokens (the stop token included). With ``h`` the hidden states of the packed sequence,

    log pi(y_t)  = logits[P - 1 + t] at y_t          the logits that predicted token t
    V_t          = w . h[P - 1 + t] + b              the state before token t (critic adapter)
    R(x, y<=m)   = w' . h[P + e_m] + b'              the token holding line m's last character (prm adapter)

so after value initialisation (critic = prm) V_{e_m + 1} = R(x, y<=m): the value of the state after line m is the
PRM's score of that prefix. Line ends e_m are :func:`prmlab.lines.line_end_positions` (the PRM's mapping) over the
character offsets of the rollout's *own* generated tokens, so they index the response columns directly; the PRM
scores the very tokens the policy produced (not a re-tokenisation, see :mod:`prmlab.rl.shaping`).

Optimisation: one AdamW with two parameter groups, the policy LoRA weights (``RLConfig.lr``) and the critic LoRA
weights + value head (``RLConfig.critic_lr``); per minibatch the policy loss is backpropagated with the policy
adapter active and the value loss with the critic adapter active (two forwards: the adapters are alternatives on
the same base, not a sum), each group's gradient norm is clipped, and one step updates both. The two losses touch
disjoint parameters, so no loss weight is needed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prmlab.config import RLConfig
from prmlab.lines import is_comment, line_end_positions, line_spans, split_lines
from prmlab.models import hidden_states, token_logprobs, use_adapter
from prmlab.records import ExecutionResult, Task
from prmlab.rl import ppo, shaping
from prmlab.runs import derive_seed
from prmlab.sampling import extract_completion, format_prompt, generate

Execute = Callable[[list[tuple[str, Task]]], list[ExecutionResult]]
"""``run_many([(program, task)]) -> [ExecutionResult]``, e.g. :meth:`prmlab.sandbox.Sandbox.run_many`."""

NOOP = re.compile(r"^\s*(pass|(\w+)\s*=\s*\2)\s*$")
"""A line that does nothing: ``pass`` or ``x = x`` (a padding hack's favourite lines)."""
LENGTH_BUCKETS: tuple[tuple[str, int, int], ...] = (("2-3", 2, 3), ("4-7", 4, 7), ("8+", 8, 10**9))


@dataclass
class PPOState:
    """Everything an iteration reads and updates (mutable: the modules train in place)."""

    model: Any  # peft model holding the policy, critic (and prm) adapters
    tokenizer: Any
    value_head: torch.nn.Module  # ScalarHead of the critic
    optimizer: torch.optim.Optimizer
    prm_head: torch.nn.Module | None = None  # ScalarHead of the PRM (frozen); None: no PRM loaded
    track: str = "completion"
    iteration: int = 0  # iterations completed


def make_optimizer(model, value_head: torch.nn.Module, cfg: RLConfig) -> torch.optim.Optimizer:
    """AdamW over [policy LoRA weights (lr), critic LoRA weights + value head (critic_lr)]."""
    named = dict(model.named_parameters())
    policy = [p for n, p in named.items() if ".policy." in n and "lora_" in n]
    critic = [p for n, p in named.items() if ".critic." in n and "lora_" in n] + list(value_head.parameters())
    return torch.optim.AdamW([{"params": policy, "lr": cfg.lr, "name": "policy"},
                              {"params": critic, "lr": cfg.critic_lr, "name": "critic"}], weight_decay=0.0)


# ----------------------------------------------------------------------------------------------------------------
# rollout helpers


def prompt_mix(tasks: Sequence[Task], cfg: RLConfig) -> list[Task]:
    """The training prompts of RL: tasks whose reference has min_lines..max_lines lines (unknown length: kept)."""
    mix = [t for t in tasks if t.n_lines == 0 or cfg.min_lines <= t.n_lines <= cfg.max_lines]
    if not mix:
        raise ValueError(f"no training task has {cfg.min_lines}-{cfg.max_lines} lines")
    return mix


def choose_rows(tasks: Sequence[Task], cfg: RLConfig, iteration: int) -> list[tuple[Task, int, int]]:
    """``(task, sample index, seed)`` of each rollout row: prompts drawn without replacement per iteration.

        seed(row) = derive_seed(cfg.seed, "rl", iteration, task_id, i)      one stream per row
    """
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "rl-prompts", iteration))
    order = torch.randperm(len(tasks), generator=g).tolist()[:cfg.prompts_per_iteration]
    return [(tasks[j], i, derive_seed(cfg.seed, "rl", iteration, tasks[j].task_id, i))
            for j in order for i in range(cfg.samples_per_prompt)]


def response_offsets(tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of each generated token in F = ``decode(prompt_ids + new_ids)`` (= prompt + text).

        end_k = max(end_{k-1}, |common prefix of decode(prompt_ids + new_ids[:k+1]) and F|)

    The common prefix makes a token that leaves a character incomplete (a byte-level piece of a multi-byte
    character, decoded as U+FFFD until the next piece arrives) end before that character, so the character belongs
    to the token that completes it. Special tokens (the stop token) decode to nothing: an empty range.
    """
    kw = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    full = tokenizer.decode(list(prompt_ids) + list(new_ids), **kw)  # F
    prev = len(os.path.commonprefix([tokenizer.decode(list(prompt_ids), **kw), full]))
    out = []
    for k in range(len(new_ids)):
        text = tokenizer.decode(list(prompt_ids) + list(new_ids[:k + 1]), **kw)
        end = max(prev, len(os.path.commonprefix([text, full])))  # end_k
        out.append((prev, end))
        prev = end
    return out


def line_end_columns(tokenizer, gen, prompt_text: str, completion: str) -> list[int]:
    """Response column e_m of each completion line's last character (the PRM's mapping, rollout's own tokens).

    The completion starts in F = decode(prompt_ids + new_ids) after the decoded prompt and the healed text the first
    token re-created; decoding skips special tokens, so on the chat track (whose prompt holds the template's special
    tokens) that is not ``len(prompt_text)``.
    """
    offsets = response_offsets(tokenizer, gen.prompt_ids, gen.new_ids)
    kw = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    full = tokenizer.decode(list(gen.prompt_ids) + list(gen.new_ids), **kw)  # F
    head = os.path.commonprefix([tokenizer.decode(list(gen.prompt_ids), **kw), full])  # the prompt as decoded
    start = len(head) + len(gen.healed or "")  # where the completion's first character sits in F
    return line_end_positions(offsets, line_spans(completion), text_start=start)  # e_m (columns)


def pack(gens: Sequence[Any], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(input_ids, attention_mask, resp_mask, P)``: prompts left-padded to end at column P, responses after.

    input_ids, attention_mask (B, T = P + R); resp_mask (B, R) bool.
    """
    P = max(len(g.prompt_ids) for g in gens)
    R = max(max(len(g.new_ids) for g in gens), 1)
    ids = torch.full((len(gens), P + R), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros(len(gens), P + R, dtype=torch.long)  # (B, T)
    resp_mask = torch.zeros(len(gens), R, dtype=torch.bool)  # (B, R)
    for b, g in enumerate(gens):
        p, n = len(g.prompt_ids), len(g.new_ids)
        ids[b, P - p:P + n] = torch.tensor(list(g.prompt_ids) + list(g.new_ids), dtype=torch.long)
        attn[b, P - p:P + n] = 1
        resp_mask[b, :n] = True
    return ids, attn, resp_mask, P


# ----------------------------------------------------------------------------------------------------------------
# model read-outs on the packed batch


def policy_logprobs(model, ids: torch.Tensor, attn: torch.Tensor, P: int) -> torch.Tensor:
    """log pi(y_t) of the response tokens with the active adapter (or none).  # (B, R)"""
    return token_logprobs(model, ids, attn, last=ids.shape[1] - P)  # the R response tokens only


def head_outputs(model, head: torch.nn.Module, adapter: str, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """w . h_t + b at every column with ``adapter`` active (callers keep it active through backward).  # (B, T)"""
    with use_adapter(model, adapter):
        return head(hidden_states(model, ids, attn))  # (B, T)


def critic_values(model, head, ids, attn, P: int) -> torch.Tensor:
    """V_t = w . h[P - 1 + t] + b, the value of the state before response token t (critic adapter).  # (B, R)"""
    return head_outputs(model, head, "critic", ids, attn)[:, P - 1:-1]


@torch.no_grad()
def prm_line_scores(model, head, ids, attn, P: int, ends: Sequence[Sequence[int]]) -> list[list[float]]:
    """R(x, y<=m) = w' . h[P + e_m] + b' of each line (prm adapter; MSE-trained heads are on the label scale)."""
    out = head_outputs(model, head, "prm", ids, attn)  # (B, T)
    return [[float(out[b, P + e]) for e in row] for b, row in enumerate(ends)]


# ----------------------------------------------------------------------------------------------------------------
# monitors


def line_monitors(completions: Sequence[str]) -> dict[str, float]:
    """Lines per response, and the shares of comment lines and of no-op lines (``pass``, ``x = x``)."""
    lines = [split_lines(c) for c in completions]
    flat = [ln for row in lines for ln in row]
    n = max(len(flat), 1)
    return {"lines_per_response": sum(map(len, lines)) / max(len(lines), 1),
            "comment_line_ratio": sum(is_comment(ln) for ln in flat) / n,
            "noop_line_ratio": sum(bool(NOOP.match(ln)) for ln in flat) / n}


def pass_by_length(tasks: Sequence[Task], passed: Sequence[bool]) -> dict[str, float]:
    """Pass rate of the rollout per reference-length bucket (only buckets present)."""
    out = {}
    for name, lo, hi in LENGTH_BUCKETS:
        hits = [p for t, p in zip(tasks, passed) if lo <= t.n_lines <= hi]
        if hits:
            out[f"pass_rate_{name}"] = sum(hits) / len(hits)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the PPO update


BACKWARD_BUDGET = 8_000_000
"""Largest ``rows x T x layers x hidden`` of one backward pass (what the saved activations grow with); a minibatch
above it is split into micro-batches whose gradients add up to the minibatch's (:func:`micro_batch_rows`). The
toy-coder (6 layers x 256, context 512) never reaches it: 8 x 512 x 1536 = 6.3M. SmolLM2-135M (30 x 576) keeps one
row per pass at 600 tokens (10.4M): about 1.3 GB of activations instead of 11 GB for a minibatch of 8."""


def micro_batch_rows(model, n_rows: int, T: int, budget: int | None = None) -> int:
    """Rows per backward pass: all ``n_rows`` when ``n_rows x T x layers x hidden <= budget`` (default
    :data:`BACKWARD_BUDGET`), else as many as fit (at least one)."""
    c, budget = model.config, BACKWARD_BUDGET if budget is None else budget
    per_row = T * c.num_hidden_layers * c.hidden_size
    return n_rows if n_rows * per_row <= budget else max(1, budget // per_row)


def backward_in_parts(mb: dict[str, torch.Tensor], rows: int, loss_of) -> tuple[float, torch.Tensor]:
    """Backpropagate ``loss_of(part)`` (a masked mean over the part's response tokens) over parts of ``rows`` rows.

        L = sum_j (n_j / n) L_j      n_j = the response tokens of part j, n = sum_j n_j

    equals the loss of the whole minibatch (a masked mean is a token-weighted mean of the parts' masked means), so
    the accumulated gradients are the minibatch's. Returns L and the concatenated read-out of the parts (detached).
    """
    n_rows = mb["ids"].shape[0]
    if rows >= n_rows:  # one pass: exactly the minibatch's loss, no rescaling
        loss, out = loss_of(mb)
        loss.backward()
        return loss.item(), out.detach()
    n = mb["resp_mask"].sum().clamp(min=1)
    total, outs = 0.0, []
    for part in torch.arange(n_rows).split(rows):
        sub = {k: v[part] for k, v in mb.items()}
        loss, out = loss_of(sub)
        loss = loss * (sub["resp_mask"].sum() / n)  # (n_j / n) L_j
        loss.backward()
        total += loss.item()
        outs.append(out.detach())
    return total, torch.cat(outs)


def ppo_update(state: PPOState, cfg: RLConfig, batch: dict[str, torch.Tensor], P: int) -> dict[str, float]:
    """``ppo_epochs`` passes over the batch in seeded minibatches; returns the mean losses and monitors.

    ``batch``: ids, attn (B, T); resp_mask, old_logp, old_values, advantages, returns (B, R). A minibatch too large
    for one backward pass (:data:`BACKWARD_BUDGET`) is backpropagated in parts with the same total gradient.
    """
    model, B = state.model, batch["ids"].shape[0]
    groups = state.optimizer.param_groups
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "rl-minibatches", state.iteration))
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "approx_kl": [], "clip_fraction": []}
    rows = micro_batch_rows(model, min(cfg.minibatch_size, B), batch["ids"].shape[1])

    def policy_part(m):  # clipped policy loss of a part, and its log pi (b, R)
        logp = policy_logprobs(model, m["ids"], m["attn"], P)
        return ppo.policy_loss(logp, m["old_logp"], m["advantages"], m["resp_mask"], cfg.clip), logp

    def value_part(m):  # clipped value loss of a part, and its V_t (b, R)
        values = critic_values(model, state.value_head, m["ids"], m["attn"], P)
        return ppo.value_loss(values, m["old_values"], m["returns"], m["resp_mask"], cfg.value_clip), values

    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(B, generator=g).split(cfg.minibatch_size):
            mb = {k: v[idx] for k, v in batch.items()}
            mask = mb["resp_mask"]  # (b, R)
            with use_adapter(model, "policy"):  # active through backward (autograd needs requires_grad)
                pl, logp = backward_in_parts(mb, rows, policy_part)  # log pi (b, R)
            with use_adapter(model, "critic"):
                vl, _ = backward_in_parts(mb, rows, value_part)
            for group in groups:
                torch.nn.utils.clip_grad_norm_(group["params"], cfg.max_grad_norm)
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
            stats["policy_loss"].append(pl)
            stats["value_loss"].append(vl)
            stats["approx_kl"].append(ppo.approx_kl(logp, mb["old_logp"], mask).item())
            stats["clip_fraction"].append(ppo.clip_fraction(logp, mb["old_logp"], mask, cfg.clip).item())
    return {k: sum(v) / len(v) for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------------------------
# one iteration, top to bottom


def ppo_iteration(state: PPOState, cfg: RLConfig, tasks: Sequence[Task], execute: Execute,
                  token_healing: bool = True) -> dict[str, Any]:
    """One PPO iteration on ``tasks`` (the prompt mix); updates ``state`` in place and returns its metrics.

    1. rollout: B = prompts x samples responses of the policy, one seeded stream per row
    2. execute: the programs against the hidden tests -> R_UT (outcome or partial credit)
    3. PRM: scores R(x, y<=m) at the line ends of the rollout's own tokens (dense variants only)
    4. shaping: r_t = outcome at the last generated token + lambda (1/T) R at line ends - beta KL_t
    5. values V_t (critic), GAE -> A_t, G_t; whitened A_t
    6. PPO epochs: clipped policy loss (policy adapter), clipped value loss (critic adapter + head)
    """
    model, tok = state.model, state.tokenizer
    model.eval()  # no dropout anywhere: log-probabilities are deterministic (PPO ratios start at exactly 1)
    device = state.value_head.linear.weight.device

    # 1. rollout ------------------------------------------------------------------------------------------------
    rows = choose_rows(tasks, cfg, state.iteration)
    row_tasks = [t for t, _, _ in rows]
    prompts = [format_prompt(t, tok, state.track) for t in row_tasks]
    with use_adapter(model, "policy"):
        gens = generate(model, tok, prompts, temperature=cfg.temperature, top_p=1.0,
                        max_new_tokens=cfg.max_new_tokens, seeds=[s for _, _, s in rows],
                        batch_size=len(rows), token_healing=token_healing)
    completions = [extract_completion(g.text, state.track) for g in gens]
    ids, attn, resp_mask, P = pack(gens, tok.pad_token_id if tok.pad_token_id is not None else 0)
    ids, attn, resp_mask = ids.to(device), attn.to(device), resp_mask.to(device)  # (B, T) (B, T) (B, R)

    # 2. execute ------------------------------------------------------------------------------------------------
    results = execute([(t.prompt + c, t) for t, c in zip(row_tasks, completions)])
    passed = torch.tensor([r.passed for r in results], device=device)  # (B,)
    fraction = torch.tensor([r.pass_fraction for r in results], device=device)  # (B,)
    outcome = shaping.outcome_reward(passed, fraction, cfg.partial_credit)  # (B,) R_UT

    # 3. PRM scores at line ends ----------------------------------------------------------------------------------
    ends = [line_end_columns(tok, g, p, c) for g, p, c in zip(gens, prompts, completions)]  # e_m per row
    lines = [split_lines(c) for c in completions]
    lb = None
    if cfg.dense:
        if state.prm_head is None:
            raise ValueError("the dense reward needs a PRM (PPOState.prm_head)")
        scores = prm_line_scores(model, state.prm_head, ids, attn, P, ends)  # R(x, y<=m)
        lb = shaping.line_batch(ends, scores, lines, device=device)  # (B, M)

    # 4. shaping -------------------------------------------------------------------------------------------------
    with torch.no_grad():
        with use_adapter(model, "policy"):
            old_logp = policy_logprobs(model, ids, attn, P)  # (B, R) log pi_old
        with model.disable_adapter():
            ref_logp = policy_logprobs(model, ids, attn, P)  # (B, R) log pi_ref
    kl = shaping.kl_estimate(old_logp, ref_logp, cfg.kl_estimator)  # (B, R) KL_t
    line_r = None if lb is None else shaping.line_rewards(
        lb.score, lb.mask, lb.neutral, passed, cfg.lambda_pass, cfg.lambda_fail, cfg.length_norm,
        cfg.neutral_zero)  # (B, M) r_m
    rewards = shaping.assemble_rewards(resp_mask, outcome, kl, cfg.kl_beta, line_r,
                                       None if lb is None else lb.end, None if lb is None else lb.mask)

    # 5. values, GAE, whitening ---------------------------------------------------------------------------------
    with torch.no_grad():
        old_values = critic_values(model, state.value_head, ids, attn, P).float()  # (B, R) V_t
    adv = ppo.gae(rewards.total, old_values, resp_mask, cfg.gamma, cfg.gae_lambda)  # A_t, G_t
    advantages = ppo.whiten(adv.advantages, resp_mask) if cfg.whiten_advantages else adv.advantages  # (B, R)
    ev = ppo.explained_variance(old_values, adv.returns, resp_mask).item()

    # 6. PPO epochs ---------------------------------------------------------------------------------------------
    batch = {"ids": ids, "attn": attn, "resp_mask": resp_mask, "old_logp": old_logp, "old_values": old_values,
             "advantages": advantages, "returns": adv.returns}
    losses = ppo_update(state, cfg, batch, P)
    state.iteration += 1

    # metrics -----------------------------------------------------------------------------------------------------
    parts = rewards.per_sequence()  # (B,) each
    return {"iteration": state.iteration, "pass_rate": passed.float().mean().item(),
            "pass_fraction": fraction.float().mean().item(),
            **pass_by_length(row_tasks, passed.tolist()),
            "return_total": parts["total"].mean().item(), "return_outcome": parts["outcome"].mean().item(),
            "return_prm": parts["prm"].mean().item(), "return_kl": parts["kl"].mean().item(),
            "kl_ref": ppo.masked_sum(kl, resp_mask, dim=1).mean().item(),
            **line_monitors(completions),
            "response_tokens": resp_mask.sum(dim=1).float().mean().item(),
            "finished_ratio": sum(g.finished for g in gens) / len(gens),
            "value_explained_variance": ev, "value_mean": ppo.masked_mean(old_values, resp_mask).item(),
            **losses}
