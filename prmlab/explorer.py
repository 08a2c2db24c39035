"""The per-line reward explorer: pick a configuration, a training step and a task; see the programs sampled for it,
every line coloured by the PRM's score, next to its label and the test outcome.

    explorer(run_dir) -> ipywidgets.Widget       one call (notebook 04); ``.explorer`` on it is the :class:`Explorer`

Where the programs of a policy come from (a run directory as the pipeline leaves it, ``runs/<preset>/``):

    responses.jsonl + labels.jsonl                        the labelling samples (train tasks) of the policies in
                                                          ``LabelConfig.policies``; outcome = the label category
                                                          (``correct`` passed all tests), labels per line
    eval/<policy>.samples.jsonl + eval/<policy>.json      held-out samples of ``prmlab eval --policy ...``;
                                                          outcome = ``EvalResult.passed[response_id]``

A policy is ``base``, ``rl/<variant>`` (the run's last checkpoint) or ``rl/<variant>/rl-25`` .. ``rl-100`` (the
kept checkpoints, at 25 .. 100 % of the iterations; :func:`prmlab.rl.stage.kept_checkpoints`). Scores come from
``run_dir/prm`` (:func:`prmlab.prm.model.load_prm`), computed on demand and cached per (policy, task), so going
back to a view is instant.

The pure parts (which policies and samples exist, joining verdicts, labels and scores, the HTML of a view) are plain
functions; :class:`Explorer` only wires three dropdowns to them. :func:`write_demo_run` writes a small synthetic run
directory (no execution, an untrained PRM) for tests and demos.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prmlab.lines import split_lines
from prmlab.plots import COLORS, line_view_html
from prmlab.records import LineLabels, LineScores, Response, Task, read_jsonl

Scorer = Callable[[Sequence[tuple[str, str]], Sequence[tuple[str, str]]], list[LineScores]]
"""``(programs, ids) -> LineScores`` like :meth:`prmlab.prm.model.PRM.score` with ``ids=``."""

LAST = "last"


@dataclass(frozen=True)
class Sample:
    """One program of a policy for a task, with what the run knows about it."""

    response: Response
    source: str
    """``labelling`` (responses.jsonl) or ``eval`` (eval/<policy>.samples.jsonl)."""
    passed: bool | None
    """The test outcome; None when the run never executed it."""
    labels: LineLabels | None = None


# ----------------------------------------------------------------------------------------------------------------
# pure: policies and steps


def file_stem(policy: str) -> str:
    """``rl/sparse/rl-25`` -> ``rl-sparse-rl-25`` (as :func:`prmlab.evaluation.stage.file_stem`)."""
    return policy.replace("/", "-")


def checkpoint_order(name: str) -> tuple[int, str]:
    """Sort key of checkpoint names: ``rl-25`` < ``rl-50`` < ``rl-100`` < ``last``."""
    m = re.fullmatch(r"rl-(\d+)", name)
    return (int(m.group(1)), name) if m else (10**9, name)


def rl_variants(run_dir: str | Path) -> list[str]:
    """The RL variants of a run: the directories under ``run_dir/rl`` (sorted)."""
    rl = Path(run_dir) / "rl"
    return sorted(p.name for p in rl.iterdir() if p.is_dir()) if rl.is_dir() else []


def kept_checkpoint_names(run_dir: str | Path, variant: str) -> list[str]:
    """The kept checkpoints of an RL variant (``rl-25`` ...), in training order; ``last`` is not among them."""
    ck = Path(run_dir) / "rl" / variant / "checkpoints"
    names = [p.name for p in ck.iterdir() if p.is_dir() and p.name != LAST] if ck.is_dir() else []
    return sorted(names, key=checkpoint_order)


def configurations(run_dir: str | Path, extra: Sequence[str] = ()) -> list[str]:
    """``base`` and ``rl/<variant>`` for every RL variant, plus configurations only named by ``extra`` policies."""
    out = ["base"] + [f"rl/{v}" for v in rl_variants(run_dir)]
    for p in extra:
        c = configuration_of(p)
        if c not in out:
            out.append(c)
    return out


def configuration_of(policy: str) -> str:
    """``rl/sparse/rl-25`` -> ``rl/sparse``; ``base`` and ``rl/sparse`` are their own configuration."""
    parts = policy.split("/")
    return "/".join(parts[:2]) if parts[0] == "rl" else policy


def steps(configuration: str, checkpoints: Sequence[str], iterations: Mapping[str, int] | None = None
          ) -> list[tuple[str, str]]:
    """The ``(label, policy)`` choices of a configuration's training step: the kept checkpoints in order, then the
    last one (the policy ``rl/<variant>`` itself); ``base`` has one step, itself."""
    if configuration == "base" or not configuration.startswith("rl/"):
        return [("base model (step 0)" if configuration == "base" else configuration, configuration)]
    iterations = iterations or {}
    out = []
    for name in sorted(checkpoints, key=checkpoint_order):
        it = iterations.get(name)
        out.append((f"{name} (iteration {it})" if it is not None else name, f"{configuration}/{name}"))
    last = iterations.get(LAST)
    out.append((f"last (iteration {last})" if last is not None else "last", configuration))
    return out


def checkpoint_iterations(run_dir: str | Path, variant: str) -> dict[str, int]:
    """Checkpoint name -> PPO iteration it was saved at, from the variant's config (``last``: the metrics rows)."""
    from prmlab.config import load_config
    from prmlab.rl.stage import kept_checkpoints

    out_dir = Path(run_dir) / "rl" / variant
    out: dict[str, int] = {}
    try:
        out = {name: it for it, name in kept_checkpoints(load_config(out_dir / "config.json").rl).items()}
    except Exception:  # noqa: BLE001  a run without (or with an older) config.json: names without iterations
        pass
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        rows = read_jsonl(metrics, repair_tail=True)
        if rows:
            out[LAST] = int(rows[-1].get("iteration", len(rows)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# pure: samples, verdicts, labels and scores


def outcome(response_id: str, verdicts: Mapping[str, bool], labels: LineLabels | None) -> bool | None:
    """The test outcome of a response: the evaluation's verdict, else the label category (``correct`` is the one
    that passed every test), else None (never executed)."""
    if response_id in verdicts:
        return bool(verdicts[response_id])
    if labels is not None:
        return labels.category == "correct"
    return None


def join_samples(responses: Sequence[Response], source: str, verdicts: Mapping[str, bool],
                 labels: Mapping[str, LineLabels]) -> list[Sample]:
    """Responses with their outcome and labels (by response id), in order."""
    return [Sample(r, source, outcome(r.response_id, verdicts, labels.get(r.response_id)), labels.get(r.response_id))
            for r in responses]


def samples_by_task(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by task id, tasks in first-seen order."""
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.response.task_id, []).append(s)
    return out


def with_labels(scores: LineScores, labels: LineLabels | None) -> LineScores:
    """The scores with the response's line labels attached, when they are labels of the same lines."""
    if labels is None or tuple(labels.completions) != tuple(scores.lines):
        return scores
    return dataclasses.replace(scores, labels=tuple(labels.labels))


def unscored(sample: Sample) -> LineScores:
    """A sample's lines with NaN scores (shown grey): the view when the run has no PRM."""
    r = sample.response
    lines = tuple(split_lines(r.completion))
    return LineScores(r.task_id, r.response_id, lines, (float("nan"),) * len(lines))


def outcome_text(passed: bool | None) -> str:
    return {True: "passed", False: "failed", None: "not executed"}[passed]


def sample_title(sample: Sample) -> str:
    """The caption of a sample's line view: what labelling found (``labelled revised: unrecoverable from line 3``),
    or ``not labelled``."""
    lab = sample.labels
    if lab is None:
        return "not labelled"
    if lab.category != "correct" and lab.last_recoverable >= 0:
        return f"labelled {lab.category}: unrecoverable from line {lab.last_recoverable + 1}"
    return f"labelled {lab.category}"


def task_label(task_id: str, samples: Sequence[Sample], task: Task | None = None) -> str:
    """A task dropdown entry: id, split and reference length when known, and how many of its samples passed."""
    known = [s.passed for s in samples if s.passed is not None]
    bits = []
    if task is not None:
        bits.append(f"{task.split}, {task.n_lines} lines" if task.n_lines else task.split)
    bits.append(f"{sum(known)}/{len(known)} passed" if known else f"{len(samples)} not executed")
    return f"{task_id} ({'; '.join(bits)})"


def view_html(policy: str, task_id: str, samples: Sequence[Sample], scores: Sequence[LineScores],
              task: Task | None = None, note: str = "") -> str:
    """The explorer's view of one (policy, task): a summary line, the prompt, then each sample's line view
    (scores and labels coloured with :mod:`prmlab.plots`' palette) under a badge with its test outcome."""
    known = [s.passed for s in samples if s.passed is not None]
    summary = f"{len(samples)} sample(s) of <b>{html.escape(policy)}</b> for <b>{html.escape(task_id)}</b>"
    if known:
        summary += f": {sum(known)} of {len(known)} passed the tests"
    parts = [f'<div class="prmlab-explorer-summary" style="margin:4px 0">{summary}</div>']
    if note:
        parts.append(f'<div class="prmlab-explorer-note" style="color:#a15c00;margin:4px 0">{html.escape(note)}</div>')
    if task is not None:
        parts.append('<pre style="color:#888;margin:4px 0;font-size:12px">' + html.escape(task.prompt) + "</pre>")
    cells = []
    for s, sc in zip(samples, scores, strict=True):
        colour = {True: COLORS["correct"], False: COLORS["wrong"], None: COLORS[0.0]}[s.passed]
        badge = (f'<span class="prmlab-outcome" data-passed="{str(s.passed).lower()}" style="background:{colour};'
                 f'color:white;border-radius:3px;padding:0 6px;font-size:12px">{outcome_text(s.passed)}</span>')
        cells.append(f'<div class="prmlab-explorer-sample" style="margin:0 24px 12px 0">{badge} '
                     f'<span style="font-size:11px;color:#666">{html.escape(s.source)} · '
                     f'{html.escape(s.response.response_id)}</span>'
                     f'{line_view_html(sc, title=sample_title(s))}</div>')
    parts.append('<div style="display:flex;flex-wrap:wrap;align-items:flex-start">' + "".join(cells) + "</div>")
    return '<div class="prmlab-explorer-view">' + "".join(parts) + "</div>"


# ----------------------------------------------------------------------------------------------------------------
# the run directory's files


class RunData:
    """What a run directory holds for the explorer, read lazily; PRM scores cached per (policy, task).

    ``scorer`` replaces the run's PRM (e.g. a fake in tests): ``(programs, ids) -> list[LineScores]``.
    """

    def __init__(self, run_dir: str | Path, scorer: Scorer | None = None, max_samples: int = 10):
        self.run_dir = Path(run_dir)
        self.max_samples = max_samples
        self._scorer = scorer
        self._prm: Any = None
        self._samples: dict[str, dict[str, list[Sample]]] = {}
        self._scores: dict[tuple[str, str], list[LineScores]] = {}
        self._labels: dict[str, LineLabels] | None = None
        self._responses: list[Response] | None = None
        self._tasks: dict[str, Task] | None = None
        self.scored = 0
        """How many (policy, task) views were scored (the rest came from the cache)."""

    # files
    def labels(self) -> dict[str, LineLabels]:
        if self._labels is None:
            path = self.run_dir / "labels.jsonl"
            self._labels = {r.response_id: r for r in read_jsonl(path, LineLabels, repair_tail=True)} if path.exists() else {}
        return self._labels

    def responses(self) -> list[Response]:
        if self._responses is None:
            path = self.run_dir / "responses.jsonl"
            self._responses = read_jsonl(path, Response, repair_tail=True) if path.exists() else []
        return self._responses

    def verdicts(self, policy: str) -> dict[str, bool]:
        path = self.run_dir / "eval" / f"{file_stem(policy)}.json"
        return {k: bool(v) for k, v in json.loads(path.read_text(encoding="utf-8")).get("passed", {}).items()} \
            if path.exists() else {}

    def tasks(self) -> dict[str, Task]:
        """Train and eval tasks of the run's config by id ({} when the config cannot be read)."""
        if self._tasks is None:
            self._tasks = {}
            try:
                from prmlab.config import load_config
                from prmlab.tasks import load_tasks

                cfg = load_config(self.run_dir / "config.json")
                for split in ("train", "eval"):
                    self._tasks.update({t.task_id: t for t in load_tasks(cfg.tasks, split)})
            except Exception:  # noqa: BLE001  prompts then come from the responses themselves
                pass
        return self._tasks

    def eval_policies(self) -> list[str]:
        """Policies with an evaluation in ``eval/`` (read from each result's ``policy`` field)."""
        out = []
        for path in sorted((self.run_dir / "eval").glob("*.json")):
            try:
                policy = json.loads(path.read_text(encoding="utf-8")).get("policy")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(policy, str):
                out.append(policy)
        return out

    def policies_with_samples(self) -> list[str]:
        seen = dict.fromkeys([r.policy for r in self.responses()] + self.eval_policies())
        return list(seen)

    # samples and scores
    def samples(self, policy: str) -> dict[str, list[Sample]]:
        """Task id -> the policy's samples (labelling ones first, then evaluation ones; at most ``max_samples``)."""
        if policy not in self._samples:
            labels = self.labels()
            mine = [r for r in self.responses() if r.policy == policy]
            found = join_samples(mine, "labelling", {}, labels)
            path = self.run_dir / "eval" / f"{file_stem(policy)}.samples.jsonl"
            if path.exists():
                found += join_samples(read_jsonl(path, Response, repair_tail=True), "eval", self.verdicts(policy), labels)
            self._samples[policy] = {t: s[:self.max_samples] for t, s in samples_by_task(found).items()}
        return self._samples[policy]

    def has_prm(self) -> bool:
        return self._scorer is not None or (self.run_dir / "prm" / "config.json").exists()

    def scorer(self) -> Scorer | None:
        if self._scorer is None and (self.run_dir / "prm" / "config.json").exists():
            from prmlab.prm.model import load_prm

            self._prm = load_prm(self.run_dir / "prm")
            self._scorer = lambda programs, ids: self._prm.score(programs, ids=ids)
        return self._scorer

    def scores(self, policy: str, task_id: str) -> list[LineScores]:
        """Per-line scores (labels attached) of the policy's samples for a task; cached."""
        key = (policy, task_id)
        if key not in self._scores:
            samples = self.samples(policy).get(task_id, [])
            scorer = self.scorer()
            if scorer is None or not samples:
                out = [with_labels(unscored(s), s.labels) for s in samples]
            else:
                task = self.tasks().get(task_id)
                programs = [(task.prompt if task is not None else s.response.prompt, s.response.completion)
                            for s in samples]
                raw = scorer(programs, [(s.response.task_id, s.response.response_id) for s in samples])
                out = [with_labels(sc, s.labels) for sc, s in zip(raw, samples, strict=True)]
                self.scored += 1
            self._scores[key] = out
        return self._scores[key]


# ----------------------------------------------------------------------------------------------------------------
# the widget


class Explorer:
    """Three dropdowns (configuration, training step, task) over :class:`RunData`, and an HTML view.

    ``widget`` is what a notebook displays; ``select(configuration=..., step=..., task=...)`` drives it from code.
    """

    def __init__(self, run_dir: str | Path, scorer: Scorer | None = None, max_samples: int = 10):
        import ipywidgets as w

        self.data = RunData(run_dir, scorer=scorer, max_samples=max_samples)
        configs = configurations(self.data.run_dir, self.data.policies_with_samples())
        wide = w.Layout(width="520px")
        style = {"description_width": "100px"}
        self.configuration = w.Dropdown(options=configs, value=configs[0], description="configuration",
                                        layout=wide, style=style)
        self.step = w.Dropdown(description="training step", layout=wide, style=style)
        self.task = w.Dropdown(description="task", layout=wide, style=style)
        self.status = w.HTML()
        self.view = w.HTML()
        for control, cls in ((self.configuration, "prmlab-configuration"), (self.step, "prmlab-step"),
                             (self.task, "prmlab-task")):
            control.add_class(cls)
        self.view.add_class("prmlab-view")
        self.status.add_class("prmlab-status")
        self.widget = w.VBox([self.configuration, self.step, self.task, self.status, self.view])
        self.widget.add_class("prmlab-explorer")
        self.widget.explorer = self
        self._busy = False
        self.configuration.observe(self._on_configuration, names="value")
        self.step.observe(self._on_step, names="value")
        self.task.observe(self._on_task, names="value")
        self._on_configuration()

    @property
    def policy(self) -> str:
        return self.step.value or self.configuration.value

    def _on_configuration(self, _change=None) -> None:
        config = self.configuration.value
        variant = config.split("/")[1] if config.startswith("rl/") else ""
        names = kept_checkpoint_names(self.data.run_dir, variant) if variant else []
        iters = checkpoint_iterations(self.data.run_dir, variant) if variant else {}
        options = steps(config, names, iters)
        with_samples = [p for _, p in options if self.data.samples(p)]
        self._busy = True
        self.step.options = options
        self.step.value = with_samples[-1] if with_samples else options[-1][1]
        self._busy = False
        self._on_step()

    def _on_step(self, _change=None) -> None:
        if self._busy:
            return
        samples = self.data.samples(self.policy)
        tasks = self.data.tasks()
        options = [(task_label(t, s, tasks.get(t)), t) for t, s in samples.items()]
        previous = self.task.value
        self._busy = True
        self.task.options = options
        self.task.value = previous if previous in samples else (options[0][1] if options else None)
        self._busy = False
        self._on_task()

    def _on_task(self, _change=None) -> None:
        if self._busy:
            return
        policy, task_id = self.policy, self.task.value
        if task_id is None:
            stem = file_stem(policy)
            self.status.value = (f"<i>No samples of {html.escape(policy)} in this run: evaluate it with "
                                 f"<code>prmlab eval --policy {html.escape(policy)} --allow-execution</code> "
                                 f"(writes eval/{html.escape(stem)}.samples.jsonl).</i>")
            self.view.value = ""
            return
        cached = (policy, task_id) in self.data._scores
        if not cached:
            self.status.value = f"<i>scoring {html.escape(task_id)} with the PRM ...</i>"
        samples = self.data.samples(policy)[task_id]
        scores = self.data.scores(policy, task_id)
        note = "" if self.data.has_prm() else "This run has no PRM (prm/): scores are not shown, labels are."
        self.view.value = view_html(policy, task_id, samples, scores, self.data.tasks().get(task_id), note)
        self.status.value = f"policy <code>{html.escape(policy)}</code>" + (" (cached scores)" if cached else "")

    def select(self, configuration: str | None = None, step: str | None = None, task: str | None = None) -> str:
        """Set controls from code (a step is its policy, e.g. ``rl/sparse/rl-50``); returns the view's HTML."""
        if configuration is not None:
            self.configuration.value = configuration
        if step is not None:
            self.step.value = step
        if task is not None:
            self.task.value = task
        return self.view.value


def explorer(run_dir: str | Path, scorer: Scorer | None = None, max_samples: int = 10):
    """The per-line reward explorer of a run directory, as one displayable ipywidgets widget
    (its :class:`Explorer` is ``widget.explorer``)."""
    return Explorer(run_dir, scorer=scorer, max_samples=max_samples).widget


# ----------------------------------------------------------------------------------------------------------------
# a small synthetic run (tests, demos)


def write_demo_run(run_dir: str | Path, n_tasks: int = 3, n_samples: int = 3, seed: int = 0,
                   prm: bool = True) -> Path:
    """A small run directory shaped like the pipeline's, without executing anything: ``n_tasks`` toy train and eval
    tasks; per task ``n_samples`` base responses (the reference, then broken copies) labelled in ``labels.jsonl``;
    base and ``rl/demo`` evaluation samples with verdicts (a reference passes, a broken copy fails); an ``rl/demo``
    variant with kept checkpoints ``rl-50``, ``rl-100`` (the ``rl-50`` one evaluated too); and with ``prm`` an
    *untrained* PRM on the toy-coder (a random head, so the colours vary; its scores mean nothing).
    """
    from prmlab.config import preset
    from prmlab.records import write_jsonl
    from prmlab.runs import init_run_dir
    from prmlab.tasks import load_tasks

    cfg = preset("tiny", seed=seed).replace(tasks={"n_train": n_tasks, "n_eval": n_tasks, "max_lines": 5},
                                            rl={"iterations": 4, "keep_checkpoints": 2})
    run_dir = init_run_dir(run_dir, cfg, seed)

    def programs(task: Task, policy: str, tag: str) -> list[tuple[Response, bool, list[float]]]:
        out = []
        ref = split_lines(task.reference)
        for j in range(n_samples):
            lines = list(ref)
            if j:  # broken copy: line j-1 (mod len) returns a wrong value from there on
                k = (j - 1) % len(lines)
                if lines[k].lstrip().startswith("return") or " = " in lines[k]:
                    lines[k] = lines[k].rstrip() + " + 1"
            completion = "".join(line + "\n" for line in lines)
            rid = f"{task.task_id}/{policy}/{tag}/{j}"
            labels = [1.0] * len(lines) if not j else [1.0 if i < (j - 1) % len(lines) else -1.0
                                                       for i in range(len(lines))]
            out.append((Response(task.task_id, rid, task.prompt, completion, task.prompt + completion, policy),
                        j == 0, labels))
        return out

    responses, labels = [], []
    for task in load_tasks(cfg.tasks, "train"):
        for r, ok, lab in programs(task, "base", "0"):
            responses.append(r)
            first_bad = lab.index(-1.0) if -1.0 in lab else len(lab)
            labels.append(LineLabels(r.prompt, tuple(split_lines(r.completion)), tuple(lab), r.task_id,
                                     r.response_id, "correct" if ok else ("revised" if first_bad else "wrong"),
                                     last_recoverable=first_bad))
    write_jsonl(run_dir / "responses.jsonl", responses)
    write_jsonl(run_dir / "labels.jsonl", labels)

    eval_tasks = load_tasks(cfg.tasks, "eval")
    for policy in ("base", "rl/demo", "rl/demo/rl-50"):
        rows = [x for t in eval_tasks for x in programs(t, policy, "eval")]
        write_jsonl(run_dir / "eval" / f"{file_stem(policy)}.samples.jsonl", [r for r, _, _ in rows])
        result = {"policy": policy, "passed": {r.response_id: ok for r, ok, _ in rows}}
        (run_dir / "eval" / f"{file_stem(policy)}.json").write_text(json.dumps(result, indent=2) + "\n")

    rl_dir = run_dir / "rl" / "demo"
    for name in ("last", "rl-50", "rl-100"):
        (rl_dir / "checkpoints" / name).mkdir(parents=True, exist_ok=True)
    cfg.save(rl_dir / "config.json")
    write_jsonl(rl_dir / "metrics.jsonl", [{"iteration": i, "pass_rate": 0.1 * i} for i in range(1, 5)])

    if prm:
        import torch

        from prmlab.prm.model import new_prm, save_prm

        p = new_prm(cfg.model, seed=seed)
        torch.manual_seed(seed)
        with torch.no_grad():  # an untrained head with visible spread (hidden states are O(1) per dimension)
            p.head.linear.weight.normal_(0.0, 0.35 / p.head.linear.in_features ** 0.5)
        save_prm(p, run_dir / "prm", {"model": dataclasses.asdict(cfg.model), "demo": "untrained, random head"})
    return run_dir
