"""Records and their JSONL files: round trips, and malformed rows rejected with file, line and reason."""

import json

import pytest

from prmlab.records import (
    ExecutionResult, LineLabels, LineScores, RecordError, Response, Task, append_jsonl, read_jsonl, repair_tail,
    write_jsonl,
)

TASK = Task(task_id="toy/1", prompt="def f(a):\n", entry_point="f", tests=("assert f(1) == 2",), reference="    return a + 1\n")


def labels(**kw):
    base = dict(prompt="p", completions=("a = 1", "# hi", "return a"), labels=(1.0, 0.0, -1.0), task_id="t",
                response_id="t/0", category="revised", last_recoverable=1)
    return LineLabels(**{**base, **kw})


@pytest.mark.parametrize("record", [
    TASK,
    Response(task_id="toy/1", response_id="toy/1/base/0/0", prompt="def f(a):\n", completion="    return a\n",
             program="def f(a):\n    return a\n", meta={"tokens": 5}),
    ExecutionResult(status="failed", n_tests=4, n_passed=1, failing_test="assert f(1) == 2", message="AssertionError"),
    labels(),
    LineScores(task_id="t", response_id="t/0", lines=("a", "b"), scores=(0.5, -0.25), labels=(1.0, -1.0)),
])
def test_jsonl_round_trip(record, tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, [record, record])
    assert read_jsonl(path, type(record)) == [record, record]


def test_execution_result_derived_values():
    r = ExecutionResult(status="failed", n_tests=4, n_passed=1)
    assert r.pass_fraction == 0.25 and not r.passed
    assert ExecutionResult(status="timed_out").pass_fraction == 0.0


@pytest.mark.parametrize("make, reason", [
    (lambda: ExecutionResult(status="passed", n_tests=3, n_passed=2), "passed result"),
    (lambda: ExecutionResult(status="ok"), "status"),
    (lambda: labels(labels=(1.0,)), "3 lines but 1 labels"),
    (lambda: labels(category="almost"), "category"),
    (lambda: Task(task_id="t", prompt="", entry_point="f", tests=()), "at least one test"),
])
def test_invalid_records_are_rejected(make, reason):
    with pytest.raises(RecordError, match=reason):
        make()


@pytest.mark.parametrize("line, reason", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"n_tests": 1}', "missing required field 'status'"),
    (json.dumps({"status": "passed", "n_tests": "3"}).encode(), "expected int"),
    (json.dumps({"status": "failed", "bogus": 1}).encode(), "unknown field"),
    (b'{"status": "failed", "message": "\xff\xfe"}', "not valid UTF-8"),
])
def test_malformed_rows_name_file_line_and_reason(line, reason, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"status": "failed", "n_tests": 2, "n_passed": 1}).encode()
    path.write_bytes(good + b"\n\n" + line + b"\n")
    with pytest.raises(RecordError) as e:
        read_jsonl(path, ExecutionResult)
    assert str(e.value).startswith(f"{path} line 3 is not a valid record") and reason in str(e.value)
    assert "fix or delete that line" in str(e.value)


def test_bool_is_not_an_int_and_int_is_a_float(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"status": "failed", "n_tests": True}) + "\n")
    with pytest.raises(RecordError, match="expected int"):
        read_jsonl(path, ExecutionResult)
    path.write_text(json.dumps({"status": "failed", "duration_s": 2}) + "\n")
    assert read_jsonl(path, ExecutionResult)[0].duration_s == 2.0


def test_truncated_tail_from_a_killed_writer_is_repaired(tmp_path):
    path = tmp_path / "labels.jsonl"
    write_jsonl(path, [labels(response_id="a")])
    with open(path, "a") as f:
        f.write('{"prompt": "p", "compl')  # killed mid-row
    with pytest.raises(RecordError, match=" line 2 is not a valid record"):
        read_jsonl(path, LineLabels)
    assert [r.response_id for r in read_jsonl(path, LineLabels, repair_tail=True)] == ["a"]
    assert repair_tail(path) and not repair_tail(path)
    append_jsonl(path, labels(response_id="b"))
    assert [r.response_id for r in read_jsonl(path, LineLabels)] == ["a", "b"]
