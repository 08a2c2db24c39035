"""The notebooks: they only narrate and call (no def/class), are committed stripped, run headless at their DEFAULT
parameters with no error and nothing on stderr, and find the repository's run directory from anywhere."""

import ast
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STRIP_KEYS = "metadata.language_info"  # what scripts/bootstrap.sh configures the nbstripout filter to strip as well
BUDGET_S = 180  # each notebook's target on 2 idle cores (issue 18); measured times are printed, not asserted


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert [p.stem for p in NOTEBOOKS][:6] == ["00_tour", "01_labelling", "02_prm", "03_rl", "04_evaluation",
                                               "05_real_models"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_no_definitions_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name"), "papermill needs metadata.kernelspec"
    assert "widgets" not in nb.metadata, "no saved widget state (stale after a kernel restart)"
    cells = code_cells(path)
    assert "parameters" in cells[0].metadata.get("tags", []), "first code cell must be the parameters cell"
    assert "PROFILE" in cells[0].source and "RUN_DIR" in cells[0].source
    import_cell = cells[1].source
    assert "enable_short_errors()" in import_cell and "text_progress()" in import_cell, \
        "the import cell enables one-sentence prmlab errors and text progress"
    for cell in cells:
        assert not cell.get("outputs") and cell.get("execution_count") is None, "commit notebooks stripped"
        src = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: logic belongs in prmlab/, not in notebook cells"


def test_committed_notebooks_are_what_the_git_filter_produces():
    """Committed notebooks equal nbstripout's output, so a notebook that was run (outputs, counts, language_info
    written by JupyterLab) shows as unmodified in git once scripts/bootstrap.sh installed the filter."""
    nbstripout = Path(sys.executable).parent / "nbstripout"
    if not nbstripout.exists():
        pytest.skip("nbstripout is not installed (the notebooks extra)")
    out = subprocess.run([str(nbstripout), "--verify", "--extra-keys", STRIP_KEYS, *map(str, NOTEBOOKS)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    attributes = (ROOT / ".gitattributes").read_text()
    assert "*.ipynb filter=nbstripout" in attributes
    assert STRIP_KEYS in (ROOT / "scripts" / "bootstrap.sh").read_text()


def test_find_run_dir_walks_up_to_the_repository(tmp_path):
    from prmlab.notebook import find_run_dir, repo_root

    assert repo_root(ROOT / "notebooks") == ROOT
    assert find_run_dir("tiny", start=ROOT / "notebooks") == ROOT / "runs" / "tiny"
    assert find_run_dir("tiny", run_dir=tmp_path / "x") == tmp_path / "x"


def test_readme_opens_the_notebooks_with_an_installed_jupyterlab():
    import tomllib

    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/jupyter lab notebooks/" in readme
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["notebooks"]
    assert any(d.startswith("jupyterlab==") for d in extras) and any(d.startswith("ipywidgets==") for d in extras)


# 05 (real models) computes the cpu-real pipeline at its defaults, about an hour: tests/test_notebook_05.py runs it
# at a smoke budget instead
AT_DEFAULTS = [p for p in NOTEBOOKS if p.stem != "05_real_models"]


@pytest.mark.slow
@pytest.mark.parametrize("path", AT_DEFAULTS, ids=lambda p: p.stem)
def test_notebook_executes_at_its_defaults_without_errors_or_warnings(path, notebook_runs):
    import papermill

    out_dir = ROOT / "runs" / "notebooks"  # executed copies, for reading after a run
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Only where it writes changes; every knob stays at the notebook's default.
    papermill.execute_notebook(str(path), str(out_dir / path.name), parameters={"RUN_DIR": str(notebook_runs)},
                               cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    wall = time.perf_counter() - start
    print(f"{path.stem}: {wall:.0f} s (target {BUDGET_S} s on 2 idle cores)")
    executed = nbformat.read(out_dir / path.name, as_version=4)
    for i, cell in enumerate(executed.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{path.name} cell {i}: {output.get('ename')}"
            if output.output_type == "stream" and output.name == "stderr":
                pytest.fail(f"{path.name} cell {i} wrote to stderr (a warning?): {output.text[:500]}")
