"""The sandbox's self-test (hostile, forging and known-answer programs checked from outside) in every mode.

* ``root``: this process (CI and this machine run as root), namespaces + per-worker uid + Landlock.
* ``unprivileged``: uid 65534 through ``setpriv``, running the system's ``/usr/bin/python3`` on a world-readable
  copy of the package (the venv's interpreter lives under root's home, which other uids cannot read).
* ``unprivileged, Landlock only`` and ``unprivileged, nothing``: the same with ``PRMLAB_SANDBOX_DISABLE``, to
  measure what the weaker modes of docs/safety.md contain (a kernel without user namespaces, or without both).

Each mode runs once (module-scoped); each scenario is its own test. Expected gaps of the weaker modes are listed
in :data:`GAPS`; everything else must be contained in every mode.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from prmlab.sandbox.selftest import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
UNPRIVILEGED = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
KILL_ALL = "kill(-1, SIGKILL) from a child"
MODES = {  # mode -> PRMLAB_SANDBOX_DISABLE
    "root": None,
    "unprivileged": "",
    "unprivileged, Landlock only": "namespaces",
    "unprivileged, nothing": "namespaces,landlock",
}
GAPS = {
    "unprivileged, Landlock only": {"connect to this machine (TCP, UDP, abstract Unix socket)",
                                    "see the user's processes"},
    "unprivileged, nothing": {"write or delete outside the working directory",
                              "connect to this machine (TCP, UDP, abstract Unix socket)",
                              "kill a process of the user by pid", "see the user's processes"},
}
"""Scenarios a weaker mode is known not to contain (docs/safety.md); the test fails if one starts passing too, so
the table stays measured."""


def _unprivileged_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to drop to uid 65534 (run as root, as CI does)"
    if not shutil.which("setpriv") or not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs setpriv and {SYSTEM_PYTHON}"
    if subprocess.run(["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
                       SYSTEM_PYTHON, "-c", "import sys; sys.exit(sys.version_info < (3, 10))"],
                      capture_output=True).returncode:
        return f"{SYSTEM_PYTHON} cannot run as uid {UNPRIVILEGED} or is older than 3.10"
    return None


def _run_unprivileged(tmp: Path, disable: str) -> dict:
    tree = tmp / "tree"
    if not tree.exists():
        shutil.copytree(ROOT / "prmlab", tree / "prmlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for p in [tmp, *tree.rglob("*")] + [tree]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": "/nonexistent"}
    if disable:
        env["PRMLAB_SANDBOX_DISABLE"] = disable
    skip = ["--skip", KILL_ALL] if "landlock" in disable else []  # it would kill the self-test itself
    out = subprocess.run(["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
                          SYSTEM_PYTHON, "-m", "prmlab.sandbox.selftest", "--json", *skip],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip(), out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reports():
    """Mode -> report dict (or a skip reason), computed lazily once per mode."""
    cache: dict[str, dict | str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="prmlab-unpriv-"))  # pytest's own tmp dirs are not traversable by others

    def get(mode: str):
        if mode not in cache:
            if MODES[mode] is None:
                if os.geteuid() != 0:
                    cache[mode] = "this half runs as root (CI does); the unprivileged modes cover the rest"
                else:
                    from prmlab.sandbox import self_test

                    cache[mode] = self_test().as_dict()
            else:
                reason = _unprivileged_reason()
                cache[mode] = reason or _run_unprivileged(tmp, MODES[mode])
        if isinstance(cache[mode], str):
            pytest.skip(cache[mode])
        return cache[mode]

    yield get
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("mode", list(MODES))
def test_scenario(reports, mode, scenario):
    report = reports(mode)
    rows = {r["name"]: r for r in report["rows"]}
    if scenario not in rows:
        pytest.skip(f"{scenario!r} would kill every process of the user in mode {mode!r} (documented)")
    row = rows[scenario]
    if scenario in GAPS.get(mode, ()):
        assert not row["ok"], f"{mode}: {scenario} is now contained; update GAPS and docs/safety.md"
    else:  # the whole row as text: pytest shortens a dict in its report, and the detail is what matters
        assert row["ok"], f"{mode}: {scenario}: status {row['status']} (expected {row['expected']}); {row['detail']}"


@pytest.mark.parametrize("mode", list(MODES))
def test_protections_reported(reports, mode):
    p = reports(mode)["protections"]["protections"]
    assert p["verdict_separated"]
    strong = mode in ("root", "unprivileged")
    assert p["complete"] == strong, p
    assert (p["network"] == "blocked") == strong and p["processes_hidden"] == strong
    assert p["mode"].startswith("root" if mode == "root" else "unprivileged")


def test_caller_survives_kill_minus_one_in_the_strong_modes(reports):
    for mode in ("root", "unprivileged"):
        try:
            rows = {r["name"]: r for r in reports(mode)["rows"]}
        except pytest.skip.Exception:
            continue
        assert rows[KILL_ALL]["ok"] and rows[KILL_ALL]["status"] != "passed"


def test_strict_mode_refuses_when_a_protection_is_missing(monkeypatch):
    from prmlab.config import SandboxConfig
    from prmlab.sandbox import Sandbox, SandboxUnavailable

    monkeypatch.setenv("PRMLAB_SANDBOX_DISABLE", "namespaces")
    monkeypatch.setenv("PRMLAB_SANDBOX_STRICT", "1")
    with pytest.raises(SandboxUnavailable, match="network isolation"):
        Sandbox(SandboxConfig(allow_execution=True, workers=1))
    monkeypatch.delenv("PRMLAB_SANDBOX_STRICT")
    with pytest.warns(UserWarning, match="network isolation"):
        Sandbox(SandboxConfig(allow_execution=True, workers=1), strict=False).close()


def test_python_version_is_recorded():
    assert sys.version_info >= (3, 10)
