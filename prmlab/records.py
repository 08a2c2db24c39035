"""Frozen records shared by every stage, and their JSONL files.

Every stage reads and writes JSON Lines in a run directory. A record is a frozen dataclass whose fields are plain
JSON values, so ``datasets.load_dataset("json", data_files=...)`` reads the same files. Reading validates every row
and raises :class:`RecordError` naming the file, the 1-based line number and the reason, so a malformed row never
silently becomes a default.

Records:
    Task             a prompt, the entry point, a reference solution and unit tests.
    Response         one sampled completion of a task by a policy, and the program that gets executed.
    ExecutionResult  what the sandbox saw when it ran a program against a task's tests.
    LineLabels       stepwise-supervision labels of a response's lines (``prompt``, ``completions``, ``labels``).
    LineScores       the PRM's score of each line of a response.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from prmlab.errors import RecordError  # noqa: F401  (re-exported: record files raise it)

Status = Literal["passed", "failed", "timed_out", "crashed", "error"]
STATUSES: tuple[str, ...] = typing.get_args(Status)
Category = Literal["correct", "revised", "wrong"]
CATEGORIES: tuple[str, ...] = typing.get_args(Category)


@dataclass(frozen=True)
class Task:
    """A programming task with hidden unit tests.

    The program that is executed is ``prompt + completion`` for completion-style tracks, or the extracted code
    for chat tracks (see :class:`Response`). ``tests`` are independent test cases: each is a block of Python
    statements that runs after the program (and after ``test_setup``) and passes if it raises nothing. Keeping them
    separate gives the per-test pass fraction the partial-credit baseline needs.
    """

    task_id: str
    prompt: str
    entry_point: str
    tests: tuple[str, ...]
    reference: str = ""
    """Reference solution body, appended to ``prompt`` it must pass every test."""
    test_setup: str = ""
    """Statements run once before the test cases (helpers, imports); may refer to the program's names."""
    source: str = "toy"
    """Where the task comes from: ``toy``, ``humaneval``, ``mbpp``, ``livecodebench``."""
    split: str = "train"
    n_lines: int = 0
    """Difficulty: number of lines of the reference solution (0 when unknown)."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.task_id), "task_id must be a non-empty string")
        _require(bool(self.entry_point), f"task {self.task_id}: entry_point must be a non-empty string")
        _require(len(self.tests) > 0, f"task {self.task_id}: tests must hold at least one test case")
        _require(self.n_lines >= 0, f"task {self.task_id}: n_lines must be >= 0, got {self.n_lines}")


@dataclass(frozen=True)
class Response:
    """One sampled response of a policy to a task.

    ``completion`` is the generated text whose lines are the *steps* that get labelled and scored; ``program`` is
    the complete source that is executed against the task's tests (``task.prompt + completion`` for the toy world).
    """

    task_id: str
    response_id: str
    prompt: str
    completion: str
    program: str
    policy: str = "base"
    """Name of the checkpoint that sampled it (the paper samples from several RL checkpoints)."""
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.task_id), "task_id must be a non-empty string")
        _require(bool(self.response_id), "response_id must be a non-empty string")


@dataclass(frozen=True)
class ExecutionResult:
    """What the sandbox observed. ``passed`` is true only on a positive signal that every test ran to the end."""

    status: Status
    n_tests: int = 0
    n_passed: int = 0
    failing_test: str | None = None
    """Source of the first failing test case, when one failed."""
    message: str | None = None
    """Last traceback line, timeout or crash description, or the harness error."""
    duration_s: float = 0.0
    cached: bool = False

    def __post_init__(self) -> None:
        _require(self.status in STATUSES, f"status must be one of {STATUSES}, got {self.status!r}")
        _require(0 <= self.n_passed <= max(self.n_tests, 0), f"n_passed={self.n_passed} not in [0, n_tests={self.n_tests}]")
        _require(self.status != "passed" or self.n_passed == self.n_tests > 0, "a passed result must pass all of >0 tests")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def pass_fraction(self) -> float:
        """Fraction of test cases that passed (the partial-credit reward), 0 when none ran."""
        return self.n_passed / self.n_tests if self.n_tests else 0.0


@dataclass(frozen=True)
class LineLabels:
    """Stepwise-supervision labels of one response, in the Hugging Face stepwise shape plus our metadata.

    ``completions[i]`` is line i of the response and ``labels[i]`` its float label: +1 while the prefix ending at
    that line can still be completed into a passing program, -1 after, 0 for neutral (comment/blank) lines. Soft
    (Monte-Carlo) labels lie in [0, 1].
    """

    prompt: str
    completions: tuple[str, ...]
    labels: tuple[float, ...]
    task_id: str
    response_id: str
    category: Category
    method: str = "binary"
    """``binary`` (best-of-K binary search), ``mc-hard``, ``mc-soft`` or ``progress``."""
    last_recoverable: int = -1
    """Number of leading lines whose prefix is still recoverable (0..T); -1 when not computed."""
    oracle_calls: int = 0
    completions_generated: int = 0
    executions: int = 0
    policy: str = "base"
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(len(self.completions) == len(self.labels),
                 f"{len(self.completions)} lines but {len(self.labels)} labels")
        _require(self.category in CATEGORIES, f"category must be one of {CATEGORIES}, got {self.category!r}")


@dataclass(frozen=True)
class LineScores:
    """The PRM's score for each line of one response (read at the line's last token)."""

    task_id: str
    response_id: str
    lines: tuple[str, ...]
    scores: tuple[float, ...]
    labels: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(len(self.lines) == len(self.scores), f"{len(self.lines)} lines but {len(self.scores)} scores")
        _require(self.labels is None or len(self.labels) == len(self.lines),
                 f"{len(self.lines)} lines but {len(self.labels or ())} labels")


R = TypeVar("R")


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise RecordError(reason)


def to_dict(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(record)


def from_dict(cls: type[R], row: Any) -> R:
    """Build a record of type ``cls`` from a parsed JSON object, checking keys and value types.

    Raises :class:`RecordError` for a non-object, a missing required key, an unknown key or a value of the wrong
    type.
    """
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {type(row).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(row) - set(fields))
    if unknown:
        raise RecordError(f"unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for name, f in fields.items():
        if name not in row:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"missing required field {name!r} for {cls.__name__}")
            continue
        kwargs[name] = _coerce(row[name], hints[name], name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against a (simple) type hint and turn JSON lists into tuples where the hint says so."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return _coerce(value, arm, name)
            except RecordError as e:
                errors.append(str(e))
        raise RecordError(errors[0] if len(errors) == 1 else f"field {name!r}: {value!r} matches none of {hint}")
    if hint is type(None):
        if value is not None:
            raise RecordError(f"field {name!r}: expected null, got {type(value).__name__}")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"field {name!r}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{name}[]") for v in value)
    if origin is Literal:
        if value not in args:
            raise RecordError(f"field {name!r}: expected one of {args}, got {value!r}")
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise RecordError(f"field {name!r}: expected an object, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"field {name!r}: expected a number, got {type(value).__name__}")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecordError(f"field {name!r}: expected {hint.__name__}, got {type(value).__name__}")
        return value
    return value


def write_jsonl(path: str | os.PathLike, records: Iterable[Any], append: bool = False) -> int:
    """Write records (dataclasses or dicts) as JSON Lines; returns how many were written.

    Each row is flushed and fsynced as a whole line, so a killed writer leaves at most one truncated last line,
    which :func:`read_jsonl` with ``repair_tail=True`` drops.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for r in records:
            row = r if isinstance(r, dict) else to_dict(r)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append one record as one line (used by resumable drivers)."""
    write_jsonl(path, [record], append=True)


def repair_tail(path: str | os.PathLike) -> bool:
    """Cut an unterminated last line (left by a killed writer) so appends start on a fresh line.

    Returns True when something was cut. A resumable driver calls this before appending.
    """
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def iter_jsonl(path: str | os.PathLike, cls: type[R] | None = None, repair_tail: bool = False) -> Iterator[Any]:
    """Yield the rows of a JSONL file, as ``cls`` records when given, else as dicts.

    Blank lines are skipped. A row that is not valid UTF-8, not valid JSON, or not a valid ``cls`` raises
    :class:`RecordError` with ``file:line: reason``. With ``repair_tail=True`` an unterminated, unparsable last
    line (what a killed writer leaves) is ignored instead.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    last = len(raw_lines)
    for lineno, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            row = json.loads(text)
            yield from_dict(cls, row) if cls is not None else _check_object(row)
        except (UnicodeDecodeError, json.JSONDecodeError, RecordError, TypeError) as e:
            if repair_tail and lineno == last:
                return
            raise RecordError(f"{path} line {lineno} is not a valid record ({_reason(e)}); fix or delete that line, "
                              f"or re-create the file with the stage that writes it.") from e


def read_jsonl(path: str | os.PathLike, cls: type[R] | None = None, repair_tail: bool = False) -> list[Any]:
    """All rows of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, cls, repair_tail=repair_tail))


def _check_object(row: Any) -> dict:
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {type(row).__name__}")
    return row


def _reason(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"not valid UTF-8 ({e.reason} at byte {e.start})"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at column {e.colno})"
    return str(e)
