"""Every way a user can get it wrong at the command line: one sentence naming the fix, a distinct exit status, no
traceback, and no file in the run directory changed or lost. Each case runs the real CLI in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


from prmlab.config import preset
from prmlab.records import LineLabels, write_jsonl
from prmlab.runs import init_run_dir

ROOT = Path(__file__).resolve().parent.parent


def prmlab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "PRMLAB_DEBUG"}
    return subprocess.run([sys.executable, "-m", "prmlab.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=base | (env or {}), timeout=300)


def snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` with the hash of its bytes (empty for a missing directory)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else {}


def assert_one_sentence(r: subprocess.CompletedProcess, code: int, *fix: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    for words in fix:
        assert words in r.stderr, (words, r.stderr)


def labelled_run(tmp_path: Path, k: int = 8) -> Path:
    """A run directory as `prmlab label` leaves it (config of the tiny preset with K = k, a few label records)."""
    run = tmp_path / "run"
    init_run_dir(run, preset("tiny").replace(labels={"k": k}), 0)
    recs = [LineLabels(prompt="p", completions=("a = 1", "return a"), labels=(1.0, -1.0), task_id=f"t{i}",
                       response_id=f"t{i}/0", category="revised", last_recoverable=1) for i in range(3)]
    write_jsonl(run / "labels.jsonl", recs)
    return run


def test_label_without_allow_execution(tmp_path):
    run = tmp_path / "run"
    r = prmlab("label", "--preset", "tiny", "--run-dir", str(run))
    assert_one_sentence(r, 4, "--allow-execution", "docs/safety.md")
    assert not run.exists()


def test_train_prm_on_a_corrupt_labels_file(tmp_path):
    run = labelled_run(tmp_path)
    with open(run / "labels.jsonl", "a", encoding="utf-8") as f:
        f.write('{"prompt": "p", "completions": ["x"], "labels": "oops"}\n{"prompt": 1}\n')
    before = snapshot(run)
    r = prmlab("train-prm", "--preset", "tiny", "--run-dir", str(run))
    assert_one_sentence(r, 3, "labels.jsonl line 4", "fix or delete that line")
    assert snapshot(run) == before


def test_train_prm_on_an_empty_labels_file(tmp_path):
    run = labelled_run(tmp_path)
    (run / "labels.jsonl").write_text("", encoding="utf-8")
    before = snapshot(run)
    r = prmlab("train-prm", "--preset", "tiny", "--run-dir", str(run))
    assert_one_sentence(r, 6, "Not enough data", "label more tasks")
    assert snapshot(run) == before


def test_train_prm_without_labels_names_the_command(tmp_path):
    r = prmlab("train-prm", "--preset", "tiny", "--run-dir", str(tmp_path / "nothing"))
    assert_one_sentence(r, 8, "prmlab label --preset tiny --allow-execution")
    assert not (tmp_path / "nothing").exists()


def test_label_into_a_directory_of_another_config(tmp_path):
    run = labelled_run(tmp_path, k=8)
    before = snapshot(run)
    r = prmlab("label", "--preset", "tiny", "--run-dir", str(run), "--set", "labels.k=4", "--allow-execution")
    assert_one_sentence(r, 7, "different config", "labels.k", "--run-dir")
    assert snapshot(run) == before


def test_report_on_a_directory_without_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    r = prmlab("report", "--preset", "tiny", "--run-dir", str(tmp_path / "empty"))
    assert_one_sentence(r, 8, "no run to report on", "prmlab pipeline --preset tiny --allow-execution")
    assert snapshot(tmp_path / "empty") == {} and list((tmp_path / "empty").iterdir()) == []


def test_bad_config_value():
    r = prmlab("config", "--set", "labels.k=-1")
    assert_one_sentence(r, 2, "LabelConfig.k")


def test_model_not_available_offline(tmp_path):
    r = prmlab("train-prm", "--preset", "tiny", "--run-dir", str(labelled_run(tmp_path)),
               "--set", "model.name_or_path=no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert_one_sentence(r, 5, "'tiny'", "'cpu-real'")


def test_debug_shows_the_traceback(tmp_path):
    r = prmlab("label", "--preset", "tiny", "--run-dir", str(tmp_path / "run"), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ExecutionNotAllowed" in r.stderr
    r = prmlab("label", "--preset", "tiny", "--run-dir", str(tmp_path / "run"), env={"PRMLAB_DEBUG": "1"})
    assert "Traceback" in r.stderr


def test_every_exit_code_is_distinct():
    from prmlab import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.PrmlabError)]
    codes = [c.exit_code for c in classes if c is not errors.PrmlabError]
    assert len(codes) == len(set(codes)) == 8 and all(2 <= c <= 9 for c in codes)
    assert json.dumps(sorted(codes)) == "[2, 3, 4, 5, 6, 7, 8, 9]"


def test_rl_without_a_prm_names_the_command(tmp_path):
    run = labelled_run(tmp_path)
    before = snapshot(run)
    r = prmlab("rl", "--preset", "tiny", "--run-dir", str(run), "--variant", "dense", "--allow-execution")
    assert_one_sentence(r, 8, "prmlab train-prm")
    assert snapshot(run) == before


def test_rl_and_eval_without_allow_execution(tmp_path):
    run = labelled_run(tmp_path)
    before = snapshot(run)
    for args in (("rl", "--variant", "sparse"), ("eval", "--policy", "base")):
        r = prmlab(*args, "--preset", "tiny", "--run-dir", str(run))
        assert_one_sentence(r, 4, "--allow-execution", "docs/safety.md")
    assert snapshot(run) == before


def test_eval_of_a_policy_that_was_never_trained(tmp_path):
    run = labelled_run(tmp_path)
    r = prmlab("eval", "--preset", "tiny", "--run-dir", str(run), "--policy", "rl/sparse", "--allow-execution")
    assert_one_sentence(r, 8, "prmlab rl")
    assert not (run / "eval" / "rl-sparse.json").exists()
