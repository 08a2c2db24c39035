"""Notebook 03's helpers: the hack programs, line rewards under the switches, short-run directories, held-out rows."""

import math
from types import SimpleNamespace

import pytest

from prmlab.config import RLConfig
from prmlab.evaluation.rows import eval_row
from prmlab.rl import views

PROGRAM = "    if a > 0:\n        b = a\n    else:\n        b = -a\n    return b\n"


def run(program: str, a: int):
    scope: dict = {}
    exec("def f(a):\n" + program, scope)
    return scope["f"](a)


@pytest.mark.parametrize("line", ["pass", "# step"])
def test_padded_programs_do_the_same(line):
    padded = views.pad_program(PROGRAM, line)
    assert [run(padded, a) for a in (-2, 0, 3)] == [run(PROGRAM, a) for a in (-2, 0, 3)]
    assert padded.count(line) == 4, "nothing inserted before else"
    assert views.paid_lines(padded.splitlines()) == (5 if line.startswith("#") else 9)


def test_line_rewards_under_the_switches():
    rl = RLConfig()
    lines, scores = ["    a = 1", "    # c", "    return a"], [0.4, 0.9, -0.2]
    on = views.line_reward_list(lines, scores, False, rl)
    assert on[1] == 0 and math.isclose(sum(on), 0.25 * (0.4 - 0.2) / 2, abs_tol=1e-6)
    off = views.line_reward_list(lines, scores, False, rl, length_norm=False, neutral_zero=False)
    assert math.isclose(sum(off), 0.25 * (0.4 + 0.9 - 0.2), abs_tol=1e-6)
    twice = [x for x in lines for _ in (0, 1)]
    twice_scores = [x for x in scores for _ in (0, 1)]
    assert math.isclose(sum(views.line_reward_list(twice, twice_scores, True, rl)),
                        sum(views.line_reward_list(lines, scores, True, rl)), abs_tol=1e-6)


def test_side_run_dir_follows_the_prm(tmp_path):
    (tmp_path / "prm").mkdir()
    (tmp_path / "prm" / "head.safetensors").write_bytes(b"v1")
    side = views.side_run_dir(tmp_path, "short-2")
    (side / "rl").mkdir()
    assert views.side_run_dir(tmp_path, "short-2") == side and (side / "rl").exists(), "kept while the PRM is the same"
    (tmp_path / "prm" / "head.safetensors").write_bytes(b"v2")
    views.side_run_dir(tmp_path, "short-2")
    assert not (side / "rl").exists() and (side / "prm" / "head.safetensors").read_bytes() == b"v2"


def test_finished_run(tmp_path):
    (tmp_path / "checkpoints" / "last" / "policy").mkdir(parents=True)
    (tmp_path / "config.json").write_text('{"rl": {"iterations": 2}}')
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n')
    assert not views.finished_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iteration": 2}\n')
    assert views.finished_run(tmp_path) and not views.finished_run(tmp_path, 30)


def test_eval_row_reads_the_first_tasks():
    per_task = {"a": {"n": 10, "c": 10, "n_lines": 2}, "b": {"n": 10, "c": 0, "n_lines": 5},
                "c": {"n": 10, "c": 5, "n_lines": 9}}
    result = SimpleNamespace(policy="base", per_task=per_task)
    row = eval_row("base", result, n_tasks=2)
    assert row.n_tasks == 2 and row.pass_at_1 == 0.5 and row.rates == (1.0, 0.0)
    assert row.by_lines == {"2-3": 1.0, "4-7": 0.0} and row.lo <= 0.5 <= row.hi
    assert eval_row("base", result).pass_at_1 == 0.5
    with pytest.raises(ValueError):
        eval_row("base", result, n_tasks=4)
