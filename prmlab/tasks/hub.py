"""MBPP, HumanEval and LiveCodeBench from the Hugging Face hub (``datasets.load_dataset``), as Task records.

For machines with hub access (the ``gpu`` and ``paper`` presets). Without it, :func:`load_hub_tasks` raises
:class:`HubUnavailable` with one sentence naming the presets that work offline. Each ``*_task`` function converts
one dataset row and is usable on its own (tests feed it in-memory rows).

* ``mbpp`` (google-research-datasets/mbpp, config ``full``): prompt = the description and one example assert in a
  docstring; tests = ``test_list``; ``test_setup`` = ``test_setup_code``; reference = ``code``.
* ``humaneval`` (openai_humaneval): as :mod:`prmlab.tasks.humaneval`.
* ``livecodebench`` (livecodebench/code_generation_lite): LeetCode-style (functional) problems call
  ``Solution().<func_name>(*args)`` and compare with the JSON output; stdin problems (AtCoder, Codeforces) get
  ``meta["io"] = "stdin"``, which makes the sandbox run the program as a script once per test with that test's
  input, comparing whitespace-separated output tokens.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import zlib
from typing import Any

from prmlab.errors import NotAvailable
from prmlab.offline import OFFLINE_PRESETS, hub_reachable, offline_mode
from prmlab.records import Task
from prmlab.tasks.humaneval import code_line_count, humaneval_task

HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "mbpp": ("google-research-datasets/mbpp", "full", "test"),
    "humaneval": ("openai_humaneval", None, "test"),
    "livecodebench": ("livecodebench/code_generation_lite", None, "test"),
}
"""name -> (hub id, config, default split)."""
TRAIN_SPLITS = ("train", "prompt")
"""Hub splits that become ``Task.split == "train"``; every other split is ``"eval"``."""


class HubUnavailable(NotAvailable):
    """The hub (or ``datasets``) cannot be reached; the message names the presets that work offline."""


def _offline_message(name: str, hub_id: str, why: str) -> str:
    return f"Could not load {name!r} ({hub_id}) from the Hugging Face hub ({why}); {OFFLINE_PRESETS}."


def load_hub_tasks(name: str, split: str | None = None, limit: int | None = None) -> list[Task]:
    """Tasks of a hub benchmark: ``name`` in ``mbpp``, ``humaneval``, ``livecodebench``; ``split`` defaults to
    the benchmark's test split; ``limit`` keeps the first rows."""
    if name not in HUB_DATASETS:
        raise ValueError(f"name must be one of {tuple(HUB_DATASETS)}, got {name!r}")
    hub_id, config, default_split = HUB_DATASETS[name]
    split = split or default_split
    if not hub_reachable() and not offline_mode():  # offline mode: datasets reads its local cache
        raise HubUnavailable(_offline_message(name, hub_id, "the hub cannot be reached from this machine"))
    try:
        from datasets import load_dataset

        args = (hub_id, config) if config else (hub_id,)
        rows = load_dataset(*args, split=split)
    except Exception as e:  # ImportError, ConnectionError, FileNotFoundError, hub errors: all mean "not here"
        raise HubUnavailable(_offline_message(name, hub_id, f"{type(e).__name__}: {str(e)[:200]}")) from e
    convert = {"mbpp": mbpp_task, "humaneval": _humaneval_row, "livecodebench": livecodebench_task}[name]
    tasks = []
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            break
        tasks.append(convert(dict(row), split))
    return tasks


def _task_split(hub_split: str) -> str:
    return "train" if hub_split in TRAIN_SPLITS else "eval"


def _humaneval_row(row: dict[str, Any], split: str) -> Task:
    task = humaneval_task(row, _task_split(split))
    return Task(**{**task.__dict__, "meta": {"hub_split": split}})


def mbpp_entry_point(row: dict[str, Any]) -> str:
    """The function the tests call: the first name called in the first assert that ``code`` defines."""
    defined = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", row["code"], flags=re.M)
    for test in row["test_list"]:
        for called in re.findall(r"([A-Za-z_]\w*)\s*\(", test):
            if called in defined:
                return called
    if not defined:
        raise ValueError(f"MBPP task {row.get('task_id')}: no function defined in code")
    return defined[-1]


def mbpp_task(row: dict[str, Any], split: str = "test") -> Task:
    """One MBPP row as a Task (prompt: description plus one example assert, as in the MBPP paper)."""
    tests = tuple(row["test_list"])
    prompt = f'"""\n{row["text"].strip()}\n{tests[0]}\n"""\n'
    return Task(task_id=f"mbpp/{row['task_id']}", prompt=prompt, entry_point=mbpp_entry_point(row), tests=tests,
                reference=row["code"], test_setup=row.get("test_setup_code") or "", source="mbpp",
                split=_task_split(split), n_lines=code_line_count(row["code"]), meta={"hub_split": split})


class _StringsOnly(pickle.Unpickler):
    """LiveCodeBench ships private tests as a pickled JSON string; refuse anything but plain data."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def decode_test_cases(blob: str) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a JSON list, or base64(zlib(pickle(JSON string))) for the private ones."""
    try:
        return json.loads(blob)
    except (json.JSONDecodeError, TypeError):
        pass
    data = _StringsOnly(io.BytesIO(zlib.decompress(base64.b64decode(blob)))).load()
    return json.loads(data)


def livecodebench_tests(cases: list[dict[str, Any]], func_name: str | None) -> tuple[str, ...]:
    """One test block per case: a functional call compared to the JSON output, or a stdin run compared by tokens."""
    blocks = []
    for c in cases:
        if c.get("testtype") == "functional":
            blocks.append(f"_args = [json.loads(_a) for _a in {c['input']!r}.split('\\n') if _a.strip()]\n"
                          f"_out = Solution().{func_name}(*_args)\n"
                          f"assert _out == json.loads({c['output']!r}), _out")
        else:
            blocks.append(f"_out = _prmlab_run_stdin({c['input']!r})\n"
                          f"assert _out.split() == {c['output']!r}.split(), _out[-200:]")
    return tuple(blocks)


def livecodebench_task(row: dict[str, Any], split: str = "test") -> Task:
    """One LiveCodeBench (code_generation_lite) row as a Task."""
    meta_in = json.loads(row.get("metadata") or "{}")
    cases = decode_test_cases(row["public_test_cases"]) + (
        decode_test_cases(row["private_test_cases"]) if row.get("private_test_cases") else [])
    functional = bool(cases) and cases[0].get("testtype") == "functional"
    func_name = meta_in.get("func_name")
    starter = row.get("starter_code") or ""
    prompt = f'"""\n{row["question_content"].strip()}\n"""\n' + starter
    meta = {"hub_split": split, "platform": row.get("platform"), "difficulty": row.get("difficulty"),
            "contest_date": str(row.get("contest_date", "")), "title": row.get("question_title")}
    if not functional:
        meta["io"] = "stdin"
    return Task(task_id=f"livecodebench/{row['question_id']}", prompt=prompt,
                entry_point=func_name if functional and func_name else "__main__",
                tests=livecodebench_tests(cases, func_name), test_setup="import json\n" if functional else "",
                source="livecodebench", split=_task_split(split), meta=meta)
