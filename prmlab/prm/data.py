"""The PRM's data: which labelled responses it trains on, the split by task, and tensors at line ends.

    labels.jsonl (LineLabels) -> task_pass_rates -> select_data (Table 2) -> split_by_task -> encode -> collate

Data selection (the paper's Table 2; difficulty of a task = the policy's pass rate on it, from the labels):

    full           every response
    remove-hard    drop the tasks with pass rate < hard_below
    medium-only    keep the tasks with hard_below <= pass rate <= easy_above
    revised-only   keep the *Revised* responses only (failed, but a non-empty prefix was recoverable)

Policy drift: :func:`label_drift_set` labels a shifted policy's responses on held-out tasks.

An :class:`Example` is one response tokenised once as ``prompt + completion`` with, for every line, the index of
the token holding its last character (:func:`prmlab.lines.token_positions_for_lines`) and its float label.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from prmlab.config import DATA_SELECTIONS
from prmlab.lines import token_positions_for_lines
from prmlab.records import LineLabels


def completion_text(lines: Sequence[str]) -> str:
    """The response text whose lines are ``lines``: each line followed by ``\\n`` (how responses are stored)."""
    return "".join(line + "\n" for line in lines)


def task_pass_rates(labels: Iterable[LineLabels]) -> dict[str, float]:
    """Per task, the share of its responses that pass (category ``correct``): the policy's pass rate on it."""
    n: dict[str, int] = defaultdict(int)
    passed: dict[str, int] = defaultdict(int)
    for r in labels:
        n[r.task_id] += 1
        passed[r.task_id] += r.category == "correct"
    return {t: passed[t] / n[t] for t in n}


def difficulty(pass_rate: float, hard_below: float, easy_above: float) -> str:
    """``hard`` (pass rate < hard_below), ``easy`` (> easy_above) or ``medium`` (in between, ends included)."""
    if pass_rate < hard_below:
        return "hard"
    return "easy" if pass_rate > easy_above else "medium"


def select_data(labels: Sequence[LineLabels], selection: str, pass_rates: Mapping[str, float] | None = None,
                hard_below: float = 0.2, easy_above: float = 0.8) -> list[LineLabels]:
    """The labelled responses a PRM trains on under ``selection`` (see the module docstring).

    ``pass_rates`` maps task ids to the policy's pass rate; by default it is computed from ``labels`` themselves
    (:func:`task_pass_rates`). A task missing from ``pass_rates`` raises KeyError for the selections that need it.
    """
    if selection not in DATA_SELECTIONS:
        raise ValueError(f"selection must be one of {DATA_SELECTIONS}, got {selection!r}")
    if selection == "full":
        return list(labels)
    if selection == "revised-only":
        return [r for r in labels if r.category == "revised"]
    rates = task_pass_rates(labels) if pass_rates is None else pass_rates
    keep = {"remove-hard": ("medium", "easy"), "medium-only": ("medium",)}[selection]
    return [r for r in labels if difficulty(rates[r.task_id], hard_below, easy_above) in keep]


def split_by_task(labels: Sequence[LineLabels], fractions: Sequence[float], seed: int = 0) -> list[list[LineLabels]]:
    """Split responses into parts by *task* (a task's responses never straddle two parts).

    The sorted task ids are shuffled with ``seed``; part i takes the next ``round(fractions[i] * n_tasks)`` tasks
    (at least one when its fraction is > 0 and tasks remain); the last part takes the rest. With fractions
    ``(val, test)`` the result is ``[val, test, train]``.
    """
    tasks = sorted({r.task_id for r in labels})
    random.Random(seed).shuffle(tasks)
    parts_ids: list[set[str]] = []
    start = 0
    for f in fractions:
        n = max(1, round(f * len(tasks))) if f > 0 and start < len(tasks) - 1 else 0
        parts_ids.append(set(tasks[start:start + n]))
        start += n
    parts_ids.append(set(tasks[start:]))
    return [[r for r in labels if r.task_id in ids] for ids in parts_ids]


@dataclass(frozen=True)
class Example:
    """One response ready for the PRM: token ids of prompt + completion, line-end positions, line labels."""

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    """positions[i] = index of the token holding line i's last character."""
    labels: tuple[float, ...]
    task_id: str = ""
    response_id: str = ""


def encode(tokenizer, record: LineLabels, prompt_text: Callable[[str], str] = lambda p: p) -> Example:
    """Tokenise ``prompt_text(record.prompt) + completion`` once and find each line's end token.

    ``prompt_text`` turns the task prompt into the text the model reads before the code (identity on the
    completion track; the chat template plus the opened code block on the chat track).
    """
    ids, positions = token_positions_for_lines(tokenizer, prompt_text(record.prompt), completion_text(record.completions))
    if len(positions) != len(record.labels):
        raise ValueError(f"{record.response_id}: {len(positions)} lines found but {len(record.labels)} labels")
    return Example(tuple(ids), tuple(positions), tuple(float(v) for v in record.labels), record.task_id,
                   record.response_id)


@dataclass(frozen=True)
class Batch:
    """Right-padded tensors of several examples; padding never changes a real token's hidden state (causal)."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    positions: torch.Tensor  # (B, L) line-end token indices, 0 where padded
    targets: torch.Tensor  # (B, L) float labels, 0 where padded
    line_mask: torch.Tensor  # (B, L) 1 for real lines


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Pad token ids on the right to the longest sequence and lines to the most lines in the batch."""
    B = len(examples)
    T = max(len(e.input_ids) for e in examples)
    L = max(max(len(e.positions) for e in examples), 1)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    positions = torch.zeros((B, L), dtype=torch.long)  # (B, L)
    targets = torch.zeros((B, L), dtype=torch.float32)  # (B, L)
    line_mask = torch.zeros((B, L), dtype=torch.float32)  # (B, L)
    for b, e in enumerate(examples):
        n, m = len(e.input_ids), len(e.positions)
        input_ids[b, :n] = torch.tensor(e.input_ids)
        attention_mask[b, :n] = 1
        if m:
            positions[b, :m] = torch.tensor(e.positions)
            targets[b, :m] = torch.tensor(e.labels)
            line_mask[b, :m] = 1
    return Batch(input_ids, attention_mask, positions, targets, line_mask)


def batches(examples: Sequence[Example], batch_size: int, shuffle_seed: int | None = None) -> list[list[Example]]:
    """Consecutive groups of ``batch_size`` examples, in a seeded random order when ``shuffle_seed`` is given."""
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    return [[examples[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
