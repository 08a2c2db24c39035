"""The toy world: determinism, disjoint splits, references pass, corrupted lines fail, exact types; corpus noise."""

import random
from collections import Counter

import pytest

from prmlab.config import TaskConfig
from prmlab.records import Task
from prmlab.tasks.toy import (
    SPLITS, Step, apply_op, generate_tasks, run_steps, split_of, steps_of, toy_tasks_from_config,
)
from prmlab.tasks.toy_corpus import ToyCorpusConfig, corpus_samples, noisy_lines, run_trusted, slip_line


@pytest.fixture(scope="module")
def eval_tasks():
    return generate_tasks(44, "eval", seed=0)


def test_deterministic_for_a_seed():
    a, b = generate_tasks(22, "train", seed=3), generate_tasks(22, "train", seed=3)
    assert a == b
    assert [t.task_id for t in a] != [t.task_id for t in generate_tasks(22, "train", seed=4)]


def test_lengths_spread_evenly_and_fields(eval_tasks):
    assert Counter(t.n_lines for t in eval_tasks) == {L: 4 for L in range(2, 13)}
    for t in eval_tasks:
        assert t.source == "toy" and t.split == "eval" and t.entry_point == "f"
        assert t.prompt.startswith("def f(") and t.prompt.endswith('    """\n')
        body = t.reference.splitlines()
        assert len(body) == t.n_lines and all(ln.startswith("    ") and not ln.startswith("     ") for ln in body)
        assert body[-1].startswith("    return ")
        assert 4 <= len(t.tests) <= 6


def test_min_max_lines_respected():
    tasks = generate_tasks(10, "train", min_lines=5, max_lines=6)
    assert {t.n_lines for t in tasks} == {5, 6}


def test_splits_disjoint_by_content_whatever_the_seeds():
    ids = {s: {t.meta["hash"] for seed in (0, 1) for t in generate_tasks(66, s, seed=seed)} for s in SPLITS}
    assert not ids["eval"] & ids["train"] and not ids["eval"] & ids["pretrain"] and not ids["train"] & ids["pretrain"]
    assert all(split_of(h) == s for s, hs in ids.items() for h in hs)


def test_no_duplicates_within_a_split():
    tasks = generate_tasks(300, "eval", seed=0, min_lines=2, max_lines=2)
    assert len({t.meta["hash"] for t in tasks}) == 300


def test_every_reference_passes_its_tests(eval_tasks):
    for t in eval_tasks:
        assert run_trusted(t.prompt + t.reference, t), t.task_id


def test_interpreter_matches_python(eval_tasks):
    t = eval_tasks[7]
    env: dict = {}
    exec(t.prompt + t.reference, env)
    for args in [(1, 2, 3), (-7, 0, 19), (20, -9, 4)]:
        a = args[:t.meta["n_args"]]
        assert env["f"](*a) == run_steps(steps_of(t), a)[0]


def test_hand_computed_task():
    steps = [Step("d", "add", "a", "b"), Step("e", "floordiv", "d", 2), Step("return", "sub", "e", "a")]
    assert run_steps(steps, (3, 4)) == (0, 7)  # d = 7, e = 3, return 0
    assert run_steps(steps, (3, 4), bump=1)[0] == 1
    assert [s.code() for s in steps] == ["d = a + b", "e = d // 2", "return e - a"]
    assert steps[1].text() == "Let e be d divided by 2, rounded down."
    assert apply_op("mod", -7, 3) == 2 and apply_op("floordiv", -7, 2) == -4


def _corrupt(t: Task, i: int, new: str) -> str:
    body = t.reference.splitlines()
    body[i] = "    " + new
    return t.prompt + "\n".join(body) + "\n"


def test_one_corrupted_line_fails(eval_tasks):
    for t in eval_tasks:
        body = t.reference.splitlines()
        for i, line in enumerate(body):  # value + 1 on any line is caught (the generator guarantees it)
            stmt = line.strip()
            new = stmt + " + 1" if stmt.startswith("return") else f"{stmt}\n    {stmt.split(' = ')[0]} += 1"
            assert not run_trusted(_corrupt(t, i, new), t), (t.task_id, i)


def test_true_division_is_a_type_error():
    t = next(t for t in generate_tasks(200, "eval", max_lines=3) if "//" in t.reference.splitlines()[-1])
    assert not run_trusted(t.prompt + t.reference.replace("//", "/"), t)


def test_tests_check_exact_type(eval_tasks):
    t = eval_tasks[0]
    always_equal = t.prompt + "    class E:\n        def __eq__(self, o):\n            return True\n    return E()\n"
    assert not run_trusted(always_equal, t)
    as_float = t.prompt + t.reference.rstrip("\n") + " + 0.0\n"
    assert not run_trusted(as_float, t)


def test_tasks_from_config():
    train, ev = toy_tasks_from_config(TaskConfig(n_train=11, n_eval=22, seed=1, min_lines=2, max_lines=12))
    assert len(train) == 11 and len(ev) == 22
    assert {t.split for t in train} == {"train"} and {t.split for t in ev} == {"eval"}
    with pytest.raises(ValueError):
        generate_tasks(1, "test")


def test_slip_line_differs_from_reference():
    rng = random.Random(0)
    for s in [Step("d", "add", "a", "b"), Step("e", "floordiv", "d", 2), Step("return", "abs", "g"),
              Step("g", "mod", "e", 3)]:
        for _ in range(20):
            assert slip_line(rng, s, ["a", "b", "d"]) != s.code()


def test_noise_free_corpus_is_the_reference():
    cfg = ToyCorpusConfig(n_samples=22, misread_rate=0, mistake_rate=0, mistake_growth=0, comment_rate=0,
                          noop_rate=0)
    for s in corpus_samples(cfg):
        assert s["completion"] == s["task"].reference and s["events"] == []


def test_fixed_slips_pass_and_unfixed_mistakes_fail():
    cfg = ToyCorpusConfig(n_samples=220, misread_rate=0, mistake_rate=0.3, mistake_growth=0, comment_rate=0,
                          noop_rate=0)
    fixed_ok, unfixed_fail, n_unfixed = [], 0, 0
    for s in corpus_samples(cfg):
        kinds = [k for _, k in s["events"]]
        ok = run_trusted(s["task"].prompt + s["completion"], s["task"])
        if kinds and all(k in ("slip", "fix") for k in kinds) and kinds.count("slip") == kinds.count("fix"):
            fixed_ok.append(ok)
        elif kinds:
            n_unfixed += 1
            unfixed_fail += not ok
    assert fixed_ok and all(fixed_ok)
    assert n_unfixed > 50 and unfixed_fail / n_unfixed > 0.9


def test_corpus_noise_rates_as_configured():
    cfg = ToyCorpusConfig(n_samples=1100, comment_rate=0.2, noop_rate=0.1, misread_rate=0.15)
    samples = corpus_samples(cfg)
    has = lambda kind: sum(any(k == kind for _, k in s["events"]) for s in samples) / len(samples)  # noqa: E731
    assert abs(has("comment") - 0.2) < 0.04 and abs(has("noop") - 0.1) < 0.03
    assert abs(has("misread") - 0.15) < 0.035
    comments = sum(any(ln.strip().startswith("#") for ln in s["completion"].splitlines()) for s in samples)
    assert comments == sum(any(k == "comment" for _, k in s["events"]) for s in samples)
    for s in samples:
        for i, kind in s["events"]:
            line = s["completion"].splitlines()[i].strip()
            assert kind != "comment" or line.startswith("#")
            assert kind != "noop" or line == "pass" or line.split(" = ")[0] == line.split(" = ")[1]


def test_corpus_pass_rate_falls_with_length():
    samples = corpus_samples(ToyCorpusConfig(n_samples=1100))
    rate = {}
    for L in (2, 12):
        ok = [run_trusted(s["task"].prompt + s["completion"], s["task"]) for s in samples if s["task"].n_lines == L]
        rate[L] = sum(ok) / len(ok)
    assert rate[2] > 0.6 and rate[12] < 0.25


def test_noisy_lines_deterministic():
    t = generate_tasks(5, "pretrain", seed=0)[4]
    cfg = ToyCorpusConfig()
    assert noisy_lines(random.Random(1), t, cfg) == noisy_lines(random.Random(1), t, cfg)
