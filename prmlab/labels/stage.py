"""The labelling stage end to end, for ``prmlab label`` and notebook 01.

    tasks (TaskConfig) -> responses.jsonl   sampled per policy, resumable (appended by task chunk)
                       -> execution         in the sandbox, cached in runs/<name>/exec_cache
                       -> labels.jsonl      binary search (or Monte-Carlo) line labels, resumable
                       -> labels_cost.json  cost totals; metrics.jsonl lines per group

Also here: the completer that wraps :func:`prmlab.sampling.complete_prefixes` for the driver, a recording
:class:`ModelOracle` that notebooks step through by hand, :func:`relabel_failing`, which labels the same failing
responses again with another :class:`LabelConfig` (e.g. plain bisection), and :func:`run_mc_comparison`, its
Monte-Carlo case (``labels_mc.jsonl``), to measure cost and agreement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prmlab.config import Config, LabelConfig
from prmlab.errors import ExecutionNotAllowed, MissingArtifact
from prmlab.labels.driver import (Complete, LabelingResult, RunMany, LabelItem, check_seed, default_program,
                                  label_responses, prefix_text, response_lines, run_oracles)
from prmlab.labels.search import BestOfK
from prmlab.records import Response, Task, read_jsonl, repair_tail, write_jsonl
from prmlab.models import policy_model
from prmlab.runs import init_run_dir, policy_checkpoint, record_sandbox
from prmlab.tasks import load_tasks


def make_completer(model, tokenizer, cfg: Config) -> Complete:
    """``complete(requests, k, seed)`` for the driver: the policy's own completions of code prefixes."""
    from prmlab.sampling import complete_prefixes

    def complete(requests: list[tuple[Task, str]], k: int, seeds: list[int]) -> list[list[str]]:
        return complete_prefixes(model, tokenizer, requests, k, temperature=cfg.labels.completion_temperature,
                                 top_p=cfg.sampling.top_p, max_new_tokens=cfg.labels.max_new_tokens, seeds=seeds,
                                 track=cfg.model.track, batch_size=cfg.sampling.batch_size, progress=False,
                                 token_healing=cfg.sampling.token_healing)

    return complete


def sample_responses_resumable(model, tokenizer, tasks: Sequence[Task], cfg: Config, path: Path, policy: str = "base",
                               chunk_tasks: int = 32, progress: bool = True) -> list[Response]:
    """Responses of ``policy`` to ``tasks`` in ``path``, sampling only tasks not there yet (chunks of tasks, in order).

    A chunk is sampled whole and only its missing responses appended, so a killed run resumes to the same file.
    """
    from tqdm.auto import tqdm

    from prmlab.sampling import sample_responses

    path = Path(path)
    repair_tail(path)
    have = read_jsonl(path, Response) if path.exists() else []
    done_ids = {r.response_id for r in have}
    done_tasks = {r.task_id for r in have if r.policy == policy}
    chunks = [list(tasks[i:i + chunk_tasks]) for i in range(0, len(tasks), chunk_tasks)]
    todo = [c for c in chunks if not all(t.task_id in done_tasks for t in c)]  # no bar when all are there already
    for chunk in tqdm(todo, desc=f"sampling {policy}", disable=not progress or not todo):
        new = [r for r in sample_responses(model, tokenizer, chunk, cfg.sampling, cfg.model.track, policy=policy,
                                           progress=False) if r.response_id not in done_ids]
        write_jsonl(path, new, append=True)
        done_ids.update(r.response_id for r in new)
    wanted = {t.task_id for t in tasks}
    return [r for r in read_jsonl(path, Response) if r.policy == policy and r.task_id in wanted]


def _policy_model(model, cfg: Config, name: str, run_dir: Path):
    """Context: the model sampling policy ``name``, ``base`` or an RL checkpoint ``rl/<variant>[/<checkpoint>]``
    (the paper labels samples of 4 evenly spaced checkpoints of the sparse RL run)."""
    return policy_model(model, cfg.model, policy_checkpoint(run_dir, name))


def _check_policies(cfg: Config, run_dir: Path) -> None:
    for name in cfg.labels.policies:
        ckpt = policy_checkpoint(run_dir, name)
        if ckpt is not None and not (ckpt / "policy").is_dir():
            raise MissingArtifact(f"LabelConfig.policies names {name!r}, but {ckpt} holds no policy: train it first "
                                  f"(`prmlab rl --preset {cfg.name} --variant {name.split('/')[1]} "
                                  f"--allow-execution`).")


def _execution_guard(cfg: Config, allow_execution: bool):
    if not (allow_execution or cfg.sandbox.allow_execution):
        raise ExecutionNotAllowed("Labelling executes model-generated programs: pass --allow-execution (or "
                                  "allow_execution=True) after reading docs/safety.md.")
    return dataclasses.replace(cfg.sandbox, allow_execution=True)


def run_labeling(cfg: Config, run_dir: str | Path, allow_execution: bool = False, progress: bool = True,
                 model=None, tokenizer=None, tasks: Sequence[Task] | None = None) -> LabelingResult:
    """The whole labelling stage of a run: sample (resumable), execute, label into ``run_dir/labels.jsonl``.

    ``model``/``tokenizer``/``tasks`` default to the config's (pass them to reuse what a notebook has loaded).
    Rerunning continues where a killed run stopped and gives the same labels for the same seed.
    """
    from prmlab.sandbox import Sandbox

    sandbox_cfg = _execution_guard(cfg, allow_execution)
    _check_policies(cfg, Path(run_dir))  # before anything is written: a refused run leaves no trace
    run_dir = init_run_dir(run_dir, cfg, cfg.seed)
    tasks = list(tasks) if tasks is not None else load_tasks(cfg.tasks, "train")
    model, tokenizer = _model(cfg, model, tokenizer)
    with Sandbox(sandbox_cfg, cache_dir=run_dir / "exec_cache") as sandbox:
        record_sandbox(run_dir, sandbox.provenance())
        results = []
        for policy in cfg.labels.policies:  # one policy at a time: its checkpoint is loaded into the policy adapter
            with _policy_model(model, cfg, policy, run_dir) as pm:
                responses = sample_responses_resumable(pm, tokenizer, tasks, cfg, run_dir / "responses.jsonl",
                                                       policy, progress=progress)
                results.append(label_responses(responses, {t.task_id: t for t in tasks}, cfg.labels,
                                               run_dir / "labels.jsonl", make_completer(pm, tokenizer, cfg),
                                               sandbox.run_many, progress=progress))
    return dataclasses.replace(results[-1], n_new=sum(r.n_new for r in results))


def _model(cfg: Config, model, tokenizer):
    if model is None or tokenizer is None:
        from prmlab.models import load_base_model, load_tokenizer

        tokenizer = tokenizer or load_tokenizer(cfg.model)
        model = model or load_base_model(cfg.model)
    return model, tokenizer


def relabel_failing(cfg: Config, run_dir: str | Path, label_cfg: LabelConfig, out_name: str,
                    allow_execution: bool = False, max_responses: int | None = None, progress: bool = True,
                    model=None, tokenizer=None, tasks: Sequence[Task] | None = None) -> LabelingResult:
    """Label the failing responses of ``run_dir/labels.jsonl`` again with ``label_cfg`` into ``run_dir/out_name``.

    The same responses (the first ``max_responses`` failing ones, in ``responses.jsonl`` order) and the same
    completer as the original labels, resumably, so :mod:`prmlab.labels.stats` can compare two labelling methods or
    search strategies on identical inputs. The cost summary goes beside it (``<out_name stem>_cost.json``).
    """
    from prmlab.records import LineLabels
    from prmlab.sandbox import Sandbox

    sandbox_cfg = _execution_guard(cfg, allow_execution)
    run_dir = Path(run_dir)
    failing = {r.response_id for r in read_jsonl(run_dir / "labels.jsonl", LineLabels) if r.category != "correct"}
    responses = [r for r in read_jsonl(run_dir / "responses.jsonl", Response) if r.response_id in failing]
    responses = responses[:max_responses] if max_responses else responses
    tasks = list(tasks) if tasks is not None else load_tasks(cfg.tasks, "train")
    model, tokenizer = _model(cfg, model, tokenizer)
    results = []
    with Sandbox(sandbox_cfg, cache_dir=run_dir / "exec_cache") as sandbox:
        for policy in cfg.labels.policies:
            with _policy_model(model, cfg, policy, run_dir) as pm:
                mine = [r for r in responses if r.policy == policy]
                results.append(label_responses(mine, {t.task_id: t for t in tasks}, label_cfg, run_dir / out_name,
                                               make_completer(pm, tokenizer, cfg), sandbox.run_many,
                                               progress=progress))
    return dataclasses.replace(results[-1], n_new=sum(r.n_new for r in results))


def run_mc_comparison(cfg: Config, run_dir: str | Path, allow_execution: bool = False, max_responses: int | None = None,
                      progress: bool = True, model=None, tokenizer=None,
                      tasks: Sequence[Task] | None = None) -> LabelingResult:
    """Monte-Carlo labels (K completions at every line) of the failing responses of ``run_dir/labels.jsonl``.

    Writes ``labels_mc.jsonl`` (and ``labels_mc_cost.json``) beside the binary-search labels, resumably, so
    :mod:`prmlab.labels.stats` can compare the two on the same responses. ``max_responses`` caps the cost.
    """
    return relabel_failing(cfg, run_dir, dataclasses.replace(cfg.labels, method="mc"), "labels_mc.jsonl",
                           allow_execution, max_responses, progress, model, tokenizer, tasks)


@dataclass
class ModelOracle:
    """The best-of-K oracle of one response, callable as ``oracle(m)`` on its m-th code line, recording each check.

    For stepping through a binary search by hand (notebook 01). Each check is the driver's own round
    (:func:`prmlab.labels.driver.run_oracles` with the driver's check seed), so a search stepped by hand gives the
    same labels as :func:`run_labeling` for the same seed. ``log`` holds one dict per check: the prefix length in
    steps and lines, the prefix text, the completions tried and whether each passed.
    """

    response: Response
    task: Task
    complete: Complete
    run_many: RunMany
    cfg: LabelConfig
    log: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.item = LabelItem(self.response, self.task, *response_lines(self.response.completion), passed=False)
        self.lines, self.neutral, self.steps = self.item.lines, self.item.neutral, self.item.steps

    @property
    def T(self) -> int:
        """Number of code lines (steps) binary search runs over."""
        return len(self.steps)

    def __call__(self, m: int) -> bool:
        m_lines = self.steps[m - 1] if m else 0
        prefix = prefix_text(self.response.completion, self.lines, m_lines)
        state = BestOfK(self.cfg.k, self.cfg.chunk, self.cfg.early_stop)
        seed = check_seed(self.cfg.seed, self.response.response_id, m_lines)
        tried = run_oracles([state], [(self.task, prefix)], [self.item], self.complete, self.run_many,
                            default_program, [seed])[0]
        self.log.append({"m_steps": m, "m_lines": m_lines, "prefix": prefix, "tried": tried,
                         "recoverable": state.recoverable})
        return state.recoverable
