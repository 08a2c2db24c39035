"""HumanEval from the shipped file (split into per-assert tests, all canonical solutions pass in the sandbox) and
the hub loaders (offline failure path; row conversion on fake in-memory datasets)."""

from __future__ import annotations

import base64
import json
import pickle
import zlib

import pytest

from prmlab.config import SandboxConfig
from prmlab.records import Task
from prmlab.sandbox import Sandbox
from prmlab.tasks import hub
from prmlab.tasks.humaneval import code_line_count, load_humaneval, split_check, split_ids

CHECK = '''
METADATA = {'author': 'x'}


def check(candidate):
    import math
    assert candidate(1) == 2
    base = 10
    assert True, "placeholder"
    for i in range(3):
        assert candidate(base + i) == base + i + 1
    print("done")
'''


def test_split_check_by_hand():
    setup, tests = split_check(CHECK, "inc")
    assert setup == "METADATA = {'author': 'x'}\ncandidate = inc\n"
    assert tests == (
        "import math\nassert candidate(1) == 2",
        "import math\nbase = 10\nfor i in range(3):\n    assert candidate(base + i) == base + i + 1",
    )
    with pytest.raises(ValueError, match="check"):
        split_check("def helper(c):\n    assert c\n", "inc")


def test_code_line_count():
    assert code_line_count("    # comment\n    x = 1\n\n    return x\n") == 2


def test_load_humaneval_splits():
    tasks = load_humaneval()
    assert len(tasks) == 164 and tasks[0].task_id == "HumanEval/0"
    train, held = load_humaneval("train"), load_humaneval("eval")
    assert (len(train), len(held)) == (114, 50)  # the cpu-real preset's n_train / n_eval
    assert not {t.task_id for t in train} & {t.task_id for t in held}
    assert [t.task_id for t in load_humaneval("eval", seed=0)] == [t.task_id for t in held]
    assert {t.task_id for t in load_humaneval("eval", seed=1)} != {t.task_id for t in held}
    assert split_ids(["a", "b", "c", "d"], 0.5, 0) == split_ids(["d", "c", "b", "a"], 0.5, 0)
    t = tasks[0]
    assert t.entry_point == "has_close_elements" and t.source == "humaneval" and len(t.tests) == 7
    assert t.test_setup.endswith("candidate = has_close_elements\n") and t.n_lines > 0
    assert sum(len(t.tests) for t in tasks) > 3 * len(tasks)  # asserts, not one check() per task
    with pytest.raises(ValueError):
        load_humaneval("test")


@pytest.mark.slow
def test_all_canonical_solutions_pass_and_wrong_ones_fail():
    tasks = load_humaneval()
    with Sandbox(SandboxConfig(allow_execution=True, cache=False)) as sb:
        good = sb.run_many([(t.prompt + t.reference, t) for t in tasks])
        bad = sb.run_many([(t.prompt + "    return None\n", t) for t in tasks])
    assert [t.task_id for t, r in zip(tasks, good) if not r.passed] == []
    assert [t.task_id for t, r in zip(tasks, bad) if r.status != "failed"] == []


# ------------------------------------------------------------------------------------------------------- hub
def test_hub_offline_failure_is_one_clear_sentence(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(hub.HubUnavailable) as e:
        hub.load_hub_tasks("mbpp")
    msg = str(e.value)
    assert "'tiny'" in msg and "'cpu-real'" in msg and "offline" in msg and msg.count(". ") == 0


def test_hub_load_error_is_wrapped(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai_humaneval' on the Hub")

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(hub.HubUnavailable, match="ConnectionError.*cpu-real"):
        hub.load_hub_tasks("humaneval")
    with pytest.raises(ValueError, match="name must be one of"):
        hub.load_hub_tasks("apps")


def fake_load_dataset(rows):
    calls = []

    def load_dataset(*args, split=None, **kwargs):
        calls.append((args, split))
        return list(rows)

    return load_dataset, calls


MBPP_ROWS = [
    {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) ",
     "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                   "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character.",
     "code": "def helper(s):\n    return s\ndef remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n"
             "    i = s.rfind(ch)\n    return s if i < 0 else s[:i] + s[i + 1:]",
     "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
     "test_setup_code": "import math", "challenge_test_list": []},
]


def test_mbpp_rows_become_tasks_that_run(monkeypatch):
    import datasets

    load, calls = fake_load_dataset(MBPP_ROWS)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", load)
    tasks = hub.load_hub_tasks("mbpp", split="train", limit=2)
    assert calls == [(("google-research-datasets/mbpp", "full"), "train")]
    t0, t1 = tasks
    assert (t0.task_id, t0.entry_point, t0.split, t0.source) == ("mbpp/2", "similar_elements", "train", "mbpp")
    assert t1.entry_point == "remove_Occ" and t1.test_setup == "import math" and len(t1.tests) == 2
    assert "remove first and last" in t1.prompt and t1.tests[0] in t1.prompt
    with Sandbox(SandboxConfig(allow_execution=True, workers=1)) as sb:
        assert all(r.passed for r in sb.run_many([(t.reference, t) for t in tasks]))
        assert sb.run("def remove_Occ(s, ch):\n    return s\n", t1).status == "failed"


def test_hub_humaneval_rows(monkeypatch):
    import datasets

    row = {"task_id": "HumanEval/999", "prompt": "def inc(x):\n", "canonical_solution": "    return x + 1\n",
           "entry_point": "inc", "test": CHECK}
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset([row])[0])
    (task,) = hub.load_hub_tasks("humaneval")
    assert task.split == "eval" and task.meta == {"hub_split": "test"} and len(task.tests) == 2


def lcb_private(cases):
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LCB_ROWS = [
    {"question_title": "Add", "question_content": "Return a + b.", "platform": "leetcode", "question_id": "1",
     "contest_id": "w1", "contest_date": "2024-01-01T00:00:00", "difficulty": "easy",
     "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
     "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
     "private_test_cases": lcb_private([{"input": "5\n-7", "output": "-2", "testtype": "functional"}]),
     "metadata": json.dumps({"func_name": "add"})},
    {"question_title": "Sum", "question_content": "Print the sum of N numbers.", "platform": "atcoder",
     "question_id": "abc1_a", "contest_id": "abc1", "contest_date": "2024-01-02T00:00:00", "difficulty": "easy",
     "starter_code": "",
     "public_test_cases": json.dumps([{"input": "3\n1 2 3\n", "output": "6\n", "testtype": "stdin"}]),
     "private_test_cases": lcb_private([{"input": "2\n10 -1\n", "output": "9\n", "testtype": "stdin"}]),
     "metadata": "{}"},
]


def test_livecodebench_rows_become_tasks_that_run(monkeypatch):
    import datasets

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset(LCB_ROWS)[0])
    functional, stdin = hub.load_hub_tasks("livecodebench")
    assert functional.entry_point == "add" and len(functional.tests) == 2 and "io" not in functional.meta
    assert stdin.meta["io"] == "stdin" and stdin.entry_point == "__main__" and len(stdin.tests) == 2
    assert functional.prompt.endswith(LCB_ROWS[0]["starter_code"])
    with Sandbox(SandboxConfig(allow_execution=True, workers=1)) as sb:
        ok = sb.run(functional.prompt + "return a + b\n", functional)
        wrong = sb.run(functional.prompt + "return a - b\n", functional)
        script = sb.run("n = int(input())\nprint(sum(map(int, input().split())))\n", stdin)
        bad_script = sb.run("n = int(input())\nprint(n)\n", stdin)
    assert (ok.status, wrong.status, script.status, bad_script.status) == ("passed", "failed", "passed", "failed")


def test_private_tests_refuse_pickled_objects():
    evil = base64.b64encode(zlib.compress(pickle.dumps(Task))).decode()
    with pytest.raises(pickle.UnpicklingError):
        hub.decode_test_cases(evil)
