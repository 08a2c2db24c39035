"""The shape of the package: imports only go down the layers, the README's file map is complete, and the repository
refers to no path outside itself."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "prmlab"

# The layering, bottom to top. A module may import modules of its own layer or of a lower one, never of a higher
# one (the "callers' layers"), and the import graph has no cycle at all.
#   0 foundation records: configs, records, line mapping, run directories, errors, the hub check
#   1 foundation services: task sources, models and adapters, the sandbox, pictures
#   2 the one sampler
#   3..6 the stages, in pipeline order: each may use the earlier ones through their public functions
#   7 the toy-coder's own training and evaluation (uses the sampler, the sandbox and the evaluation stage)
#   8 entry points: the run report, the command line, notebook helpers, test helpers
LAYERS: list[tuple[str, ...]] = [
    ("prmlab", "prmlab.config", "prmlab.records", "prmlab.lines", "prmlab.runs", "prmlab.errors", "prmlab.offline"),
    ("prmlab.tasks", "prmlab.models", "prmlab.memory", "prmlab.sandbox", "prmlab.plots"),
    ("prmlab.sampling",),
    ("prmlab.labels",),
    ("prmlab.prm",),
    ("prmlab.rl",),
    ("prmlab.evaluation",),
    ("prmlab.toycoder",),
    ("prmlab.report", "prmlab.cli", "prmlab.testing", "prmlab.explorer", "prmlab.notebook"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(name: str) -> int:
    """The layer of a module: that of the longest layer entry it equals or lies under."""
    best, depth = None, -1
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if (name == e or name.startswith(e + ".")) and e.count(".") > depth:
                best, depth = i, e.count(".")
    if best is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layout.py")
    return best


def imports_of(path: Path, known: set[str]) -> set[str]:
    """prmlab modules imported anywhere in a file (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n.startswith("prmlab"):
                while n not in known and "." in n:
                    n = n.rsplit(".", 1)[0]
                if n in known:
                    found.add(n)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} - {"prmlab"} for m, p in mods.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_only_go_down_the_layers():
    upward = [(a, b) for a, targets in import_graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "upward imports (module -> the layer above it imports): " + ", ".join(
        f"{a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})" for a, b in upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_readme_file_map_lists_every_module_once():
    """README.md's Layout block names every module of prmlab/ (``__init__`` files aside), each on its own line, and
    nothing that does not exist."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\s+(prmlab/\S+\.py)\s", block, flags=re.M)
    actual = sorted(str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if p.name != "__init__.py")
    assert sorted(set(listed)) == actual, (f"missing from README: {sorted(set(actual) - set(listed))}; "
                                           f"listed but absent: {sorted(set(listed) - set(actual))}")
    assert len(listed) == len(set(listed)), "a module is listed twice"


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out.splitlines() if (ROOT / f).is_file()]


def test_no_file_refers_to_a_path_outside_the_repository():
    """A user's clone has only the repository: no ``../shared``-style notes, no absolute paths of a dev machine."""
    pattern = re.compile(r"\.\./shared|/work/(main|shared)")
    bad = []
    for f in tracked_files():
        if f.suffix in {".safetensors", ".png", ".gz", ".bin"} or f.name == Path(__file__).name:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        bad += [f"{f.relative_to(ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not bad, f"references outside the repository: {bad}"
