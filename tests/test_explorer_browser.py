"""The explorer in a real browser: JupyterLab on 127.0.0.1, a notebook that builds the explorer on a small run
directory, driven by Playwright with Debian's Chromium (no browser download).

Run all cells -> the explorer's widgets render (three dropdowns and a line view) -> choose another task in the task
dropdown -> the view shows that task's programs. Screenshots go to the test's tmp dir and a copy of the last one to
``runs/explorer-browser.png``. Skips, saying why, without Chromium, Playwright or JupyterLab
(``.ci/run`` installs them when it can: ``apt-get install chromium``, ``pip install -e ".[browser]"``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jupyterlab_browser as jl
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def notebook(run_dir: Path) -> dict:
    cells = ["import torch\ntorch.set_num_threads(1)",
             f"from prmlab.explorer import explorer\nRUN_DIR = {str(run_dir)!r}",
             "explorer(RUN_DIR)"]
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                       "source": src} for i, src in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_explorer_renders_and_follows_the_task_dropdown_in_chromium(tmp_path):
    missing = jl.requirements_missing()
    if missing:
        pytest.skip(f"browser test skipped: {missing}")
    import torch

    from prmlab.explorer import write_demo_run

    torch.set_num_threads(1)
    run_dir = write_demo_run(tmp_path / "run", n_tasks=2, n_samples=3)
    (tmp_path / "explorer.ipynb").write_text(json.dumps(notebook(run_dir)), encoding="utf-8")
    shots = []
    with jl.jupyterlab(tmp_path, tmp_path / "jupyter") as url, jl.chromium_page(tmp_path / "chromium-profile") as page:
        try:
            jl.open_notebook(page, url, "explorer.ipynb")
            jl.run_all_cells(page)

            # the widgets rendered: three dropdowns and a line view with scores
            view = page.locator(".prmlab-explorer .prmlab-view .prmlab-explorer-view")
            view.wait_for()
            assert page.locator(".prmlab-explorer select").count() == 3
            task_select = page.locator(".prmlab-task select")
            options = task_select.locator("option").all_text_contents()
            assert len(options) == 4, options  # 2 labelled train tasks + 2 eval tasks of the base model
            first_task = options[0].split()[0]
            assert first_task in view.inner_text()
            assert page.locator(".prmlab-view table.prmlab-lines").count() == 3
            assert page.locator(".prmlab-view .prmlab-outcome").count() == 3
            shots.append(tmp_path / "explorer-1-rendered.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            # change a control: the last task (a held-out one) -> the view shows it
            last_task = options[-1].split()[0]
            task_select.select_option(index=len(options) - 1)
            page.wait_for_function(
                "t => { const v = document.querySelector('.prmlab-explorer .prmlab-explorer-summary');"
                " return v && v.textContent.includes(t); }", arg=last_task)
            assert first_task not in view.inner_text() and "eval" in view.inner_text()
            shots.append(tmp_path / "explorer-2-task-changed.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            # no error, warning, "Traceback" or "Error displaying widget" in any output area
            assert jl.page_problems(page) == []
        except Exception:
            shots.append(tmp_path / "explorer-failure.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
            (ROOT / "runs").mkdir(exist_ok=True)
            shutil.copyfile(shots[-1], ROOT / "runs" / "explorer-browser-failure.png")
            raise
    assert all(p.stat().st_size > 10_000 for p in shots)
    (ROOT / "runs").mkdir(exist_ok=True)
    shutil.copyfile(shots[-1], ROOT / "runs" / "explorer-browser.png")
