"""Every notebook executes headless on the tiny preset, and notebooks only narrate and call (no def/class)."""

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Small knobs so each notebook runs in about a minute in CI; each notebook's parameters cell documents them.
# Notebooks 01 and 02 share one run directory (02 reads 01's labels), as they do by default.
QUICK = {
    "00_tour": {"N_TASKS": 8, "RUN_DIR": "tour"},
    "01_labelling": {"N_TASKS": 24, "MC_RESPONSES": 10, "RUN_DIR": "labels"},
    "02_prm": {"N_TASKS": 24, "DRIFT_TASKS": 6, "EPOCHS": 3, "SELECTIONS": ["full", "revised-only"],
               "RUN_DIR": "labels"},
}


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no numbered notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_no_definitions_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name"), "papermill needs metadata.kernelspec"
    cells = code_cells(path)
    assert "parameters" in cells[0].metadata.get("tags", []), "first code cell must be the parameters cell"
    assert "PROFILE" in cells[0].source
    for cell in cells:
        assert not cell.get("outputs") and cell.get("execution_count") is None, "commit notebooks stripped"
        src = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: logic belongs in prmlab/, not in notebook cells"


@pytest.fixture(scope="module")
def notebook_runs(tmp_path_factory):
    """A fresh run directory per test session, so the notebooks build everything they need themselves."""
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_headless_on_tiny(path, notebook_runs):
    import papermill

    out_dir = ROOT / "runs" / "notebooks"  # executed copies, for reading after a run
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"PROFILE": "tiny", **QUICK.get(path.stem, {})}
    params["RUN_DIR"] = str(notebook_runs / params.get("RUN_DIR", path.stem))
    papermill.execute_notebook(str(path), str(out_dir / path.name), parameters=params, cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False)
