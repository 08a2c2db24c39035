"""The sandbox's self-test: known-answer and hostile programs, checked from outside, as a readable report.

``prmlab.sandbox.self_test()`` (or ``python -m prmlab.sandbox.selftest [--json]``) runs each scenario of
:data:`SCENARIOS` in a one-worker Sandbox while the self-test holds things a program must not reach: a
world-writable directory with a file in it, a TCP listener, a UDP socket and an abstract Unix socket on this
machine, and a process of the caller's user. A scenario passes when the result has the expected status and nothing
outside changed: no file appeared or vanished, no connection or datagram arrived, the process lives, no process of
the program survives, and the caller is still running. Only the standard library and prmlab's sandbox, config and
records modules are used, so the test suite can run it as another uid with the system's Python.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from prmlab.config import SandboxConfig
from prmlab.records import Task
from prmlab.sandbox.pool import Sandbox

CFG = SandboxConfig(allow_execution=True, timeout_s=3.0, cpu_time_s=1, memory_mb=256, max_processes=16, workers=1,
                    cache=False)
TASK = Task(task_id="selftest/double", prompt="def double(x):\n", entry_point="double", reference="    return 2 * x\n",
            tests=tuple(f"_out = double({x})\nassert type(_out) is int and _out == {2 * x}, _out" for x in (1, 4, -3)))
RIGHT = "def double(x):\n    return 2 * x\n"
NETWORK_SETTLE_S = 1.0
"""How long the network scenario's check waits for a connection or datagram to arrive (it returns at the first)."""
WRONG = "def double(x):\n    return x\n"
NOT_PASSED = ("failed", "crashed", "timed_out")
ATTEMPT = ("def attempt(name, fn):\n    try:\n        fn()\n        return name\n    except Exception:\n"
           "        return None\n")
"""Prefix of probing programs: ``attempt`` returns the name when the forbidden action succeeded."""


def _probe(body: str) -> str:
    """A correct program that fails its tests, listing what got through, when any forbidden action succeeded."""
    return (ATTEMPT + "import os, socket, signal, subprocess\n" + body +
            "escaped = [e for e in escaped if e]\n"
            "def double(x):\n    assert not escaped, escaped\n    return 2 * x\n")


SCENARIOS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name: (category, program (str.format fields from Outside.fields), accepted statuses)
    "correct function passes": ("known answers", RIGHT, ("passed",)),
    "wrong function fails": ("known answers", WRONG, ("failed",)),
    "exception is a failure": ("known answers", "def double(x):\n    return x / 0\n", ("failed",)),
    "endless loop times out": ("known answers", "def double(x):\n    while True:\n        pass\n", ("timed_out",)),
    "os._exit(0) in a test crashes": ("known answers", "import os\ndef double(x):\n    os._exit(0)\n", ("crashed",)),
    "write or delete outside the working directory": ("writes", _probe(
        "escaped = [attempt('new file ' + p, lambda p=p: open(p, 'w').write('x')) for p in {write_targets!r}]\n"
        "escaped.append(attempt('delete {victim_file}', lambda: os.unlink({victim_file!r})))\n"
        "escaped.append(attempt('overwrite {victim_file}', lambda: open({victim_file!r}, 'w').write('x')))\n"
        "escaped.append(attempt('mkdir', lambda: os.mkdir({outside_dir!r} + '/d')))\n"
        "for p in {shared!r}:\n    attempt('shared', lambda: open(p, 'w').write('x'))\n"
        "open('own.txt', 'w').write('mine')\nassert open('own.txt').read() == 'mine'\n"), ("passed",)),
    "connect to this machine (TCP, UDP, abstract Unix socket)": ("network", _probe(
        "escaped = [attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {tcp_port}), timeout=1))]\n"
        "escaped.append(attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
        ".sendto(b'x', ('127.0.0.1', {udp_port}))))\n"
        "escaped.append(attempt('unix', lambda: socket.socket(socket.AF_UNIX).connect({abstract!r})))\n"), ("passed",)),
    "kill a process of the user by pid": ("signals", _probe(
        "escaped = [attempt('kill', lambda: os.kill({victim_pid}, signal.SIGKILL))]\n"), ("passed",)),
    "kill(-1, SIGKILL) from a child": ("signals",
        "import os, signal, time\nif os.fork() == 0:\n    os.kill(-1, signal.SIGKILL)\n    os._exit(0)\n"
        "time.sleep(1)\n" + WRONG, NOT_PASSED),
    "see the user's processes": ("signals", _probe(
        "escaped = ['sees pid {victim_pid}' if os.path.exists('/proc/{victim_pid}') else None]\n"), ("passed",)),
    "background process is left running": ("processes",
        "import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\n" + RIGHT, ("failed",)),
    "detached grandchild in its own session": ("processes",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execvp('sleep', ['sleep', '{marker}'])\n    os._exit(0)\n" + RIGHT, ("failed",)),
    "fork bomb": ("processes", "import os\ndef double(x):\n    while True:\n        try:\n            os.fork()\n"
                  "        except OSError:\n            pass\n", ("timed_out",)),
    "replace builtins.enumerate, len, print": ("forgery",
        "import builtins\nbuiltins.enumerate = lambda it, start=0: iter([(0, 'pass')])\n"
        "builtins.len = lambda obj: 0\nbuiltins.print = lambda *a, **k: None\n" + WRONG, NOT_PASSED),
    "read a nonce from frames and gc, forge report lines": ("forgery",
        "import gc, os, sys, re\nfound = set()\nf = sys._getframe()\nwhile f is not None:\n"
        "    found.update(v for v in f.f_locals.values() if isinstance(v, str))\n    f = f.f_back\n"
        "found.update(o for o in gc.get_objects() if isinstance(o, str) and re.fullmatch('[0-9a-f]{{32}}', o))\n"
        "for fd in range(3, 64):\n    for n in found:\n        for line in ('S', 'P 1 ', 'T 0 1 ', 'T 1 1 ', 'T 2 1 ', 'D'):\n"
        "            try:\n                os.write(fd, f'{{n}} {{os.getpid()}} {{line}}\\n'.encode())\n"
        "                os.write(fd, (line + '\\n').encode())\n            except OSError:\n                pass\n"
        + WRONG, NOT_PASSED),
    "call the harness's own functions found through frames": ("forgery",
        "import sys, gc\nfor o in gc.get_objects():\n    if callable(o) and getattr(o, '__name__', '') in "
        "('report', 'reply', 'rpc'):\n        for args in (('T', '0', '1', ''), ('D',), (('ok', 2, {{}}),)):\n"
        "            try:\n                o(*args)\n            except BaseException:\n                pass\n" + WRONG,
        NOT_PASSED),
    "monkeypatch the harness modules, os.write and os._exit": ("forgery",
        "import os, sys\nfor m in list(sys.modules.values()):\n    for name in ('describe', 'report', 'recv', 'send', "
        "'verdict', '_finish'):\n        if hasattr(m, name):\n            try:\n"
        "                setattr(m, name, lambda *a, **k: None)\n            except Exception:\n                pass\n"
        "os.write = lambda fd, data: len(data)\nos._exit = lambda code: None\n" + WRONG, NOT_PASSED),
    "read the tests from memory and answer from them": ("forgery",
        "import gc, re\nanswers = {{}}\nfor o in gc.get_objects():\n    if isinstance(o, str) and '_out ==' in o:\n"
        "        for a, b in re.findall(r'double\\((-?\\d+)\\).*?_out == (-?\\d+)', o, re.S):\n"
        "            answers[int(a)] = int(b)\ndef double(x):\n    return answers.get(x, x)\n", NOT_PASSED),
    "always-equal object with a fake type()": ("forgery",
        "import builtins\nclass Eq(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "    def __bool__(self):\n        return True\nbuiltins.type = lambda obj: int\n"
        "def double(x):\n    return Eq(0)\n", NOT_PASSED),
    "sys.exit(0) inside the function": ("forgery", "import sys\ndef double(x):\n    sys.exit(0)\n", NOT_PASSED),
}


@dataclass
class Row:
    """One scenario: expected and actual status, and what was seen outside."""

    name: str
    category: str
    ok: bool
    status: str
    expected: tuple[str, ...]
    detail: str


@dataclass
class SelfTestReport:
    """All rows and the protections they ran under; ``str()`` is a readable table."""

    protections: dict
    rows: list[Row]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def __str__(self) -> str:
        lines = [self.protections.get("summary", ""), f"workers' interpreter: {self.protections.get('interpreter')}", ""]
        lines += [f"{'ok' if r.ok else 'FAIL':4} {r.category:13} {r.name:55} {r.status:9} {r.detail}"[:220]
                  for r in self.rows]
        lines.append(f"\n{sum(r.ok for r in self.rows)}/{len(self.rows)} scenarios as expected")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"protections": self.protections, "ok": self.ok, "rows": [dataclasses.asdict(r) for r in self.rows]}


class Outside:
    """What a program must not reach, held by the self-test while the scenarios run."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prmlab-selftest-"))
        self.dir.chmod(0o777)  # world-writable: only the sandbox can stop a write here
        self.victim_file = self.dir / "victim.txt"
        self.victim_file.write_text("untouched")
        self.victim_file.chmod(0o666)
        home = Path(os.path.expanduser("~"))
        self.write_targets = [str(self.dir / "new.txt"), str(Path(__file__).resolve().parent / "escape-probe.txt")]
        self.write_targets += [str(home / "prmlab-escape-probe.txt")] if os.access(home, os.W_OK) else []
        self.shared = [f"/dev/shm/prmlab-escape-probe-{secrets.token_hex(4)}"] if os.access("/dev/shm", os.W_OK) else []
        """Shared places a program may see privately (then its write succeeds but must not show up here)."""
        self.tcp = self.udp = self.unix = None
        self.renew_network()
        self.victim = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        self.marker = f"61.{secrets.randbelow(10 ** 6):06d}"

    def renew_network(self) -> None:
        """Fresh listeners for each scenario: on a loaded machine a connection or datagram can arrive after the
        scenario's check (loopback traffic is delivered in a softirq that may run later), and it must never count
        against the next scenario; one that arrives for a closed listener is refused and seen by nobody."""
        for sock in (self.tcp, self.udp, self.unix):
            if sock is not None:
                sock.close()
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.abstract = "\0prmlab-selftest-" + secrets.token_hex(6)
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.abstract)
        self.unix.listen()
        self.unix.setblocking(False)

    def fields(self) -> dict:
        return {"write_targets": self.write_targets, "shared": self.shared, "victim_file": str(self.victim_file),
                "outside_dir": str(self.dir), "tcp_port": self.tcp.getsockname()[1],
                "udp_port": self.udp.getsockname()[1], "abstract": self.abstract, "victim_pid": self.victim.pid,
                "marker": self.marker}

    def changes(self, settle_s: float = 0.0) -> list[str]:
        """Everything a program changed outside (empty when contained); first waits up to ``settle_s`` for a
        connection or datagram to arrive (see :meth:`renew_network`)."""
        if settle_s:
            select.select([self.tcp, self.udp, self.unix], [], [], settle_s)
        seen = []
        entries = sorted(p.name for p in self.dir.iterdir())
        if entries != ["victim.txt"] or self.victim_file.read_text() != "untouched":
            seen.append(f"outside dir now holds {entries}")
            for p in self.dir.iterdir():  # restore, so that the next scenario starts clean
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            self.victim_file.write_text("untouched")
            self.victim_file.chmod(0o666)
        for t in self.write_targets[1:] + self.shared:
            if os.path.exists(t):
                seen.append(f"{t} exists")
                os.unlink(t)
        for name, sock in (("tcp", self.tcp), ("unix", self.unix)):
            try:
                sock.accept()[0].close()
                seen.append(f"a {name} connection arrived")
            except (BlockingIOError, OSError):
                pass
        try:
            self.udp.recv(16)
            seen.append("a UDP datagram arrived")
        except (BlockingIOError, OSError):
            pass
        if self.victim.poll() is not None:
            seen.append("the user's process was killed")
            self.victim = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        survivors = _processes_with(self.marker)
        seen += [f"process {pid} survived" for pid in survivors]
        return seen

    def close(self) -> None:
        self.victim.kill()
        self.victim.wait()
        for s in (self.tcp, self.udp, self.unix):
            s.close()
        for t in self.write_targets[1:] + self.shared:
            if os.path.exists(t):
                os.unlink(t)
        shutil.rmtree(self.dir, ignore_errors=True)


def _processes_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return found


def self_test(names: list[str] | None = None, skip: tuple[str, ...] = ()) -> SelfTestReport:
    """Run the scenarios (all, or ``names``, less ``skip``) and check each from outside; see the module docstring.
    Without any isolation, skip ``"kill(-1, SIGKILL) from a child"``: it kills every process of the user."""
    outside = Outside()
    rows = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sb = Sandbox(CFG)
        with sb:
            prov = sb.provenance()
            for name, (category, program, expected) in SCENARIOS.items():
                if (names is not None and name not in names) or name in skip:
                    continue
                outside.renew_network()
                r = sb.run(program.format(**outside.fields()), TASK)
                changes = outside.changes(NETWORK_SETTLE_S if category == "network" else 0.0)
                after = sb.run(RIGHT, TASK)  # the sandbox is still usable
                ok = r.status in expected and not changes and after.passed
                detail = "; ".join(changes + ([] if after.passed else ["the next correct program did not pass"]))
                rows.append(Row(name, category, ok, r.status, expected, detail or (r.message or "")[:120]))
    finally:
        outside.close()
    return SelfTestReport(protections=prov, rows=rows)


def main() -> None:
    """``python -m prmlab.sandbox.selftest [--json] [--skip NAME]...``; exit status 1 when a scenario failed."""
    skip = tuple(sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--skip")
    report = self_test(skip=skip)
    print(json.dumps(report.as_dict()) if "--json" in sys.argv else report)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
