"""The PRM at test time: best-of-N reranking of a policy's held-out samples, against a random pick and the oracle.

    run_best_of_n(cfg, run_dir, policy="base", n=8, temperature=1.0) -> BestOfNResult     eval/<policy>.best_of_n.json

For each held-out task (:func:`prmlab.evaluation.stage.eval_tasks`: the first ``EvalConfig.n_tasks``) the policy
samples N responses at ``temperature`` (diverse samples: at 0.2 the N candidates would mostly repeat each other),
the sandbox judges each one, and the run's PRM (``run_dir/prm``) scores every line. The pure functions of
:mod:`prmlab.evaluation.rerank` then give, per task t with c_t of N_t candidates passing,

    prm_t     whether the PRM's pick passes (the top response score; ties as the exact expectation)
    random_t  c_t / N_t          the exact expected pass rate of a uniformly random pick
    oracle_t  1[c_t > 0]         what a perfect verifier would reach (any of N passes)

and their means over tasks, each with a bootstrap interval over tasks, the paired comparison "PRM pick minus
random pick" on the same tasks (paired bootstrap interval and sign-flip p-value), the share of the possible gain
the PRM gets, (prm - random) / (oracle - random), and all of it by line bucket of the task's reference solution
(2-3, 4-7, 8-12 lines; the paper's long/short split is at 100 response tokens, which toy responses never reach, so
the line buckets stand for it here).

Aggregation of the line scores s_1..s_M into one response score (neutral comment/blank lines left out), both
reported:

    "min"   min_m s_m   DEFAULT. The PRM's label for a line is whether the prefix ending there can still be
            completed into a passing program, so once a line is wrong every later prefix is labelled -1: the
            minimum catches the first line the PRM doubts even when it scores the lines after it generously
            (the last line of a failing program often looks like any other ``return``). It is also the usual PRM
            aggregation (a program is only as good as its weakest step), so the number compares with other PRMs'.
    "last"  s_M         the PRM's score of the complete program: an outcome-style verifier read off the PRM. On a
            perfectly trained PRM the two agree; where they differ, the notebook shows which one the data favours.

Files (resumable, like the evaluation stage's): ``eval/<policy>.best_of_n-<N>-t<T>.samples.jsonl`` (the samples,
sampled by task chunks, so a killed run resumes), the sandbox's verdicts cached in ``run_dir/exec_cache``,
``eval/<policy>.best_of_n.scores.jsonl`` (every candidate's line scores and verdict) and the result,
``eval/<policy>.best_of_n.json``. A result with the same config and the same PRM weights is read back instead of
recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prmlab.config import Config
from prmlab.errors import ConfigError, ExecutionNotAllowed
from prmlab.evaluation.passk import (bootstrap_over_tasks, group_by_bucket, line_bucket_names, line_buckets,
                                     paired_comparison)
from prmlab.evaluation.rerank import AGGREGATIONS, Candidate, RerankResult, rerank
from prmlab.records import LineScores

DEFAULT_HOW = "min"
"""The default response score (see the module docstring for why); ``BestOfNResult.summaries`` holds both."""


@dataclass(frozen=True)
class BucketSummary:
    """Best-of-N on the tasks of one length bucket: means over its tasks and the paired PRM-minus-random gap."""

    n_tasks: int
    prm: float
    random: float
    oracle: float
    diff: float
    lo: float
    hi: float
    p_value: float


@dataclass(frozen=True)
class RerankSummary:
    """One aggregation's best-of-N numbers over the tasks (see the module docstring)."""

    how: str
    prm: float
    prm_ci: tuple[float, float]
    random: float
    random_ci: tuple[float, float]
    oracle: float
    oracle_ci: tuple[float, float]
    diff: float
    """Mean over tasks of prm_t - random_t."""
    diff_ci: tuple[float, float]
    """Paired bootstrap interval of ``diff`` (resampling tasks keeps each task's pair together)."""
    p_value: float
    """Two-sided sign-flip p-value of ``diff`` = 0."""
    share: float | None
    """(prm - random) / (oracle - random), the share of the possible gain; None when oracle = random."""
    by_lines: dict[str, BucketSummary]
    per_task_prm: tuple[float, ...]
    selected: tuple[int, ...]
    """Index of the PRM's pick (first top-scoring candidate) in each task's candidates."""


@dataclass(frozen=True)
class BestOfNResult:
    """Best-of-N reranking of ``policy``'s held-out samples by the run's PRM, for each aggregation (``summaries``);
    the per-task lists are in task order (``task_ids``)."""

    policy: str
    n: int
    temperature: float
    n_tasks: int
    default: str
    summaries: dict[str, RerankSummary]
    task_ids: tuple[str, ...] = field(repr=False)
    n_lines: tuple[int, ...] = field(repr=False)
    per_task_random: tuple[float, ...] = field(repr=False)
    per_task_oracle: tuple[float, ...] = field(repr=False)
    long_responses: float = 0.0
    """Share of the candidates with more than 100 generated tokens (the paper's long bucket)."""
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        parts = []
        for how, s in self.summaries.items():
            parts.append(f"{how}{' (default)' if how == self.default else ''}: PRM pick {s.prm:.1%} "
                         f"[{s.prm_ci[0]:.1%}, {s.prm_ci[1]:.1%}], PRM - random {s.diff:+.1%} "
                         f"[{s.diff_ci[0]:+.1%}, {s.diff_ci[1]:+.1%}] (p = {s.p_value:.3f})")
        s = self.summaries[self.default]
        return (f"{self.policy} best-of-{self.n} at T={self.temperature:g} on {self.n_tasks} held-out tasks: random "
                f"pick {s.random:.1%}, oracle {s.oracle:.1%}; " + "; ".join(parts))


# ----------------------------------------------------------------------------------------------------------------
# pure


def candidate(scores: LineScores, passed: bool) -> Candidate:
    """A :class:`Candidate` from one response's line scores and verdict; comment and blank lines are neutral
    (:func:`prmlab.lines.is_neutral`), as in the labels and the dense reward."""
    from prmlab.lines import is_neutral

    return Candidate(tuple(scores.scores), bool(passed), tuple(is_neutral(line) for line in scores.lines))


def gain_share(prm: float, random: float, oracle: float) -> float | None:
    """(prm - random) / (oracle - random): 0 for a PRM no better than chance, 1 for a perfect verifier; None when
    there is nothing to gain (oracle = random: every task all-pass or all-fail)."""
    gap = oracle - random
    return None if abs(gap) < 1e-12 else (prm - random) / gap


def summarize_rerank(result: RerankResult, buckets: Sequence[str], order: Sequence[str] | None = None,
                     n_boot: int = 2000, seed: int = 0) -> RerankSummary:
    """Intervals, the paired PRM-vs-random comparison and the per-bucket numbers of one :func:`rerank` result.

    ``buckets`` is each task's bucket label (task order as in ``result``), ``order`` the buckets' display order.

        interval of x     :func:`bootstrap_over_tasks` of x_t   (x = prm, random, oracle)
        diff, [lo, hi], p :func:`paired_comparison` of prm_t and random_t
        by bucket b       the same means and paired comparison over the tasks labelled b
    """
    if len(buckets) != result.n_tasks:
        raise ValueError(f"{len(buckets)} bucket labels for {result.n_tasks} tasks")
    ci = {name: bootstrap_over_tasks(values, n_boot=n_boot, seed=seed)
          for name, values in (("prm", result.per_task_prm), ("random", result.per_task_random),
                               ("oracle", result.per_task_oracle))}
    pc = paired_comparison(result.per_task_prm, result.per_task_random, n_boot=n_boot, seed=seed)
    prm_b = group_by_bucket(result.per_task_prm, buckets, order)
    rnd_b = group_by_bucket(result.per_task_random, buckets, order)
    orc_b = group_by_bucket(result.per_task_oracle, buckets, order)
    by_lines = {}
    for b in prm_b:
        d = paired_comparison(prm_b[b], rnd_b[b], n_boot=n_boot, seed=seed)
        by_lines[b] = BucketSummary(len(prm_b[b]), float(prm_b[b].mean()), float(rnd_b[b].mean()),
                                    float(orc_b[b].mean()), d.diff, d.lo, d.hi, d.p_value)
    return RerankSummary(how=result.how, prm=result.prm, prm_ci=(ci["prm"].lo, ci["prm"].hi), random=result.random,
                         random_ci=(ci["random"].lo, ci["random"].hi), oracle=result.oracle,
                         oracle_ci=(ci["oracle"].lo, ci["oracle"].hi), diff=pc.diff, diff_ci=(pc.lo, pc.hi),
                         p_value=pc.p_value, share=gain_share(result.prm, result.random, result.oracle),
                         by_lines=by_lines, per_task_prm=result.per_task_prm, selected=result.selected)


def best_of_n_result(policy: str, task_ids: Sequence[str], n_lines: Sequence[int],
                     candidates: Sequence[Sequence[Candidate]], n: int, temperature: float, n_boot: int = 2000,
                     seed: int = 0, long_responses: float = 0.0, config: dict[str, Any] | None = None,
                     default: str = DEFAULT_HOW) -> BestOfNResult:
    """Rerank each task's candidates under every aggregation and summarise them (pure)."""
    names = line_bucket_names()
    buckets = line_buckets(list(n_lines))
    results = {how: rerank(candidates, how) for how in AGGREGATIONS}
    summaries = {how: summarize_rerank(r, buckets, names, n_boot, seed) for how, r in results.items()}
    first = results[default]
    return BestOfNResult(policy=policy, n=n, temperature=temperature, n_tasks=len(task_ids), default=default,
                         summaries=summaries, task_ids=tuple(task_ids), n_lines=tuple(int(x) for x in n_lines),
                         per_task_random=first.per_task_random, per_task_oracle=first.per_task_oracle,
                         long_responses=float(long_responses), config=dict(config or {}))


def _tuples(d: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: tuple(v) if k in keys else v for k, v in d.items()}


def result_from_dict(data: dict[str, Any]) -> BestOfNResult:
    """The inverse of ``dataclasses.asdict`` on a :class:`BestOfNResult` (lists back to tuples)."""
    summaries = {}
    for how, s in data["summaries"].items():
        s = _tuples(s, ("prm_ci", "random_ci", "oracle_ci", "diff_ci", "per_task_prm", "selected"))
        s["by_lines"] = {b: BucketSummary(**v) for b, v in s["by_lines"].items()}
        summaries[how] = RerankSummary(**s)
    data = _tuples(data, ("task_ids", "n_lines", "per_task_random", "per_task_oracle"))
    return BestOfNResult(**{**data, "summaries": summaries})


def load_best_of_n(path: str | Path) -> BestOfNResult:
    """A :class:`BestOfNResult` written by :func:`run_best_of_n`."""
    return result_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def result_path(run_dir: str | Path, policy: str) -> Path:
    """``run_dir/eval/<policy>.best_of_n.json`` (``rl/sparse`` -> ``rl-sparse.best_of_n.json``)."""
    from prmlab.evaluation.stage import file_stem

    return Path(run_dir) / "eval" / f"{file_stem(policy)}.best_of_n.json"


def prm_fingerprint(prm_dir: str | Path) -> str:
    """A short hash of the PRM's weights (adapter and head) and config: a retrained PRM gets new scores."""
    prm_dir = Path(prm_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in prm_dir.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")
                       and p.name not in ("result.json",)):
        h.update(path.relative_to(prm_dir).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# the stage


def run_best_of_n(cfg: Config, run_dir: str | Path, policy: str = "base", n: int = 8, temperature: float = 1.0,
                  allow_execution: bool = False, progress: bool = True, model=None,
                  tokenizer=None) -> BestOfNResult:
    """Best-of-``n`` reranking by the run's PRM of ``policy``'s samples on the held-out tasks (module docstring).

    ``policy`` is ``base`` or an RL checkpoint (``rl/<variant>[/<checkpoint>]``); the base model is loaded unless
    given (the PRM's adapter is added to it). Writes ``eval/<policy>.best_of_n.json``; one already there with the
    same config and PRM weights is returned as it is.
    """
    from prmlab.evaluation.stage import _sample_and_judge, eval_tasks, file_stem
    from prmlab.models import policy_model
    from prmlab.prm.model import load_prm
    from prmlab.records import write_jsonl
    from prmlab.runs import policy_checkpoint, record_sandbox
    from prmlab.sandbox import Sandbox

    if not (allow_execution or cfg.sandbox.allow_execution):
        raise ExecutionNotAllowed("Best-of-N reranking executes model-generated programs: pass --allow-execution "
                                  "(or allow_execution=True) after reading docs/safety.md.")
    if n < 1 or temperature <= 0:
        raise ConfigError(f"Best-of-N needs n >= 1 and temperature > 0, got n={n}, temperature={temperature}: pass "
                          f"e.g. --n 8 --temperature 1.0.")
    run_dir = Path(run_dir)
    prm_dir = run_dir / "prm"
    if not (prm_dir / "config.json").exists():
        from prmlab.errors import MissingArtifact

        raise MissingArtifact(f"No PRM in {prm_dir}: train it first (`prmlab train-prm --preset {cfg.name}`).")
    out_dir = run_dir / "eval"
    path = result_path(run_dir, policy)
    config = {"n": n, "temperature": temperature, "evaluation": dataclasses.asdict(cfg.evaluation),
              "prm": prm_fingerprint(prm_dir)}
    config = json.loads(json.dumps(config))
    if path.exists():
        done = load_best_of_n(path)
        if done.config == config:
            return done
    ckpt = policy_checkpoint(run_dir, policy)
    if model is None or tokenizer is None:
        from prmlab.models import load_base_model, load_tokenizer

        tokenizer = tokenizer or load_tokenizer(cfg.model)
        model = model if model is not None else load_base_model(cfg.model)
    prm = load_prm(prm_dir, model=model, tokenizer=tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = eval_tasks(cfg)
    stem = file_stem(policy)
    samples = out_dir / f"{stem}.best_of_n-{n}-t{temperature:g}.samples.jsonl"
    box_cfg = dataclasses.replace(cfg.sandbox, allow_execution=True)
    with policy_model(prm.model, cfg.model, ckpt) as pm, Sandbox(box_cfg, cache_dir=run_dir / "exec_cache") as box:
        record_sandbox(out_dir, box.provenance())
        responses, passed = _sample_and_judge(pm, tokenizer, tasks, cfg, n, temperature, samples, policy,
                                              box.run_many, progress)
    prompts = {t.task_id: t.prompt for t in tasks}
    scored = prm.score([(prompts[r.task_id], r.completion) for r in responses], batch_size=cfg.prm.batch_size,
                       progress=progress, ids=[(r.task_id, r.response_id) for r in responses])
    scored = [dataclasses.replace(s, meta={"passed": bool(ok), "policy": policy}) for s, ok in zip(scored, passed)]
    write_jsonl(out_dir / f"{stem}.best_of_n.scores.jsonl", scored)
    by_task: dict[str, list[Candidate]] = {t.task_id: [] for t in tasks}
    for s, ok in zip(scored, passed):
        by_task[s.task_id].append(candidate(s, ok))
    kept = [t for t in tasks if by_task[t.task_id]]
    tokens = [int(r.meta.get("new_tokens", 0)) for r in responses]
    result = best_of_n_result(policy, [t.task_id for t in kept], [t.n_lines for t in kept],
                              [by_task[t.task_id] for t in kept], n, temperature, cfg.evaluation.n_boot,
                              cfg.evaluation.seed, sum(x > 100 for x in tokens) / max(len(tokens), 1), config)
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n", encoding="utf-8")
    return result
