"""The labelling driver on a fake world: batching, costs, categories, MC agreement, determinism, kill-and-resume.

Fake world: a task needs ``n_lines`` lines ``ok``; a program passes iff its lines (after the prompt, comments
ignored) are exactly that many ``ok`` lines. A prefix holding a ``bad`` line can never pass (monotone). The fake
completer continues a prefix by drawing from ONE random stream per call (like batched generation on a real model),
so a run is deterministic only if each call's batch is the same: exactly what resumption must preserve.
"""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prmlab.config import LabelConfig
from prmlab.labels.driver import label_responses, prefix_text, summarize
from prmlab.labels.search import first_negative, max_checks
from prmlab.records import ExecutionResult, LineLabels, Response, Task, read_jsonl

HERE = Path(__file__).resolve().parent


def fake_task(i, n_lines):
    return Task(task_id=f"t{i}", prompt=f"def f{i}():\n", entry_point=f"f{i}", tests=("assert True",),
                n_lines=n_lines)


def body_lines(program, task):
    return [ln.strip() for ln in program[len(task.prompt):].splitlines() if ln.strip() and not ln.strip().startswith("#")]


def fake_passes(program, task):
    lines = body_lines(program, task)
    return lines == ["ok"] * task.n_lines


class FakeRunMany:
    """Judges programs by :func:`fake_passes`, counting calls and caching like the sandbox does."""

    def __init__(self):
        self.cache = {}
        self.programs = 0

    def __call__(self, batch):
        out = []
        for program, task in batch:
            key = (program, task.task_id)
            cached = key in self.cache
            if not cached:
                self.programs += 1
                self.cache[key] = fake_passes(program, task)
            ok = self.cache[key]
            out.append(ExecutionResult(status="passed" if ok else "failed", n_tests=1, n_passed=int(ok),
                                       cached=cached))
        return out


class FakeComplete:
    """Continues a prefix: with probability ``q`` correctly to the end, else with a ``bad`` line (one RNG per request,
    from its own seed, like the real completer)."""

    def __init__(self, q=0.5, delay_s=0.0):
        self.q, self.delay_s = q, delay_s
        self.calls = []

    def __call__(self, requests, k, seeds):
        self.calls.append((len(requests), k))
        if self.delay_s:
            time.sleep(self.delay_s)
        assert len(seeds) == len(requests)
        out = []
        for (task, prefix), seed in zip(requests, seeds):
            rng = random.Random(seed)
            done = len(body_lines(task.prompt + prefix, task))
            row = []
            for _ in range(k):
                if rng.random() < self.q:
                    row.append(prefix + "ok\n" * max(task.n_lines - done, 0))
                else:
                    row.append(prefix + "bad\n")
            out.append(row)
        return out


def fake_responses(n, seed=0, policy="base"):
    """Responses whose first bad line sits at a random place (or nowhere: a passing response), with comments."""
    rng = random.Random(seed)
    tasks, responses = {}, []
    for i in range(n):
        T = rng.randint(1, 9)
        task = fake_task(i, T)
        tasks[task.task_id] = task
        bad_at = rng.randint(0, T)  # 0-based index of the first bad line; T = none (passes)
        lines = ["ok" if j < bad_at else rng.choice(["bad", "ok"]) if j > bad_at else "bad" for j in range(T)]
        if rng.random() < 0.4:
            lines.insert(rng.randint(0, T), "# a comment")
        completion = "".join(ln + "\n" for ln in lines)
        responses.append(Response(task_id=task.task_id, response_id=f"{policy}/t{i}/0", prompt=task.prompt,
                                  completion=completion, program=task.prompt + completion, policy=policy))
    return responses, tasks


def expected_boundary(response):
    """Last recoverable line (in lines) under a completer that always finishes correctly: before the first bad."""
    lines = response.completion.splitlines()
    first_bad = next((i for i, ln in enumerate(lines) if ln == "bad"), None)
    if first_bad is None:
        return len(lines)
    code_before = [i + 1 for i, ln in enumerate(lines[:first_bad]) if not ln.startswith("#")]
    return code_before[-1] if code_before else 0


def test_prefix_text_keeps_exact_text_and_line_breaks():
    c = "a = 1\n# c\r\n\nb = 2"
    lines = ["a = 1", "# c", "", "b = 2"]
    assert [prefix_text(c, lines, m) for m in range(5)] == ["", "a = 1\n", "a = 1\n# c\r\n", "a = 1\n# c\r\n\n", c]


def test_binary_labels_match_the_true_boundary_and_costs_add_up(tmp_path):
    responses, tasks = fake_responses(60)
    cfg = LabelConfig(k=4, chunk=2, group_size=16)
    complete, run_many = FakeComplete(q=1.0), FakeRunMany()
    res = label_responses(responses, tasks, cfg, tmp_path / "labels.jsonl", complete, run_many, progress=False)
    recs = {r.response_id: r for r in read_jsonl(tmp_path / "labels.jsonl", LineLabels)}
    assert len(recs) == 60 == res.n_records == res.n_new
    for resp in responses:
        rec = recs[resp.response_id]
        passing = "bad" not in resp.completion
        assert rec.last_recoverable == expected_boundary(resp)
        assert rec.category == ("correct" if passing else "revised" if rec.last_recoverable > 0 and any(
            not ln.startswith("#") for ln in resp.completion.splitlines()[:rec.last_recoverable]) else "wrong")
        for line, label in zip(rec.completions, rec.labels):
            if line.startswith("#"):
                assert label == 0
            else:
                assert label == (1 if passing or label > 0 else -1)
        if passing:
            assert set(rec.labels) <= {0.0, 1.0} and rec.oracle_calls == 0 and rec.completions_generated == 0
        else:
            n_steps = rec.meta["n_steps"]
            assert 1 <= rec.oracle_calls <= max_checks(n_steps, cfg.probe_first)
            # q = 1: a recoverable prefix passes with its first completion (one chunk), a dead one costs all K
            n_ok = sum(ok for _, ok in rec.meta["trace"])
            assert rec.completions_generated == 2 * n_ok + 4 * (rec.oracle_calls - n_ok)
    assert res.totals["completions_generated"] == sum(r.completions_generated for r in recs.values())
    assert sum(res.categories.values()) == 60
    cost = json.loads((tmp_path / "labels_cost.json").read_text())
    assert cost["totals"]["oracle_calls"] == sum(r.oracle_calls for r in recs.values())
    # every depth of a group is one generation call per chunk round, not one per response
    assert len(complete.calls) < sum(r.oracle_calls for r in recs.values())


def test_identical_completions_are_cache_hits_not_executions(tmp_path):
    responses, tasks = fake_responses(20)
    run_many = FakeRunMany()
    label_responses(responses, tasks, LabelConfig(k=4, chunk=4, group_size=20), tmp_path / "l.jsonl",
                    FakeComplete(q=1.0), run_many, progress=False)
    recs = read_jsonl(tmp_path / "l.jsonl", LineLabels)
    # q = 1 makes every completion of a live prefix identical: judged once, the copies are hits
    assert sum(r.meta["cache_hits"] for r in recs) > 0
    judged = sum(r.executions for r in recs)
    assert run_many.programs <= judged - sum(r.meta["cache_hits"] for r in recs) + len(recs)


def test_monte_carlo_costs_more_and_agrees_on_monotone_world(tmp_path):
    responses, tasks = fake_responses(40, seed=3)
    b = label_responses(responses, tasks, LabelConfig(k=4, group_size=16), tmp_path / "b.jsonl",
                        FakeComplete(q=1.0), FakeRunMany(), progress=False)
    mc = label_responses(responses, tasks, LabelConfig(k=4, group_size=16, method="mc", progress_labels=True),
                         tmp_path / "mc.jsonl", FakeComplete(q=1.0), FakeRunMany(), progress=False)
    assert mc.totals["completions_generated"] > 2 * b.totals["completions_generated"]
    rb = {r.response_id: r for r in read_jsonl(tmp_path / "b.jsonl", LineLabels)}
    for r in read_jsonl(tmp_path / "mc.jsonl", LineLabels):
        assert r.method == "mc-hard"
        assert first_negative(r.labels) == first_negative(rb[r.response_id].labels)
        assert r.last_recoverable == rb[r.response_id].last_recoverable
        if r.category != "correct":
            assert r.meta["monotone"] and len(r.meta["soft_labels"]) == len(r.labels)
            assert sum(r.meta["progress_labels"]) == pytest.approx(r.meta["soft_labels"][-1] - r.meta["soft0"])


def test_same_seed_same_labels_other_seed_differs(tmp_path):
    responses, tasks = fake_responses(40, seed=1)
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        label_responses(responses, tasks, LabelConfig(k=3, chunk=1, group_size=8, seed=seed), tmp_path / f"{name}.jsonl",
                        FakeComplete(q=0.3), FakeRunMany(), progress=False)
        runs.append([(r.response_id, r.labels) for r in read_jsonl(tmp_path / f"{name}.jsonl", LineLabels)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_policies_get_their_own_completer(tmp_path):
    r1, tasks = fake_responses(6, policy="rl-50")
    r0, _ = fake_responses(6, policy="base")
    used = {"base": FakeComplete(q=1.0), "rl-50": FakeComplete(q=1.0)}
    label_responses(r0 + r1, tasks, LabelConfig(k=2, group_size=4), tmp_path / "l.jsonl", used, FakeRunMany(),
                    progress=False)
    recs = read_jsonl(tmp_path / "l.jsonl", LineLabels)
    assert {r.policy for r in recs} == {"base", "rl-50"} and len(recs) == 12
    assert used["base"].calls and used["rl-50"].calls


def test_rerun_on_a_finished_file_does_nothing_and_other_method_is_refused(tmp_path):
    responses, tasks = fake_responses(10)
    out = tmp_path / "l.jsonl"
    label_responses(responses, tasks, LabelConfig(k=2), out, FakeComplete(), FakeRunMany(), progress=False)
    before = out.read_bytes()
    complete = FakeComplete()
    res = label_responses(responses, tasks, LabelConfig(k=2), out, complete, FakeRunMany(), progress=False)
    assert out.read_bytes() == before and res.n_new == 0 and not complete.calls
    with pytest.raises(ValueError, match="another file"):
        label_responses(responses, tasks, LabelConfig(k=2, method="mc"), out, FakeComplete(), FakeRunMany(),
                        progress=False)


def test_resume_after_truncated_tail_and_partial_group(tmp_path):
    responses, tasks = fake_responses(30, seed=7)
    cfg = LabelConfig(k=3, chunk=1, group_size=8)
    full = tmp_path / "full.jsonl"
    label_responses(responses, tasks, cfg, full, FakeComplete(q=0.4), FakeRunMany(), progress=False)
    rows = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(rows[:11]) + rows[11][:25])  # 1 group + 3 of the next, then half a line
    label_responses(responses, tasks, cfg, part, FakeComplete(q=0.4), FakeRunMany(), progress=False)
    a, b = read_jsonl(full, LineLabels), read_jsonl(part, LineLabels)
    assert [(r.response_id, r.labels, r.category) for r in a] == [(r.response_id, r.labels, r.category) for r in b]


def summary(path):
    return [(r.response_id, r.labels, r.category, r.last_recoverable) for r in read_jsonl(path, LineLabels)]


def _driver_main(out):
    """Entry point of the subprocess that the kill-and-resume test kills."""
    responses, tasks = fake_responses(48, seed=11)
    label_responses(responses, tasks, LabelConfig(k=3, chunk=1, group_size=4), out, FakeComplete(q=0.4, delay_s=0.02),
                    FakeRunMany(), progress=False)


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref.jsonl"
    responses, tasks = fake_responses(48, seed=11)
    label_responses(responses, tasks, LabelConfig(k=3, chunk=1, group_size=4), ref, FakeComplete(q=0.4),
                    FakeRunMany(), progress=False)
    out = tmp_path / "killed.jsonl"
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_label_driver as t; t._driver_main({str(out)!r})"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_bytes().splitlines()) >= 8:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the driver finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    n_before = len(read_jsonl(out, LineLabels, repair_tail=True))
    assert 8 <= n_before < 48
    _driver_main(out)
    assert summary(out) == summary(ref)
    ids = [r[0] for r in summary(out)]
    assert len(ids) == len(set(ids)) == 48


def test_summarize_counts_categories_and_means():
    recs = [LineLabels(prompt="p", completions=("a",), labels=(1.0,), task_id="t", response_id=str(i),
                       category=c, oracle_calls=n, completions_generated=2 * n, executions=2 * n)
            for i, (c, n) in enumerate([("correct", 0), ("revised", 2), ("wrong", 4)])]
    res = summarize(recs, "x")
    assert res.categories == {"correct": 1, "revised": 1, "wrong": 1}
    assert res.per_failing_response["oracle_calls"] == 3 and res.totals["completions_generated"] == 12


def test_model_oracle_steps_through_one_search_and_logs_each_check():
    from prmlab.labels.stage import ModelOracle
    from prmlab.labels.search import binary_search_last_recoverable

    task = fake_task(0, 6)
    completion = "ok\n# think\nok\nok\nbad\nok\nok\n"
    resp = Response(task_id="t0", response_id="r", prompt=task.prompt, completion=completion,
                    program=task.prompt + completion)
    oracle = ModelOracle(resp, task, FakeComplete(q=1.0), FakeRunMany(), LabelConfig(k=4, chunk=2))
    assert oracle.T == 6
    m, n = binary_search_last_recoverable(oracle, oracle.T)
    assert m == 3 and n == len(oracle.log) <= 3
    assert oracle.steps[m - 1] == 4  # the 3rd code line is line 4 (a comment sits in between)
    for entry in oracle.log:
        assert entry["recoverable"] == (entry["m_steps"] <= 3)
        assert all(c.startswith(entry["prefix"]) for c, _ in entry["tried"])


def test_model_oracle_gives_the_drivers_labels(tmp_path):
    """Notebook 01's step-by-step search and the batched driver share one oracle round and one check seed."""
    from prmlab.labels.search import BinarySearch, labels_from_boundary
    from prmlab.labels.stage import ModelOracle

    responses, tasks = fake_responses(12, seed=3)
    cfg = LabelConfig(k=4, chunk=2, group_size=5, probe_first=True)
    complete, run_many = FakeComplete(q=0.4), FakeRunMany()
    label_responses(responses, tasks, cfg, tmp_path / "labels.jsonl", complete, run_many, progress=False)
    by_id = {r.response_id: r for r in read_jsonl(tmp_path / "labels.jsonl", LineLabels)}
    n_failing = 0
    for resp in responses:
        rec = by_id[resp.response_id]
        if rec.category == "correct":
            continue
        n_failing += 1
        oracle = ModelOracle(resp, tasks[resp.task_id], complete, run_many, cfg)
        search = BinarySearch(oracle.T, probe_first=True)
        while not search.done:
            search.update(oracle(search.query()))
        m_lines = oracle.steps[search.result - 1] if search.result else 0
        assert labels_from_boundary(oracle.lines, m_lines, cfg.neutral_comments, oracle.neutral) == list(rec.labels)
        assert len(oracle.log) == rec.oracle_calls
    assert n_failing >= 5


def test_stage_refuses_to_execute_without_permission(tmp_path):
    from prmlab.config import preset
    from prmlab.labels.stage import run_labeling  # the name the CLI imports

    with pytest.raises(PermissionError, match="allow_execution"):
        run_labeling(preset("tiny"), tmp_path / "run", allow_execution=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_run_labeling_end_to_end_on_a_tiny_random_model(tmp_path):
    """The whole stage (sample -> execute -> label) with a random tiny Llama, real sandbox, resumable."""
    pytest.importorskip("prmlab.sampling")
    from prmlab.config import preset
    from prmlab.labels.stage import run_labeling
    from prmlab.tasks import load_tasks
    from prmlab.testing import tiny_test_model

    model, tok = tiny_test_model()
    cfg = preset("tiny").replace(tasks={"n_train": 3, "max_lines": 3},
                                 sampling={"n_samples": 2, "max_new_tokens": 12, "batch_size": 8},
                                 labels={"k": 2, "chunk": 1, "max_new_tokens": 12, "group_size": 4})
    tasks = load_tasks(cfg.tasks, "train")
    res = run_labeling(cfg, tmp_path / "run", allow_execution=True, progress=False, model=model, tokenizer=tok,
                       tasks=tasks)
    recs = read_jsonl(tmp_path / "run" / "labels.jsonl", LineLabels)
    resps = read_jsonl(tmp_path / "run" / "responses.jsonl", Response)
    assert res.n_records == len(recs) == len(resps) == 6
    assert {r.response_id for r in recs} == {r.response_id for r in resps}
    assert (tmp_path / "run" / "labels_cost.json").exists() and (tmp_path / "run" / "config.json").exists()
    again = run_labeling(cfg, tmp_path / "run", allow_execution=True, progress=False, model=model, tokenizer=tok,
                         tasks=tasks)
    assert again.n_new == 0 and len(read_jsonl(tmp_path / "run" / "responses.jsonl", Response)) == 6

    # The same failing responses labelled again with another strategy and with Monte-Carlo, capped at 2 responses.
    from prmlab.labels.stage import relabel_failing, run_mc_comparison

    failing_ids = {x.response_id for x in recs if x.category != "correct"}
    failing = [r.response_id for r in resps if r.response_id in failing_ids]
    assert len(failing) >= 2  # a random model fails (nearly) everything
    plain_cfg = dataclasses.replace(cfg.labels, probe_first=False)
    relabel_failing(cfg, tmp_path / "run", plain_cfg, "labels_plain.jsonl", allow_execution=True, max_responses=2,
                    progress=False, model=model, tokenizer=tok, tasks=tasks)
    run_mc_comparison(cfg, tmp_path / "run", allow_execution=True, max_responses=2, progress=False, model=model,
                      tokenizer=tok, tasks=tasks)
    plain = read_jsonl(tmp_path / "run" / "labels_plain.jsonl", LineLabels)
    mc = read_jsonl(tmp_path / "run" / "labels_mc.jsonl", LineLabels)
    assert [r.response_id for r in plain] == [r.response_id for r in mc] == failing[:2]
    assert {r.method for r in mc} <= {"mc-hard"} and (tmp_path / "run" / "labels_plain_cost.json").exists()
    with pytest.raises(PermissionError, match="allow_execution"):
        relabel_failing(cfg, tmp_path / "run", plain_cfg, "labels_x.jsonl", model=model, tokenizer=tok, tasks=tasks)


def test_policy_checkpoint_names():
    from prmlab.runs import policy_checkpoint

    assert policy_checkpoint("r", "base") is None
    assert policy_checkpoint("r", "rl/sparse") == Path("r/rl/sparse/checkpoints/last")
    assert policy_checkpoint("r", "rl/sparse/rl-25") == Path("r/rl/sparse/checkpoints/rl-25")
    for bad in ("sparse", "rl/", "rl//x", "rl/a/b/c"):
        with pytest.raises(ValueError, match="policy must be"):
            policy_checkpoint("r", bad)


@pytest.mark.slow
def test_labelling_samples_an_rl_checkpoint_and_the_base_with_adapters_off(tmp_path):
    """The paper's PRM data path: labels from an RL checkpoint's policy adapter; 'base' stays the base."""
    import torch

    from prmlab.config import preset
    from prmlab.errors import MissingArtifact
    from prmlab.labels.stage import run_labeling
    from prmlab.models import ROLES, add_adapters
    from prmlab.sampling import sample_responses
    from prmlab.tasks import load_tasks
    from prmlab.testing import tiny_test_model

    model, tok = tiny_test_model()
    cfg = preset("tiny").replace(tasks={"n_train": 3, "max_lines": 3},
                                 sampling={"n_samples": 2, "max_new_tokens": 12, "batch_size": 8},
                                 labels={"k": 2, "chunk": 1, "max_new_tokens": 12, "group_size": 4,
                                         "policies": ("base", "rl/sparse/rl-25")})
    tasks = load_tasks(cfg.tasks, "train")
    base_alone = sample_responses(model, tok, tasks, cfg.sampling, "completion", progress=False)
    peft = add_adapters(model, cfg.model, ROLES)
    with pytest.raises(MissingArtifact, match="prmlab rl"):
        run_labeling(cfg, tmp_path / "run", allow_execution=True, progress=False, model=peft, tokenizer=tok,
                     tasks=tasks)
    with torch.no_grad():  # a "trained" policy: perturb its LoRA B so it differs from the base
        for name, p in peft.named_parameters():
            if "lora_B.policy" in name:
                p.add_(torch.randn_like(p) * 0.5)
    peft.save_pretrained(tmp_path / "run" / "rl" / "sparse" / "checkpoints" / "rl-25", selected_adapters=["policy"])
    with torch.no_grad():  # forget it in memory: labelling must load it from the checkpoint
        for name, p in peft.named_parameters():
            if "lora_B.policy" in name:
                p.zero_()
    run_labeling(cfg, tmp_path / "run", allow_execution=True, progress=False, model=peft, tokenizer=tok, tasks=tasks)
    resps = read_jsonl(tmp_path / "run" / "responses.jsonl", Response)
    base = [r.completion for r in resps if r.policy == "base"]
    rl = [r.completion for r in resps if r.policy == "rl/sparse/rl-25"]
    assert base == [r.completion for r in base_alone]  # adapters off = the base model
    assert len(rl) == 6 and rl != base
    labels = read_jsonl(tmp_path / "run" / "labels.jsonl", LineLabels)
    assert {r.policy for r in labels} == {"base", "rl/sparse/rl-25"} and len(labels) == 12


def test_a_rerun_that_labels_nothing_keeps_the_cost_summary(tmp_path):
    responses, tasks = fake_responses(6, seed=5)
    out = tmp_path / "labels.jsonl"
    label_responses(responses, tasks, LabelConfig(k=2, chunk=1), out, FakeComplete(), FakeRunMany(), progress=False)
    first = (tmp_path / "labels_cost.json").read_text()
    again = label_responses(responses, tasks, LabelConfig(k=2, chunk=1), out, FakeComplete(), FakeRunMany(),
                            progress=False)
    assert again.n_new == 0 and (tmp_path / "labels_cost.json").read_text() == first
