"""RL read-outs for notebook 03: one rollout's per-token rewards, line rewards under the safeguards, the reward hacks'
programs, and the run directories of the notebook's own short runs (held-out rows: :mod:`prmlab.evaluation.rows`).

    rollout_rewards(model, tokenizer, prm_head, task, rl, run_many, seed, ...)   steps 1-4 of one PPO iteration
                                                                                 (:func:`prmlab.rl.loop.ppo_iteration`)
                                                                                 for one response -> RolloutRewards
    plot_token_rewards(rr, ax)          per-token rewards: PRM line rewards at line ends, outcome at the last token, KL
    line_rewards_html(lines, columns)   a listing with one coloured column per reward
    line_reward_list(lines, scores, passed, rl, length_norm=, neutral_zero=)      r_m of one scored program
    pad_program(completion, line)       the padding / comment-spam hack: ``line`` inserted before every line
    read_metrics(out_dir), finished_run(out_dir, iterations)                       an RL run's metrics.jsonl
    side_run_dir(run_dir, name)         run_dir/notebook-03/<name>: a run directory sharing run_dir's PRM

Everything here calls the library's own functions (shaping, loop read-outs, sampling, evaluation); nothing
re-implements a reward.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prmlab.config import RLConfig
from prmlab.lines import is_neutral, split_lines
from prmlab.records import Task
from prmlab.rl import shaping

SIDE_DIR = "notebook-03"
"""Where notebook 03 keeps its own runs inside a run directory (never ``rl/<variant>``, which ``prmlab rl`` owns)."""
CONTINUATIONS = ("else", "elif", "except", "finally")
"""Keywords that continue the statement above: nothing may be inserted before them."""


# ----------------------------------------------------------------------------------------------------------------
# one rollout's rewards


@dataclass(frozen=True)
class RolloutRewards:
    """One response of a policy with everything the reward of a PPO iteration is made of (all per response)."""

    task: Task
    completion: str
    pieces: tuple[str, ...]  # the generated tokens, decoded one by one (stop token: "")
    lines: tuple[str, ...]  # the completion's lines
    ends: tuple[int, ...]  # e_m: response column of line m's last token
    scores: tuple[float, ...]  # R(x, y<=m), read on the rollout's own tokens
    passed: bool
    pass_fraction: float
    line_rewards: tuple[float, ...]  # r_m = lambda(y) (1/T) R(x, y<=m), 0 on neutral lines
    total: tuple[float, ...]  # r_t per generated token
    outcome: tuple[float, ...]  # R_UT at the last generated token
    prm: tuple[float, ...]  # sum_m [t = e_m] r_m
    kl: tuple[float, ...]  # -beta KL_t

    def sums(self) -> dict[str, float]:
        """Each part summed over the response's tokens."""
        return {k: float(sum(getattr(self, k))) for k in ("total", "outcome", "prm", "kl")}


@torch.no_grad()
def rollout_rewards(model, tokenizer, prm_head, task: Task, rl: RLConfig, run_many, seed: int, *, model_cfg,
                    ckpt: str | Path | None = None, token_healing: bool = True) -> RolloutRewards:
    """Sample one response of a policy to ``task`` and assemble its per-token rewards as the PPO loop does.

    ``model`` is a peft model holding the ``prm`` adapter (e.g. ``load_prm(...).model``) and ``prm_head`` its head;
    the policy is the base (``ckpt`` None) or the ``policy`` adapter of an RL checkpoint
    (:func:`prmlab.models.policy_model`); the reference is the base (adapters disabled). The line rewards use
    ``rl``'s lambdas and safeguards whatever its ``dense`` switch says (this is a picture of the dense reward).
    """
    from prmlab.models import policy_model
    from prmlab.rl.loop import line_end_columns, pack, policy_logprobs, prm_line_scores
    from prmlab.sampling import extract_completion, format_prompt, generate

    device = prm_head.linear.weight.device
    prompt = format_prompt(task, tokenizer, model_cfg.track)
    with policy_model(model, model_cfg, ckpt) as pm:  # 1. rollout with the policy
        gen = generate(pm, tokenizer, [prompt], temperature=rl.temperature, top_p=1.0,
                       max_new_tokens=rl.max_new_tokens, seeds=[seed], batch_size=1, token_healing=token_healing)[0]
        ids, attn, resp_mask, P = (x.to(device) if torch.is_tensor(x) else x
                                   for x in pack([gen], tokenizer.pad_token_id or 0))
        logp = policy_logprobs(pm, ids, attn, P)  # (1, R) log pi
    with model.disable_adapter():
        ref_logp = policy_logprobs(model, ids, attn, P)  # (1, R) log pi_ref
    completion = extract_completion(gen.text, model_cfg.track)
    result = run_many([(task.prompt + completion, task)])[0]  # 2. execute
    ends = line_end_columns(tokenizer, gen, prompt, completion)  # 3. PRM at the rollout's own line ends
    scores = prm_line_scores(model, prm_head, ids, attn, P, [ends])
    lines = split_lines(completion)
    passed = torch.tensor([result.passed], device=device)
    lb = shaping.line_batch([ends], scores, [lines], device=device)  # 4. shaping
    r_m = shaping.line_rewards(lb.score, lb.mask, lb.neutral, passed, rl.lambda_pass, rl.lambda_fail,
                               rl.length_norm, rl.neutral_zero)  # (1, M)
    outcome = shaping.outcome_reward(passed, torch.tensor([result.pass_fraction], device=device), rl.partial_credit)
    kl = shaping.kl_estimate(logp, ref_logp, rl.kl_estimator)  # (1, R)
    tr = shaping.assemble_rewards(resp_mask, outcome, kl, rl.kl_beta, r_m, lb.end, lb.mask)
    n = int(resp_mask.sum())
    row = {k: tuple(float(v) for v in getattr(tr, k)[0, :n]) for k in ("total", "outcome", "prm", "kl")}
    pieces = tuple(tokenizer.decode([i], skip_special_tokens=True) for i in gen.new_ids)
    return RolloutRewards(task, completion, pieces, tuple(lines), tuple(ends), tuple(scores[0]), bool(result.passed),
                          float(result.pass_fraction), tuple(float(v) for v in r_m[0]), **row)


def plot_token_rewards(rr: RolloutRewards, ax=None, title: str | None = None):
    """Per-token rewards of one response: the PRM's line rewards at line ends (green / red), the outcome at the
    last generated token (blue), the KL penalty at every token (grey); token pieces on the x axis, dotted lines
    between lines of code."""
    from prmlab import plots

    n = len(rr.total)
    fig, ax = plots.axes(ax, (max(8.0, 0.16 * n), 3.2))
    xs = np.arange(n)
    prm = np.array(rr.prm)
    ax.bar(xs, prm, color=[plots.COLORS[1.0] if v >= 0 else plots.COLORS[-1.0] for v in prm], width=0.8,
           label="PRM line reward λ(y)(1/T)R at e_m")
    ax.bar(xs, rr.outcome, bottom=prm, color="#2b6cb0", width=0.8, label="outcome R_UT at the last token")
    ax.plot(xs, rr.kl, color="#777777", lw=1, marker=".", ms=3, label="-β KL_t")
    for m, e in enumerate(rr.ends, start=1):
        ax.axvline(e + 0.5, color="#bbbbbb", lw=0.6, ls=":")
        ax.text(e, ax.get_ylim()[1], f"{m}", ha="center", va="bottom", fontsize=7, color="#555")
    ax.axhline(0, color="#333", lw=0.5)
    last = n - 1
    ax.annotate(f"R_UT = {rr.outcome[last]:g} ({'passes' if rr.passed else 'fails'})", (last, rr.total[last]),
                xytext=(-6, 14), textcoords="offset points", ha="right", fontsize=7, color="#2b6cb0",
                arrowprops={"arrowstyle": "->", "color": "#2b6cb0", "lw": 0.6})
    shown = [p.replace("\n", "↵").replace(" ", "·") or "⟨eos⟩" for p in rr.pieces]
    ax.set_xticks(xs, shown, rotation=90, fontsize=7, family="monospace")
    ax.set_xlim(-0.8, n - 0.2)
    ax.set_ylabel("reward r_t")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if title:
        ax.set_title(title, fontsize=9, loc="left", pad=12)
    return fig


def line_rewards_html(lines: Sequence[str], columns: Mapping[str, Sequence[float]], title: str = "",
                      scale: Mapping[str, float] | None = None) -> str:
    """A listing with one coloured column per named per-line quantity (PRM score, line rewards under switches...).

    Colours are :func:`prmlab.plots.score_hex` on [-s, s] with s = ``scale[name]`` (default: the column's largest
    absolute value), so small rewards are visible next to scores in [-1, 1].
    """
    import html

    from prmlab import plots

    scale = dict(scale or {})
    mono = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px"
    head = "".join(f'<th style="padding:0 6px">{html.escape(k)}</th>' for k in columns)
    rows = [f'<caption style="text-align:left;font-weight:bold;padding:2px 0">{html.escape(title)}</caption>',
            f'<tr style="color:#555"><th>#</th>{head}<th style="text-align:left">code</th></tr>']
    sizes = {k: scale.get(k) or max([abs(v) for v in vals] + [1e-9]) for k, vals in columns.items()}
    for i, line in enumerate(lines):
        cells = "".join(f'<td style="text-align:right;padding:0 6px;font-variant-numeric:tabular-nums;background:'
                        f'{plots.score_hex(vals[i], -sizes[k], sizes[k])}">{vals[i]:+.3f}</td>'
                        for k, vals in columns.items())
        rows.append(f'<tr><td style="color:#999;text-align:right;padding-right:4px">{i + 1}</td>{cells}'
                    f'<td style="white-space:pre;padding-left:8px">{html.escape(line)}</td></tr>')
    total = "".join(f'<td style="text-align:right;padding:0 6px;font-weight:bold">{sum(vals):+.3f}</td>'
                    for vals in columns.values())
    rows.append(f'<tr style="border-top:1px solid #999"><td>Σ</td>{total}<td></td></tr>')
    return f'<table style="border-collapse:collapse;{mono}">' + "".join(rows) + "</table>"


# ----------------------------------------------------------------------------------------------------------------
# the reward hacks


def line_reward_list(lines: Sequence[str], scores: Sequence[float], passed: bool, rl: RLConfig, *,
                     length_norm: bool | None = None, neutral_zero: bool | None = None) -> list[float]:
    """r_m of one scored program (:func:`prmlab.rl.shaping.line_rewards`), with ``rl``'s lambdas and its safeguards
    unless ``length_norm`` / ``neutral_zero`` are given."""
    lb = shaping.line_batch([list(range(len(lines)))], [list(scores)], [list(lines)])
    r = shaping.line_rewards(lb.score, lb.mask, lb.neutral, torch.tensor([bool(passed)]), rl.lambda_pass,
                             rl.lambda_fail, rl.length_norm if length_norm is None else length_norm,
                             rl.neutral_zero if neutral_zero is None else neutral_zero)
    return [float(v) for v in r[0]]


def pad_program(completion: str, line: str = "pass") -> str:
    """``completion`` with ``line`` inserted before every non-blank line, at that line's indentation.

    ``"pass"`` is the padding hack (a no-op the program still runs through), ``"# ..."`` the comment-spam hack.
    Nothing is inserted before ``else``/``elif``/``except``/``finally`` (it would end the statement above), so the
    program does what it did.
    """
    out = []
    for text in split_lines(completion):
        body = text.lstrip()
        if body and not body.startswith(CONTINUATIONS):
            out.append(text[:len(text) - len(body)] + line)
        out.append(text)
    return "".join(x + "\n" for x in out)


def paid_lines(lines: Sequence[str], neutral_zero: bool = True) -> int:
    """T: the lines that earn a line reward (all of them, or the non-neutral ones with ``neutral_zero``)."""
    return sum(1 for x in lines if not (neutral_zero and is_neutral(x)))


# ----------------------------------------------------------------------------------------------------------------
# runs


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``out_dir/metrics.jsonl`` (an RL run's), [] when there is none."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def finished_run(out_dir: str | Path, iterations: int | None = None) -> bool:
    """Whether ``out_dir`` holds a finished RL run: a last checkpoint and one metrics row per iteration of its own
    config (or of ``iterations``)."""
    out_dir = Path(out_dir)
    cfg_file = out_dir / "config.json"
    if not (cfg_file.exists() and (out_dir / "checkpoints" / "last" / "policy").is_dir()):
        return False
    want = iterations or json.loads(cfg_file.read_text(encoding="utf-8"))["rl"]["iterations"]
    return [r.get("iteration") for r in read_metrics(out_dir)] == list(range(1, want + 1))


def side_run_dir(run_dir: str | Path, name: str) -> Path:
    """``run_dir/notebook-03/<name>``: a run directory of its own that shares ``run_dir``'s PRM (copied into it).

    Short runs and runs with a safeguard off go here, so they never block or mix with ``prmlab rl``'s
    ``run_dir/rl/<variant>``. When ``run_dir``'s PRM changed since the copy, everything in the side directory
    (made with the old PRM) is removed first.
    """
    run_dir = Path(run_dir)
    src, side = run_dir / "prm", run_dir / SIDE_DIR / name
    dst = side / "prm"
    files = [p.relative_to(src) for p in sorted(src.rglob("*")) if p.is_file()]
    if dst.exists() and not all((dst / f).is_file() and filecmp.cmp(src / f, dst / f, shallow=False) for f in files):
        shutil.rmtree(side)
    if not dst.exists():
        side.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst)
    return side
