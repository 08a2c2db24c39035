"""Jobs, cache keys and the on-disk result cache of prmlab's sandbox (parent side)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prmlab.config import SandboxConfig
from prmlab.records import ExecutionResult, Task

HARNESS_VERSION = "prmlab-sandbox-2"
"""Part of every cache key: bump it when the harness's semantics change."""
CACHE_FILE = "sandbox_cache.jsonl"


class ExecutionNotAllowed(RuntimeError):
    """Raised when code would be executed without ``SandboxConfig(allow_execution=True)``."""


def require_allowed(cfg: SandboxConfig) -> None:
    """Raise :class:`ExecutionNotAllowed` unless the config opts in to executing generated code."""
    if not cfg.allow_execution:
        raise ExecutionNotAllowed(
            "Executing model-generated programs is off: set SandboxConfig(allow_execution=True) (CLI: "
            "--allow-execution) once you have read docs/safety.md, which says what prmlab's sandbox protects "
            "against and what it does not (it is not a security boundary against a determined attacker).")


@dataclass
class SandboxStats:
    """Counters of a :class:`Sandbox`: programs executed, served from the cache, and seconds spent."""

    executed: int = 0
    cache_hits: int = 0
    duplicates: int = 0
    """Identical (program, tests, limits) jobs within one batch that ran once."""
    errors: int = 0
    time_s: float = 0.0

    @property
    def requests(self) -> int:
        return self.executed + self.cache_hits + self.duplicates

    @property
    def hit_rate(self) -> float:
        """Share of requests answered without executing (cache hits and in-batch duplicates)."""
        return (self.cache_hits + self.duplicates) / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), requests=self.requests, hit_rate=self.hit_rate)


def limits(cfg: SandboxConfig) -> dict[str, Any]:
    """The limits sent to the worker (and hashed into cache keys)."""
    return {"timeout_s": cfg.timeout_s, "cpu_time_s": cfg.cpu_time_s, "memory_mb": cfg.memory_mb,
            "nproc": cfg.max_processes, "max_file_mb": cfg.max_file_mb, "max_output_bytes": cfg.max_output_bytes}


def make_job(program: str, task: Task, cfg: SandboxConfig) -> dict[str, Any]:
    """The worker's job: program, test setup, test cases, mode (``stdin`` tasks run the program per test)."""
    mode = "stdin" if task.meta.get("io") == "stdin" else "function"
    return {"program": program, "setup": task.test_setup, "tests": list(task.tests), "mode": mode,
            "limits": limits(cfg)}


def cache_key(job: dict[str, Any]) -> str:
    """sha256 over (harness version, program, setup, tests, mode, limits)."""
    blob = json.dumps([HARNESS_VERSION, job["program"], job["setup"], job["tests"], job["mode"], job["limits"]],
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def to_result(reply: dict[str, Any], task: Task) -> ExecutionResult:
    """An :class:`ExecutionResult` from a worker reply (``failing_index`` becomes the failing test's source)."""
    idx = reply.get("failing_index")
    return ExecutionResult(status=reply["status"], n_tests=len(task.tests), n_passed=reply["n_passed"],
                           failing_test=task.tests[idx] if idx is not None else None, message=reply.get("message"),
                           duration_s=round(float(reply.get("duration_s", 0.0)), 6))


def cacheable(reply: dict[str, Any], cfg: SandboxConfig) -> bool:
    """Harness errors and dead workers are never cached; nor are wall-clock timeouts of a mostly idle program
    (a loaded machine or a sleep, not a property of the program)."""
    if reply["status"] == "error" or reply.get("worker_died"):
        return False
    return not (reply["status"] == "timed_out" and "wall-clock" in (reply.get("message") or "")
                and reply.get("cpu_s", 0.0) < 0.5 * cfg.timeout_s)


class ResultCache:
    """Results memoised on disk as JSON lines ``{"k": key, "r": result}`` in ``<dir>/sandbox_cache.jsonl``."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_bytes().split(b"\n"):
                try:
                    row = json.loads(line)
                    ExecutionResult(**row["r"])  # validate
                    self.entries[row["k"]] = row["r"]
                except (ValueError, KeyError, TypeError):
                    continue  # a truncated or foreign line is skipped, never trusted

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        if not items:
            return
        lines = []
        for key, result in items:
            self.entries[key] = result
            lines.append(json.dumps({"k": key, "r": result}, ensure_ascii=False) + "\n")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
