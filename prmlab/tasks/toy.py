"""The toy world: procedurally generated straight-line integer functions with hidden, type-checked unit tests.

A task with L lines has L - 1 steps ``Let <var> be <expression>.`` and a final ``Return <expression>.``; the
reference solution writes exactly one statement per step, 4-space indented::

    def f(a, b):
        \"\"\"Let d be a plus b.
        Let e be d divided by 2, rounded down.
        Return e minus a.
        \"\"\"
        d = a + b
        e = d // 2
        return e - a

Every step uses the previous step's variable, so every line is live; a task is kept only if adding 1 to any
line's value changes the output on some test input (so a corrupted line is caught by the tests). Divisors are
constants >= 2, so no input can divide by zero. Tests compare exact value *and* type (``type(_out) is int``), so
``/`` for ``//`` fails and an object whose ``__eq__`` always returns True never passes.

Splits are disjoint by construction: a task's split is a hash bucket of its canonical content (``eval`` 20 %,
``train`` 20 %, ``pretrain`` 60 %), and the generator rejects candidates whose bucket belongs to another split, so
whatever the seeds, an eval task never appears in the train split or in the toy-coder's pretraining corpus.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from prmlab.config import TaskConfig
from prmlab.records import Task

ARGS: tuple[str, ...] = ("a", "b", "c")
VARS: tuple[str, ...] = ("d", "e", "g", "h", "k", "m", "n", "p", "q", "r", "s", "t", "u", "v", "w")
"""Names of step variables, in order (no ``f``: the entry point; no ``i, j, l, o``)."""
SPLITS: dict[str, tuple[int, int]] = {"eval": (0, 20), "train": (20, 40), "pretrain": (40, 100)}
"""Hash-bucket range [lo, hi) out of 100 owned by each split."""
ENTRY_POINT = "f"
MAX_ABS_VALUE = 10**6
"""Candidates whose intermediate values exceed this on a test input are rejected (keeps tests short)."""
N_TESTS = 5

# kind -> (arity, code template, text template); y is a variable name or a constant.
OPS: dict[str, tuple[int, str, str]] = {
    "add": (2, "{x} + {y}", "{x} plus {y}"),
    "sub": (2, "{x} - {y}", "{x} minus {y}"),
    "mul": (2, "{x} * {y}", "{x} times {y}"),
    "floordiv": (2, "{x} // {y}", "{x} divided by {y}, rounded down"),
    "mod": (2, "{x} % {y}", "the remainder of {x} divided by {y}"),
    "max": (2, "max({x}, {y})", "the larger of {x} and {y}"),
    "min": (2, "min({x}, {y})", "the smaller of {x} and {y}"),
    "abs": (1, "abs({x})", "the absolute value of {x}"),
}
OP_WEIGHTS: dict[str, float] = {"add": 3, "sub": 3, "mul": 1.5, "floordiv": 1.5, "mod": 1, "max": 1, "min": 1, "abs": 0.5}
CONST_ONLY: frozenset[str] = frozenset({"floordiv", "mod"})
"""Ops whose second operand is always a constant in 2..5 (no division by zero by construction)."""


@dataclass(frozen=True)
class Step:
    """One step: ``target = kind(x, y)``; ``target`` is ``"return"`` for the last step; y may be an int or None."""

    target: str
    kind: str
    x: str
    y: str | int | None = None

    def expr(self) -> str:
        return OPS[self.kind][1].format(x=self.x, y=self.y)

    def code(self) -> str:
        """The reference statement (without indentation)."""
        return f"return {self.expr()}" if self.target == "return" else f"{self.target} = {self.expr()}"

    def text(self) -> str:
        """The docstring sentence describing the step."""
        desc = OPS[self.kind][2].format(x=self.x, y=self.y)
        return f"Return {desc}." if self.target == "return" else f"Let {self.target} be {desc}."

    def as_list(self) -> list:
        return [self.target, self.kind, self.x, self.y]


def apply_op(kind: str, x: int, y: int | None) -> int:
    """The value of ``kind(x, y)`` with Python's own integer semantics (``//`` and ``%`` floor)."""
    if kind == "add":
        return x + y
    if kind == "sub":
        return x - y
    if kind == "mul":
        return x * y
    if kind == "floordiv":
        return x // y
    if kind == "mod":
        return x % y
    if kind == "max":
        return max(x, y)
    if kind == "min":
        return min(x, y)
    if kind == "abs":
        return abs(x)
    raise ValueError(f"unknown op {kind!r}")


def run_steps(steps: list[Step], args: tuple[int, ...], bump: int | None = None) -> tuple[int, int]:
    """Interpret the steps on ``args``: (output, largest |intermediate|); ``bump=i`` adds 1 to step i's value."""
    env = dict(zip(ARGS, args))
    largest = max((abs(v) for v in args), default=0)
    for i, s in enumerate(steps):
        y = env[s.y] if isinstance(s.y, str) else s.y
        value = apply_op(s.kind, env[s.x], y) + (1 if bump == i else 0)
        largest = max(largest, abs(value))
        if s.target == "return":
            return value, largest
        env[s.target] = value
    raise ValueError("steps end without a return")


def canonical(n_args: int, steps: list[Step]) -> str:
    return f"{n_args}|" + ";".join(f"{s.target}={s.kind}({s.x},{s.y})" for s in steps)


def content_hash(n_args: int, steps: list[Step]) -> str:
    return hashlib.sha256(canonical(n_args, steps).encode()).hexdigest()


def split_of(digest: str) -> str:
    """The split that owns a content hash (its bucket ``int(digest[:8], 16) % 100``)."""
    bucket = int(digest[:8], 16) % 100
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= bucket < hi)


def _operand(rng: random.Random, kind: str, names: list[str], avoid: str) -> str | int:
    if kind in CONST_ONLY:
        return rng.randint(2, 5)
    pool = [n for n in names if n != avoid]
    if not pool or rng.random() < 0.35:
        return rng.randint(2, 5) if kind == "mul" else rng.randint(1, 9)
    return rng.choice(pool)


def _sample_steps(rng: random.Random, n_lines: int, n_args: int) -> list[Step]:
    """A random chain of ``n_lines`` steps; step i >= 1 always reads step i-1's variable."""
    names = list(ARGS[:n_args])
    kinds, weights = list(OP_WEIGHTS), list(OP_WEIGHTS.values())
    steps: list[Step] = []
    for i in range(n_lines):
        target = "return" if i == n_lines - 1 else VARS[i]
        kind = rng.choices(kinds, weights)[0]
        x = names[-1] if i > 0 else rng.choice(names)
        y = None if OPS[kind][0] == 1 else _operand(rng, kind, names, avoid=x)
        if isinstance(y, str) and kind in ("add", "sub", "mul", "max", "min") and rng.random() < 0.5:
            x, y = y, x  # the previous variable is sometimes the second operand
        steps.append(Step(target, kind, x, y))
        names.append(target)
    return steps


def _sample_inputs(rng: random.Random, n_args: int) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    while len(seen) < N_TESTS:
        t = tuple(rng.randint(-9, 20) for _ in range(n_args))
        if t not in seen:
            seen.append(t)
    return seen


def _sensitive(steps: list[Step], inputs: list[tuple[int, ...]], outputs: list[int]) -> bool:
    """True when adding 1 to any single line's value changes the output on at least one input."""
    return all(any(run_steps(steps, x, bump=i)[0] != y for x, y in zip(inputs, outputs)) for i in range(len(steps)))


def program_text(n_args: int, steps: list[Step]) -> tuple[str, str]:
    """(prompt, reference body) of a task."""
    sig = f"def {ENTRY_POINT}({', '.join(ARGS[:n_args])}):\n"
    doc = "\n    ".join(s.text() for s in steps)
    prompt = f'{sig}    """{doc}\n    """\n'
    body = "".join(f"    {s.code()}\n" for s in steps)
    return prompt, body


def test_blocks(inputs: list[tuple[int, ...]], outputs: list[int]) -> tuple[str, ...]:
    """One independent test case per input: exact value and exact type ``int``."""
    return tuple(f"_out = {ENTRY_POINT}({', '.join(map(str, x))})\nassert type(_out) is int and _out == {y}, _out"
                 for x, y in zip(inputs, outputs))


def make_task(rng: random.Random, n_lines: int, split: str) -> Task | None:
    """One candidate task of ``n_lines`` lines, or None if it belongs to another split or fails a check."""
    n_args = rng.choice((1, 2, 2, 3, 3))
    steps = _sample_steps(rng, n_lines, n_args)
    digest = content_hash(n_args, steps)
    if split_of(digest) != split:
        return None
    inputs = _sample_inputs(rng, n_args)
    runs = [run_steps(steps, x) for x in inputs]
    outputs = [out for out, _ in runs]
    if max(big for _, big in runs) > MAX_ABS_VALUE or len(set(outputs)) < 2 or not _sensitive(steps, inputs, outputs):
        return None
    prompt, body = program_text(n_args, steps)
    return Task(task_id=f"toy-{n_lines}-{digest[:12]}", prompt=prompt, entry_point=ENTRY_POINT,
                tests=test_blocks(inputs, outputs), reference=body, source="toy", split=split, n_lines=n_lines,
                meta={"hash": digest, "n_args": n_args, "steps": [s.as_list() for s in steps]})


def steps_of(task: Task) -> list[Step]:
    """The structured steps of a toy task (from ``task.meta``)."""
    return [Step(*row) for row in task.meta["steps"]]


def generate_tasks(n: int, split: str, seed: int = 0, min_lines: int = 2, max_lines: int = 12) -> list[Task]:
    """``n`` distinct toy tasks of ``split`` (``train``, ``eval`` or ``pretrain``), deterministic for a seed.

    Task i has ``min_lines + i % (max_lines - min_lines + 1)`` lines, so lengths are spread evenly.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if not 2 <= min_lines <= max_lines <= len(VARS) + 1:
        raise ValueError(f"need 2 <= min_lines <= max_lines <= {len(VARS) + 1}, got {min_lines}, {max_lines}")
    rng = random.Random(f"prmlab-toy:{split}:{seed}")
    tasks, seen = [], set()
    for i in range(n):
        n_lines = min_lines + i % (max_lines - min_lines + 1)
        for _ in range(100_000):
            task = make_task(rng, n_lines, split)
            if task is not None and task.meta["hash"] not in seen:
                break
        else:
            raise RuntimeError(f"could not find a new {split} task of {n_lines} lines")
        seen.add(task.meta["hash"])
        tasks.append(task)
    return tasks


def toy_tasks_from_config(cfg: TaskConfig) -> tuple[list[Task], list[Task]]:
    """(train, eval) toy tasks of a :class:`TaskConfig`."""
    if cfg.source != "toy":
        raise ValueError(f"toy_tasks_from_config needs source='toy', got {cfg.source!r}")
    kw = dict(seed=cfg.seed, min_lines=cfg.min_lines, max_lines=cfg.max_lines)
    return generate_tasks(cfg.n_train, "train", **kw), generate_tasks(cfg.n_eval, "eval", **kw)
