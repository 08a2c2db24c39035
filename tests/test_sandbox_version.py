"""The parent/worker handshake: a worker started from sandbox files that changed after the caller imported prmlab is
a clear error (prmlab.errors.SandboxCodeChanged), never a run of silently crashed programs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from prmlab.sandbox.version import CODE, code_digest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = r'''
import json, sys
from pathlib import Path
from prmlab.config import SandboxConfig
from prmlab.errors import SandboxCodeChanged
from prmlab.records import Task
from prmlab.sandbox import Sandbox, protections

task = Task(task_id="t/inc", prompt="def inc(x):\n", entry_point="inc", tests=("assert inc(1) == 2",),
            reference="    return x + 1\n")
cfg = SandboxConfig(allow_execution=True, cache=False, workers=1)
out = {}
with Sandbox(cfg) as sb:
    out["before"] = sb.run("def inc(x):\n    return x + 1\n", task).status
    if sys.argv[1] != "-":  # the package changes on disk while this process runs (an edit, a git pull)
        path = Path(sys.argv[1])
        path.write_text(path.read_text() + "\n# changed while the caller ran\n")
    out["running worker"] = sb.run("def inc(x):\n    return x + 1  # again\n", task).status
for name, call in [("new worker", lambda: Sandbox(cfg).run("def inc(x):\n    return x + 1\n", task).status),
                   ("probe", lambda: protections(refresh=True).mode)]:
    try:
        out[name] = call()
    except SandboxCodeChanged as e:
        out[name] = ["SandboxCodeChanged", str(e), e.exit_code]
print(json.dumps(out))
'''


def _run(tmp_path: Path, changed: str | None) -> dict:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "prmlab", tree / "prmlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = str(tree / "prmlab" / "sandbox" / changed) if changed else "-"
    env = dict(os.environ, PYTHONPATH=str(tree))
    r = subprocess.run([sys.executable, "-c", SCRIPT, target], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_digest_covers_every_source_file(tmp_path):
    d = tmp_path / "pkg"
    shutil.copytree(ROOT / "prmlab" / "sandbox", d, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(str(d)) == CODE
    (d / "harness.py").write_text((d / "harness.py").read_text() + "# x\n")
    changed = code_digest(str(d))
    assert changed != CODE and len(changed) == 16
    (d / "README.txt").write_text("not code")
    assert code_digest(str(d)) == changed


def test_unchanged_files_run_normally(tmp_path):
    out = _run(tmp_path, None)
    assert out == {"before": "passed", "running worker": "passed", "new worker": "passed",
                   "probe": out["probe"]} and isinstance(out["probe"], str)


def test_worker_started_after_a_change_is_a_clear_error(tmp_path):
    for changed in ("harness.py", "pool.py"):  # the worker's code, or the parent's code the caller holds in memory
        out = _run(tmp_path / changed, changed)
        assert out["before"] == "passed" and out["running worker"] == "passed"  # a running worker keeps its code
        for name in ("new worker", "probe"):
            kind, message, code = out[name]
            assert kind == "SandboxCodeChanged" and code == 9
            assert "restart this Python process or Jupyter kernel" in message
            assert message.count(". ") == 0 and message.endswith(".")  # one sentence
