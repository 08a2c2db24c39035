"""The toy-coder's training corpus: reference solutions with the realistic noise the toy-coder should imitate.

The toy-coder learns *how people write* these programs, mistakes included, so that sampling it at temperature 1.0
gives a policy whose pass rate falls with length. Each step of a task is written by this generative story:

* line 1 is *misread* with probability ``misread_rate`` (a wrong argument or operator: "wrong from the start");
* otherwise step k (0-based) goes wrong with probability  p_k = mistake_rate + mistake_growth * k
  (later lines are harder: the docstring sentence they implement is further back), and the mistake is a
    - **slip** (share ``slip_share``): a wrong operator, operand or constant, or ``/`` for ``//``; with
      probability ``fix_rate`` the very next line re-assigns the variable correctly (a *recoverable* mistake),
    - **clobber** (share ``clobber_share``): the result overwrites a variable still needed later (unrecoverable),
    - **early return** (the rest): ``return`` at a step that is not the last (unrecoverable);
* with probability ``comment_rate`` a sample gets one comment line, with ``noop_rate`` one no-op line
  (``pass`` or ``x = x``), so the two reward hacks of the paper can appear under RL.

Without model error, a program of L lines passes with probability about
  (1 - misread_rate) * prod_k (1 - p_k * (1 - slip_share * fix_rate)).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from prmlab.records import Task
from prmlab.tasks.toy import ARGS, OPS, Step, generate_tasks, steps_of

SWAPS: dict[str, tuple[str, ...]] = {
    "add": ("sub", "mul"), "sub": ("add",), "mul": ("add",), "floordiv": ("mod",), "mod": ("floordiv",),
    "max": ("min",), "min": ("max",), "abs": (),
}
"""Operators a slip may confuse a step's operator with."""


@dataclass(frozen=True)
class ToyCorpusConfig:
    """The toy-coder's pretraining corpus and its noise model (see the module docstring)."""

    n_samples: int = 40000
    """Number of (prompt, noisy solution) samples; each uses a fresh ``pretrain``-split task. [I]"""
    seed: int = 0
    """Seed of the pretraining tasks and of the noise. [I]"""
    min_lines: int = 2
    """Shortest program in the corpus. [I]"""
    max_lines: int = 12
    """Longest program in the corpus. [I]"""
    misread_rate: float = 0.06
    """Probability that line 1 misreads the task (wrong argument or operator, never fixed). [I]"""
    mistake_rate: float = 0.10
    """Probability of a mistake at step 0 (after no misread). [I]"""
    mistake_growth: float = 0.035
    """Increase of the mistake probability per later step. [I]"""
    slip_share: float = 0.6
    """Share of mistakes that are slips (wrong operator/operand/constant, or ``/``). [I]"""
    clobber_share: float = 0.2
    """Share of mistakes that overwrite a variable needed later; the rest are early returns. [I]"""
    fix_rate: float = 0.4
    """Probability that a slip is immediately followed by the correct re-assignment (recoverable). [I]"""
    comment_rate: float = 0.04
    """Probability that a sample contains one comment line. [I]"""
    noop_rate: float = 0.04
    """Probability that a sample contains one no-op line (``pass`` or ``x = x``). [I]"""

    def __post_init__(self) -> None:
        for name in ("misread_rate", "mistake_rate", "slip_share", "clobber_share", "fix_rate", "comment_rate",
                     "noop_rate"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"ToyCorpusConfig.{name} must be in [0, 1], got {v!r}")
        if self.slip_share + self.clobber_share > 1:
            raise ValueError("ToyCorpusConfig.slip_share + clobber_share must be <= 1")
        if self.n_samples <= 0 or not 2 <= self.min_lines <= self.max_lines:
            raise ValueError("ToyCorpusConfig needs n_samples > 0 and 2 <= min_lines <= max_lines")


def _names_before(steps: list[Step], k: int, n_args: int, rename: dict[str, str]) -> list[str]:
    return list(ARGS[:n_args]) + [rename.get(s.target, s.target) for s in steps[:k]]


def _renamed(s: Step, rename: dict[str, str]) -> Step:
    y = rename.get(s.y, s.y) if isinstance(s.y, str) else s.y
    return Step(s.target, s.kind, rename.get(s.x, s.x), y)


def _with_expr(s: Step, expr: str) -> str:
    return f"return {expr}" if s.target == "return" else f"{s.target} = {expr}"


def slip_line(rng: random.Random, s: Step, names: list[str]) -> str:
    """A plausible wrong statement for step ``s``: wrong operator, operand or constant, or ``/`` for ``//``."""
    options = []
    for kind in SWAPS[s.kind]:
        if OPS[kind][0] == OPS[s.kind][0]:
            options.append(_with_expr(s, Step(s.target, kind, s.x, s.y).expr()))
    if s.kind == "floordiv":
        options += [_with_expr(s, f"{s.x} / {s.y}")] * 2  # the natural type error
    for attr in ("x", "y"):
        v = getattr(s, attr)
        if isinstance(v, str):
            others = [n for n in names if n not in (s.x, s.y)]
            if others:
                options.append(_with_expr(s, dataclasses.replace(s, **{attr: rng.choice(others)}).expr()))
        elif isinstance(v, int):
            w = v + rng.choice((-1, 1)) if v > 2 or (v == 2 and s.kind not in ("floordiv", "mod")) else v + 1
            options.append(_with_expr(s, Step(s.target, s.kind, s.x, max(w, 1)).expr()))
    options = [o for o in options if o != s.code()]
    return rng.choice(options) if options else _with_expr(s, f"{s.expr()} + 1")


def _clobber_victim(rng: random.Random, steps: list[Step], k: int, rename: dict[str, str]) -> str | None:
    """An operand of step k (as written) that later steps still read, or None."""
    later = {o for s in steps[k + 1:] for o in (s.x, s.y) if isinstance(o, str)}
    cands = [o for o in (steps[k].x, steps[k].y) if isinstance(o, str) and o in later]
    return rename.get(c := rng.choice(cands), c) if cands else None


def noisy_lines(rng: random.Random, task: Task, cfg: ToyCorpusConfig) -> tuple[list[str], list[list]]:
    """The (unindented) lines of one noisy solution and its events ``[line_index, kind]``.

    Event kinds: ``misread``, ``slip``, ``fix``, ``clobber``, ``early_return``, ``comment``, ``noop``.
    """
    steps, n_args = steps_of(task), task.meta["n_args"]
    lines: list[str] = []
    events: list[list] = []
    rename: dict[str, str] = {}
    for k, step in enumerate(steps):
        s = _renamed(step, rename)
        names = _names_before(steps, k, n_args, rename)
        last = s.target == "return"
        if k == 0 and rng.random() < cfg.misread_rate:
            events.append([len(lines), "misread"])
            lines.append(slip_line(rng, s, names))
            continue
        if rng.random() >= cfg.mistake_rate + cfg.mistake_growth * k:
            lines.append(s.code())
            continue
        u = rng.random()
        victim = None if last else _clobber_victim(rng, steps, k, rename)
        if u < cfg.slip_share or last or (u < cfg.slip_share + cfg.clobber_share and victim is None):
            events.append([len(lines), "slip"])
            lines.append(slip_line(rng, s, names))
            if not last and rng.random() < cfg.fix_rate:
                events.append([len(lines), "fix"])
                lines.append(s.code())
        elif u < cfg.slip_share + cfg.clobber_share:
            events.append([len(lines), "clobber"])
            lines.append(f"{victim} = {s.expr()}")
            rename[step.target] = victim
        else:
            events.append([len(lines), "early_return"])
            lines.append(f"return {s.expr()}")
            break
    _add_extras(rng, lines, events, cfg)
    return lines, events


def _add_extras(rng: random.Random, lines: list[str], events: list[list], cfg: ToyCorpusConfig) -> None:
    """Insert at most one comment line and one no-op line (in place), shifting event indices."""
    def insert(at: int, text: str, kind: str) -> None:
        for e in events:
            e[0] += e[0] >= at
        lines.insert(at, text)
        events.append([at, kind])

    if rng.random() < cfg.comment_rate:
        at = rng.randrange(len(lines))
        words = lines[at].split(" ")
        what = "the result" if words[0] == "return" else words[0]
        insert(at, rng.choice((f"# compute {what}", f"# step {at + 1}", f"# now {what}", "# TODO: check this")),
               "comment")
    assigned = [ln.split(" = ")[0] for ln in lines[:-1] if " = " in ln and not ln.startswith("#")]
    if rng.random() < cfg.noop_rate and len(lines) > 1:
        at = rng.randrange(1, len(lines))
        prev = [v for v in assigned if v in " ".join(lines[:at])]
        insert(at, f"{rng.choice(prev)} = {rng.choice(prev)}" if prev and rng.random() < 0.5 else "pass", "noop")
    if events and events[-1][1] == "noop" and " = " in lines[events[-1][0]]:
        v = lines[events[-1][0]].split(" = ")[0]
        lines[events[-1][0]] = f"{v} = {v}"  # x = x, never x = y


def indent(lines: list[str]) -> str:
    """The completion text: each line indented by 4 spaces and terminated by a newline."""
    return "".join(f"    {ln}\n" for ln in lines)


def corpus_samples(cfg: ToyCorpusConfig) -> list[dict]:
    """``cfg.n_samples`` dicts ``{task, completion, events}`` over fresh pretrain tasks, deterministic."""
    tasks = generate_tasks(cfg.n_samples, "pretrain", seed=cfg.seed, min_lines=cfg.min_lines,
                           max_lines=cfg.max_lines)
    rng = random.Random(f"prmlab-toy-corpus:{cfg.seed}")
    out = []
    for task in tasks:
        lines, events = noisy_lines(rng, task, cfg)
        out.append({"task": task, "completion": indent(lines), "events": events})
    return out


def run_trusted(program: str, task: Task) -> bool:
    """Run a *trusted* program (our own generated corpus, never model output) in-process against the tests.

    Only for calibrating and testing the corpus; model samples go through :mod:`prmlab.sandbox`.
    """
    for test in task.tests:
        env: dict = {}
        try:
            exec(compile(program, "<toy>", "exec"), env)  # noqa: S102 - our own generated code
            exec(compile(test, "<test>", "exec"), env)  # noqa: S102
        except Exception:  # noqa: BLE001 - any error is a failure
            return False
    return True
